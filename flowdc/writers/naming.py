"""Pure naming rules: sample keys, safe label folders and file extensions.

Keys must be stable (the same manifest row always gets the same key) and a label or key taken
from a manifest must never name a path outside the output.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

KEY_WIDTH = 8
UNLABELED = "unlabeled"
MAX_LABEL_CHARS = 120
MAX_LABEL_BYTES = 200  # a file name holds at most 255 bytes; room is left for the hash suffix
_UNSAFE = re.compile(r"[^\w\-. ,()+&']+", re.UNICODE)
_EXT_BY_TYPE = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "image/svg+xml": ".svg",
    "image/avif": ".avif",
    "image/heic": ".heic",
}
_KNOWN_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".svg", ".avif", ".heic"}


def sequential_key(row: int) -> str:
    """Manifest row number counted from 1, zero-padded: row 0 -> '00000001' (the seed's layout)."""
    return f"{row + 1:0{KEY_WIDTH}d}"


def url_key(url: str) -> str:
    """80 bits of the URL's SHA-256: no collision in practice, same URL -> same key in every run."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def make_key(naming_mode: str, row: int, url: str) -> str:
    return url_key(url) if naming_mode == "url_based" else sequential_key(row)


def safe_label(label: object) -> str:
    """A label as one safe path component: no separators, no dot-only names, bounded length."""
    if label is None:
        return UNLABELED
    text = _UNSAFE.sub("_", str(label)).strip(" .")
    if not text or set(text) <= {"_", "."}:
        return UNLABELED if not str(label).strip() else "_" + hashlib.sha1(str(label).encode()).hexdigest()[:10]
    if len(text) > MAX_LABEL_CHARS or len(text.encode()) > MAX_LABEL_BYTES:
        cut = text[:MAX_LABEL_CHARS]
        while len(cut.encode()) > MAX_LABEL_BYTES:  # multi-byte characters: bound the bytes too
            cut = cut[:-1]
        text = cut + "_" + hashlib.sha1(str(label).encode()).hexdigest()[:10]
    return text


def extension_for(content_type: str | None, url: str) -> str:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in _EXT_BY_TYPE:
        return _EXT_BY_TYPE[ctype]
    try:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    except ValueError:
        suffix = ""
    return ".jpg" if suffix == ".jpeg" else suffix if suffix in _KNOWN_EXTS else ".bin"


def sample_path(key: str, label: object | None, ext: str, *, labelled: bool = True) -> str:
    """Relative path of an imagefolder sample; labelled=False puts it at the root."""
    name = f"{key}{ext}"
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"unsafe key {key!r}")
    return f"{safe_label(label)}/{name}" if labelled else name
