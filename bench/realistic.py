"""Realistic image bodies for the bench: noise JPEGs (optionally PNG and WebP) of photo-like sizes.

Noise does not compress, so a 96x96 to 256x192 JPEG at quality 90 weighs about 9-45 KB, the size
of a thumbnail dataset's images. They are encoded once with Pillow and cached (a parquet file under
~/.cache/flowdc-bench, or $FLOWDC_BENCH_CACHE), and the fake hosts serve the bytes as they are:
encoding while serving would make the farm, not the contender, the bottleneck.

Style `photo` (the resize bench): 160x120 to 640x480, so the smaller side falls on both sides of
256, with smooth colour fields (noise drawn at 1/16 of the size and enlarged) and a little grain,
at quality 85: 4-60 KB, about 23 KB mean, as photos of those sizes weigh.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SIZES = ((96, 256), (96, 192))  # width range, height range (inclusive)
QUALITY = 90


@dataclass(frozen=True)
class Style:
    sizes: tuple[tuple[int, int], tuple[int, int]] = SIZES
    quality: int = QUALITY
    coarse: int = 1  # noise drawn at 1/coarse of the size, then enlarged: smooth fields compress as photos do
    grain: float = 0.0  # share of full-size grey noise blended over it


STYLES = {
    "noise": Style(),
    "photo": Style(sizes=((160, 640), (120, 480)), quality=85, coarse=16, grain=0.03),
}
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


def encode(index: int, fmt: str, seed: int, style: Style = STYLES["noise"]) -> bytes:
    from PIL import Image

    rng = random.Random(f"{seed}/{index}")
    width, height = rng.randint(*style.sizes[0]), rng.randint(*style.sizes[1])
    w, h = max(2, width // style.coarse), max(2, height // style.coarse)
    img = Image.frombytes("RGB", (w, h), rng.randbytes(3 * w * h))
    if (w, h) != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    if style.grain:
        grey = Image.frombytes("L", (width, height), rng.randbytes(width * height))
        img = Image.blend(img, Image.merge("RGB", (grey, grey, grey)), style.grain)
    buf = io.BytesIO()
    options = {"quality": style.quality} if fmt in ("jpeg", "webp") else {"compress_level": 1}
    img.save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def noise_images(count: int, mix: tuple[tuple[str, float], ...] = (("jpeg", 1.0),), seed: int = 0,
                 style: str = "noise") -> dict[str, bytes]:
    """path -> body for `count` images of a style in STYLES, from the cache when it holds them."""
    tag = "-".join(f"{f}{s:g}" for f, s in mix)
    name = f"realistic-v{CACHE_VERSION}-{tag}-{seed}-{count}" + ("" if style == "noise" else f"-{style}")
    cache = cache_dir() / f"{name}.parquet"
    if cache.is_file():
        table = pq.read_table(cache)
        return dict(zip(table["path"].to_pylist(), table["body"].to_pylist(), strict=True))
    paths, bodies = [], []
    for i in range(count):
        fmt = format_of(i, mix)
        paths.append(image_path(i, fmt))
        bodies.append(encode(i, fmt, seed, STYLES[style]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}")
    pq.write_table(pa.table({"path": paths, "body": pa.array(bodies, pa.binary())}), tmp)
    tmp.replace(cache)  # whole or absent: a killed bench never leaves half a cache
    return dict(zip(paths, bodies, strict=True))
