"""The JPEG/PNG header walk agrees with Pillow's header open, and never accepts what Pillow refuses."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from flowdc.imagecheck import NotDecodable, inspect_image
from flowdc.imageheader import header_size


def pillow_header(body: bytes) -> tuple[int, int, str] | None:
    try:
        with Image.open(io.BytesIO(body)) as img:
            return img.size[0], img.size[1], img.format or ""
    except Exception:
        return None


def encode(fmt: str, mode: str, size: tuple[int, int], **params: object) -> bytes:
    rng = random.Random(f"{fmt}{mode}{size}")
    img = Image.frombytes("L", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1]))).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


SAMPLES = {
    "jpeg_rgb": encode("JPEG", "RGB", (97, 61)),
    "jpeg_gray": encode("JPEG", "L", (13, 300)),
    "jpeg_cmyk": encode("JPEG", "CMYK", (40, 40)),
    "jpeg_progressive_exif": encode("JPEG", "RGB", (256, 192), progressive=True, exif=b"Exif\x00\x00" + b"\x00" * 32),
    "jpeg_icc": encode("JPEG", "RGB", (50, 20), icc_profile=b"\x00" * 300),
    "png_rgb": encode("PNG", "RGB", (97, 61)),
    "png_rgba": encode("PNG", "RGBA", (1, 1)),
    "png_palette": encode("PNG", "P", (30, 31)),
    "png_16bit": encode("PNG", "I;16", (8, 9)),
    "png_1bit": encode("PNG", "1", (33, 7)),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_same_answer_as_pillow(name: str) -> None:
    body = SAMPLES[name]
    assert header_size(body) == pillow_header(body) is not None


def test_multi_picture_jpeg_goes_to_pillow() -> None:
    first = Image.new("RGB", (20, 10), "red")
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (20, 10), "blue")])
    assert header_size(buf.getvalue()) is None
    assert inspect_image(buf.getvalue()).format == "MPO"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_damaged_headers_are_never_accepted_against_pillow(name: str) -> None:
    """Truncations and byte flips across the header: whatever the walk accepts, Pillow accepts
    with the same answer (the rest goes to Pillow, which decides)."""
    body = SAMPLES[name]
    rng = random.Random(name)
    damaged = [body[:cut] for cut in range(0, min(len(body), 700), 7)]
    for _ in range(300):
        at = rng.randrange(min(len(body), 700))
        damaged.append(body[:at] + bytes([rng.randrange(256)]) + body[at + 1 :])
    accepted = 0
    for candidate in damaged:
        fast = header_size(candidate)
        if fast is not None:
            accepted += 1
            assert fast == pillow_header(candidate)
    assert accepted > 0  # flips inside pixel data or comments keep the header valid


def test_not_decodable_still_named_by_pillow() -> None:
    with pytest.raises(NotDecodable):
        inspect_image(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    with pytest.raises(NotDecodable):
        inspect_image(SAMPLES["png_rgb"][:30])


def test_a_decompression_bomb_is_refused_as_pillow_refuses_it() -> None:
    """The header walk read a 20000x20000 PNG's size and stored it; every loader that opens it with
    Pillow (torchvision, datasets) then raised DecompressionBombError."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 20000  # 400 M pixels; the rows are never needed: the header says it all
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    assert header_size(bomb) == (side, side, "PNG")
    assert pillow_header(bomb) is None  # Pillow's own open refuses it
    with pytest.raises(NotDecodable, match="decompression bomb"):
        inspect_image(bomb, "header")
    small = encode("PNG", "L", (30, 20))
    assert inspect_image(small, "header") is not None
