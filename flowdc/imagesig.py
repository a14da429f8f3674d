"""Does a body look like an image? Its first bytes against the signatures of known image formats.

A host that answers 200 with `Content-Type: image/jpeg` and an HTML page (a login wall, a soft
block, an error page) must not leave a .jpg in the dataset that no decoder opens. This is the cheap
check, a few byte comparisons per sample; decoding the image is a different, costlier matter.
"""

from __future__ import annotations

# One vocabulary for why a body is not kept as an image (ledger `reason`s; docs/outputs.md lists them).
NOT_AN_IMAGE = "not_an_image"  # served as image/* but its first bytes are no known image signature
NOT_DECODABLE = "not_decodable"  # looks like an image but Pillow cannot open (or, --verify full, decode) it
DUPLICATE = "duplicate"  # --dedupe sha256: the same bytes are already stored under the key in `duplicate_of`

SNIFF_BYTES = 1024  # enough for every prefix below and for an SVG's root element after an XML prolog
# ISO BMFF major/compatible brands of AVIF, HEIF/HEIC and JPEG 2000 (part 1 and 2) files.
_FTYP_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1",
                          b"msf1", b"mif2", b"jp2 ", b"jpx "})
# The raster formats a file extension names, by their first bytes (flowdc.writers.naming).
_RASTER_EXTENSIONS = (
    (b"\xff\xd8\xff", ".jpg"),  # JPEG
    (b"\x89PNG\r\n\x1a\n", ".png"),  # PNG (APNG too)
    (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),  # TIFF (and raw formats built on it)
    (b"\x00\x00\x01\x00", ".ico"),  # ICO
)
_PREFIXES = (
    *(prefix for prefix, _ in _RASTER_EXTENSIONS),
    b"II+\x00", b"MM\x00+",  # BigTIFF
    b"\x00\x00\x02\x00",  # CUR
    b"\xff\x0a",  # JPEG XL codestream
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL container
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000 container
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
    b"8BPS",  # Photoshop
    b"qoif",  # QOI
)


def image_format_ok(head: bytes, content_type: str | None = None) -> bool:
    """True when `head` (a body's first SNIFF_BYTES) starts like an image of a known format.

    SVG is text, so it counts only when the server says image/svg+xml and an <svg> element opens
    near the start.
    """
    if head.startswith(_PREFIXES) or _is_webp(head):
        return True
    if _netpbm(head):
        return True
    if head[4:8] == b"ftyp" and _has_image_brand(head):
        return True
    return "svg" in (content_type or "").lower() and b"<svg" in head[:SNIFF_BYTES].lower()


def raster_extension(head: bytes) -> str | None:
    """The file extension of the raster format `head` starts with (JPEG, PNG, GIF, BMP, TIFF,
    ICO, WebP), or None."""
    for prefix, ext in _RASTER_EXTENSIONS:
        if head.startswith(prefix):
            return ext
    return ".webp" if _is_webp(head) else None


def _is_webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _has_image_brand(head: bytes) -> bool:
    """The ftyp box: size, 'ftyp', major brand, minor version, then compatible brands."""
    size = int.from_bytes(head[:4], "big")
    end = min(max(size, 16), len(head))
    brands = [head[8:12]] + [head[i:i + 4] for i in range(16, end - 3, 4)]
    return any(b in _FTYP_BRANDS for b in brands)


def _netpbm(head: bytes) -> bool:
    """PBM/PGM/PPM ("P1".."P6", whitespace, then a width or a comment) and PAM ("P7", header lines)."""
    if len(head) < 4 or head[0:1] != b"P" or head[1:2] not in b"1234567" or head[2:3] not in b" \t\r\n":
        return False
    rest = head[3:].lstrip(b" \t\r\n")
    if head[1:2] == b"7":
        return rest.startswith((b"WIDTH", b"HEIGHT", b"DEPTH", b"MAXVAL", b"TUPLTYPE", b"ENDHDR", b"#"))
    return rest[:1] == b"#" or rest[:1].isdigit()
