"""A sample's decode check and resizing, in the writer threads (the check itself: flowdc.imagecheck).

A body that fails the check is a per-row failure with the reason `not_decodable` (flowdc.imagesig
holds the reasons).
"""

from __future__ import annotations

from concurrent.futures import Executor

from flowdc.imagecheck import NotDecodable, inspect_image
from flowdc.resize import ResizeSettings, resize_body
from flowdc.writers.base import SampleRefused, StoredSample


def check_sample(sample: StoredSample, verify: str) -> None:
    """Runs in a writer thread before the write: the record gets the image's size and format, or
    SampleRefused when the body does not decode."""
    if sample.refused is not None:  # the resizer could not decode it
        raise SampleRefused(NotDecodable.reason, sample.refused, sample.record)
    if sample.checked or sample.record.image_format:  # checked in the write process, or resized: measured already
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
        if not out.as_served:
            sample.body, sample.ext, rec.bytes = out.body, out.ext, len(out.body)
        rec.width, rec.height, rec.image_format = out.width, out.height, out.format
        rec.original_width, rec.original_height = out.original_width, out.original_height
