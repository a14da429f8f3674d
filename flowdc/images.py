"""Does a stored body decode as an image, and how large is it? Pillow, run in the writer threads.

`verify header` (the default) reads the image's size from its header: JPEG and PNG headers are
walked by flowdc.imageheader in a few microseconds, anything else (or anything odd) by Pillow,
which parses the first bytes only, tens of microseconds. `full` decodes every pixel (milliseconds for a large
JPEG; Pillow's decoders release the GIL while they work). `none` skips the check. A body that
fails is a per-row failure with the reason `not_decodable` (flowdc.imagesig holds the reasons).
"""

from __future__ import annotations

import io
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass

from flowdc.imageheader import header_size
from flowdc.imagesig import NOT_DECODABLE
from flowdc.resize import ResizeSettings, resize_body
from flowdc.writers.base import SampleRefused, StoredSample

VERIFY_MODES = ("header", "full", "none")


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


def check_sample(sample: StoredSample, verify: str) -> None:
    """Runs in a writer thread before the write: the record gets the image's size and format, or
    SampleRefused when the body does not decode."""
    if sample.refused is not None:  # the resizer could not decode it
        raise SampleRefused(NotDecodable.reason, sample.refused, sample.record)
    if sample.record.image_format:  # resized: measured already
        return
    try:
        info = inspect_image(sample.body, verify)
    except NotDecodable as exc:
        raise SampleRefused(NotDecodable.reason, str(exc), sample.record) from None
    if info is not None:
        rec = sample.record
        rec.width, rec.height, rec.image_format = info.width, info.height, info.format


def start_resize(sample: StoredSample, pool: Executor, settings: ResizeSettings) -> None:
    """On arrival: the worker processes start on the sample's image at once, so they keep busy
    while samples wait for company in the write queue and while a writer writes a batch."""
    sample.resizing = pool.submit(resize_body, sample.body, settings)


def resize_batch(batch: list[StoredSample], pool: Executor, settings: ResizeSettings) -> None:
    """Runs in a writer thread: the batch's images resized in the worker processes (started on
    arrival, else now); each sample gets the new body and sizes, or `refused` when its body does
    not decode. The ledger's sha256 stays the served body's."""
    futures = [s.resizing or pool.submit(resize_body, s.body, settings) for s in batch]
    for sample, future in zip(batch, futures, strict=True):
        sample.resizing = None
        try:
            out = future.result()
        except Exception as exc:  # what Pillow raised in the worker, or the worker died
            sample.refused = f"{type(exc).__name__}: {exc}"[:200]
            continue
        rec = sample.record
        sample.body, sample.ext, rec.bytes = out.body, out.ext, len(out.body)
        rec.width, rec.height, rec.image_format = out.width, out.height, out.format
        rec.original_width, rec.original_height = out.original_width, out.original_height
