"""Resize and re-encode, img2dataset's vocabulary; runs in worker processes (CPU is the limit).

Modes, for `image_size` S:
  no                  the size as served
  keep_ratio          the smaller side becomes S, the ratio kept
  keep_ratio_largest  the larger side becomes S, the ratio kept
  center_crop         the smaller side becomes S, then the centre S x S is cut out
  border              the larger side becomes S, then black borders pad it to S x S
`only_if_bigger`: never enlarge (a smaller image keeps its size; center_crop and border still
make it square only when it was larger). `encode_format` jpg, png, webp, or keep (the source's
format). Off (mode no, format keep): the bytes are kept as served and never decoded here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("keep", "jpg", "png", "webp")
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}


@dataclass(frozen=True, slots=True)
class ResizeSettings:
    image_size: int = 256
    resize_mode: str = "no"
    only_if_bigger: bool = False
    encode_format: str = "keep"
    encode_quality: int = 95

    @property
    def active(self) -> bool:
        return self.resize_mode != "no" or self.encode_format != "keep"


@dataclass(frozen=True, slots=True)
class Resized:
    body: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    format: str
    as_served: bool = False  # nothing to change (keep, and not resized): the served body stays (`body` is empty)


# Modes of more than 8 bits a channel: RGB conversion clips them (a 16-bit grey of mean 32,000
# came out nearly white), so they are scaled to 8 bits first.
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_TRANSPOSED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _scale(w: int, h: int, side: int, by_larger: bool, only_if_bigger: bool) -> tuple[int, int]:
    ref = max(w, h) if by_larger else min(w, h)
    if only_if_bigger and ref <= side:
        return w, h
    factor = side / ref
    return max(1, round(w * factor)), max(1, round(h * factor))


def _eight_bits(img: Any) -> Any:
    """A grey image of more than 8 bits as 8-bit grey ("L"), its values scaled down."""
    import numpy as np
    from PIL import Image

    values = np.asarray(img)
    if values.dtype.kind == "f":
        eight = np.clip(values, 0, 255)
    else:
        values = np.clip(values, 0, None)  # mode I is signed
        top = int(values.max(initial=0))
        eight = values >> max(0, top.bit_length() - 8) if top > 255 else values
    out = Image.fromarray(np.asarray(eight, dtype=np.uint8), "L")
    out.info = dict(img.info)
    return out


def resize_body(body: bytes, s: ResizeSettings) -> Resized:
    """The re-encoded image; raises what Pillow raises for a body it cannot decode."""
    from PIL import Image, ImageOps

    mode, side = s.resize_mode, s.image_size
    with Image.open(io.BytesIO(body)) as src:
        src_format = src.format or "PNG"
        orientation = src.getexif().get(0x0112, 1)
        # Sizes as the image is shown: a photo taken upright is stored sideways with an EXIF
        # orientation, which loaders (and datasets) apply; it is applied here, and left out after.
        ow, oh = src.size[::-1] if orientation in _TRANSPOSED else src.size
        if mode in ("keep_ratio", "center_crop"):
            size = _scale(ow, oh, side, False, s.only_if_bigger)
        elif mode in ("keep_ratio_largest", "border"):
            size = _scale(ow, oh, side, True, s.only_if_bigger)
        else:
            size = (ow, oh)
        unchanged = size == (ow, oh) and orientation == 1 and mode in ("no", "keep_ratio", "keep_ratio_largest")
        if unchanged and s.encode_format == "keep":
            return Resized(b"", "", ow, oh, ow, oh, src_format, as_served=True)  # not sent back: the caller has it
        if size[0] < ow:
            # A JPEG shrunk to half or less is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (never
            # below `size`): most of the decoding work is skipped. Other formats ignore it.
            src.draft(src.mode, size[::-1] if orientation in _TRANSPOSED else size)
        img = _eight_bits(src) if src.mode in _WIDE_MODES else src
        img = ImageOps.exif_transpose(img) if orientation != 1 else img
        img = img.convert("RGBA" if (img.mode in ("RGBA", "LA", "P") and "transparency" in img.info)
                          or img.mode in ("RGBA", "LA") else "RGB")
    if size != img.size:
        # img2dataset's defaults: area averaging to shrink (Pillow's BOX), Lanczos to enlarge.
        shrink = size[0] < img.size[0]
        img = img.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
    w, h = img.size
    if mode == "center_crop" and (w > side or h > side):
        left, top = (w - min(w, side)) // 2, (h - min(h, side)) // 2
        img = img.crop((left, top, left + min(w, side), top + min(h, side)))
    elif mode == "border" and (w < side or h < side) and not (s.only_if_bigger and size == (ow, oh)):
        canvas = Image.new(img.mode, (side, side))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    fmt = src_format if s.encode_format == "keep" else _PIL_FORMAT[s.encode_format]
    if fmt not in _EXT:
        fmt = "PNG"  # a source format Pillow cannot write back: lossless
    if fmt == "JPEG" and img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    options = {"quality": s.encode_quality} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "PNG":
        options = {"compress_level": min(9, max(0, s.encode_quality))} if s.encode_quality <= 9 else {}
    img.save(buf, format=fmt, **options)
    return Resized(buf.getvalue(), _EXT[fmt], img.size[0], img.size[1], ow, oh, fmt)
