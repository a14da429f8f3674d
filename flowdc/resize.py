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


def _scale(w: int, h: int, side: int, by_larger: bool, only_if_bigger: bool) -> tuple[int, int]:
    ref = max(w, h) if by_larger else min(w, h)
    if only_if_bigger and ref <= side:
        return w, h
    factor = side / ref
    return max(1, round(w * factor)), max(1, round(h * factor))


def resize_body(body: bytes, s: ResizeSettings) -> Resized:
    """The re-encoded image; raises what Pillow raises for a body it cannot decode."""
    from PIL import Image

    mode, side = s.resize_mode, s.image_size
    with Image.open(io.BytesIO(body)) as src:
        src_format = src.format or "PNG"
        ow, oh = src.size
        if mode in ("keep_ratio", "center_crop"):
            size = _scale(ow, oh, side, False, s.only_if_bigger)
        elif mode in ("keep_ratio_largest", "border"):
            size = _scale(ow, oh, side, True, s.only_if_bigger)
        else:
            size = (ow, oh)
        if size[0] < ow:
            # A JPEG shrunk to half or less is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (never
            # below `size`): most of the decoding work is skipped. Other formats ignore it.
            src.draft(src.mode, size)
        img = src.convert("RGBA" if (src.mode in ("RGBA", "LA", "P") and "transparency" in src.info)
                          or src.mode in ("RGBA", "LA") else "RGB")
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
