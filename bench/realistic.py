"""Realistic image bodies for the bench: noise JPEGs (optionally PNG and WebP) of photo-like sizes.

Noise does not compress, so a 96x96 to 256x192 JPEG at quality 90 weighs about 9-45 KB, the size
of a thumbnail dataset's images. They are encoded once with Pillow and cached (a parquet file under
~/.cache/flowdc-bench, or $FLOWDC_BENCH_CACHE), and the fake hosts serve the bytes as they are:
encoding while serving would make the farm, not the contender, the bottleneck.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SIZES = ((96, 256), (96, 192))  # width range, height range (inclusive)
QUALITY = 90
CTYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
CACHE_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWDC_BENCH_CACHE") or Path.home() / ".cache" / "flowdc-bench")


def image_path(index: int, fmt: str) -> str:
    ext = "jpg" if fmt == "jpeg" else fmt
    return f"/img/{index:08d}.{ext}"


def format_of(index: int, mix: tuple[tuple[str, float], ...]) -> str:
    """The format of image `index` under a mix such as (("jpeg", 0.8), ("png", 0.1), ("webp", 0.1))."""
    point = random.Random(f"fmt{index}").random()
    for fmt, share in mix:
        point -= share
        if point < 0:
            return fmt
    return mix[-1][0]


def encode(index: int, fmt: str, seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(f"{seed}/{index}")
    width, height = rng.randint(*SIZES[0]), rng.randint(*SIZES[1])
    img = Image.frombytes("RGB", (width, height), rng.randbytes(3 * width * height))
    buf = io.BytesIO()
    options = {"quality": QUALITY} if fmt in ("jpeg", "webp") else {"compress_level": 1}
    img.save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def noise_images(count: int, mix: tuple[tuple[str, float], ...] = (("jpeg", 1.0),), seed: int = 0) -> dict[str, bytes]:
    """path -> body for `count` images, from the cache when it holds them."""
    tag = "-".join(f"{f}{s:g}" for f, s in mix)
    cache = cache_dir() / f"realistic-v{CACHE_VERSION}-{tag}-{seed}-{count}.parquet"
    if cache.is_file():
        table = pq.read_table(cache)
        return dict(zip(table["path"].to_pylist(), table["body"].to_pylist(), strict=True))
    paths, bodies = [], []
    for i in range(count):
        fmt = format_of(i, mix)
        paths.append(image_path(i, fmt))
        bodies.append(encode(i, fmt, seed))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}")
    pq.write_table(pa.table({"path": paths, "body": pa.array(bodies, pa.binary())}), tmp)
    tmp.replace(cache)  # whole or absent: a killed bench never leaves half a cache
    return dict(zip(paths, bodies, strict=True))
