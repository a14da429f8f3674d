"""The decode check of one body (`--verify`): its size and format, or why it is no image.

`header` (the default) reads the size from the header: JPEG and PNG headers are walked by
flowdc.imageheader in a few microseconds, anything else (or anything odd) by Pillow, which parses
the first bytes only, tens of microseconds. `full` decodes every pixel (milliseconds for a large
JPEG; Pillow's decoders release the GIL while they work). `none` skips the check. Kept apart from
flowdc.images (samples, resizing) so that the write process loads only this.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from flowdc.imageheader import header_size
from flowdc.imagesig import NOT_DECODABLE

VERIFY_MODES = ("header", "full", "none")
# Pillow's Image.open refuses an image of more pixels than this (twice its MAX_IMAGE_PIXELS):
# every loader that opens it with Pillow fails on it (DecompressionBombError).
BOMB_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    height: int
    format: str  # Pillow's name: JPEG, PNG, WEBP, GIF, ...


class NotDecodable(Exception):
    """The body is no image Pillow can read; str() says why, in one line."""

    reason = NOT_DECODABLE


def inspect_image(body: bytes, verify: str = "header") -> ImageInfo | None:
    """The image's size and format (None with verify 'none'); raises NotDecodable."""
    if verify == "none":
        return None
    if verify == "header":
        known = header_size(body)
        if known is not None:
            width, height, _ = known
            if width * height > BOMB_PIXELS:  # as Pillow refuses it, which this walk spares us calling
                raise NotDecodable(f"decompression bomb: {width}x{height} pixels, over Pillow's limit of {BOMB_PIXELS}")
            return ImageInfo(*known)
    from PIL import Image  # imported on first use: a run with --verify none never loads Pillow

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning and friends: the size is what we want
            with Image.open(io.BytesIO(body)) as img:
                width, height = img.size
                fmt = img.format or ""
                if verify == "full":
                    img.load()
    except Image.DecompressionBombError as exc:
        raise NotDecodable(f"decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, ValueError, struct.error)
        raise NotDecodable(f"{type(exc).__name__}: {exc}"[:200]) from None
    return ImageInfo(width, height, fmt)
