"""Checks a finished output against what the fake hosts served: nothing corrupt, nothing missing.

webdataset: every image member must be byte for byte the image its URL's host serves, and its
.json's sha256 must match it. imagefolder: every file the ledger holds as ok must be, and the
archive beside the output (when the run wrote one) must hold each of them, byte for byte. The
hosts' images are deterministic (generated PNGs of the path and size, or the preset bodies), so
no copy of what was served needs keeping.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from img2dataset_contender import Img2datasetSettings, expected_size, iter_samples

from flowdc.ledger import Ledger
from flowdc.storage import Destination
from flowdc.testing.fakehosts import MAX_BODY, FakeHostFarm, make_png

Expected = Callable[[str], bytes]  # URL -> the body its host serves


@dataclass
class Verified:
    images: int = 0
    corrupt: int = 0
    note: str = ""


def expected_bodies(farm: FakeHostFarm) -> Expected:
    sizes = {h.netloc: h.spec.image_bytes for h in farm.hosts}
    preset = farm.hosts[0].images.preset if farm.hosts else {}

    def expected(url: str) -> bytes:
        parts = urlsplit(url)
        if parts.path in preset:
            return preset[parts.path]
        size = int(parse_qs(parts.query).get("size", [sizes[parts.netloc]])[0])
        return make_png(parts.path, min(MAX_BODY, max(0, size)))

    return expected


def verify_webdataset(out: Path, expected: Expected) -> Verified:
    result = Verified()
    for shard in sorted(out.glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for info in tar:
                data = tar.extractfile(info)
                if data is not None:
                    key, _, ext = info.name.rpartition(".")
                    members.setdefault(key, {})[ext] = data.read()
        for parts in members.values():
            meta = json.loads(parts.pop("json"))
            (body,) = parts.values()
            result.images += 1
            intact = body == expected(meta["url"])
            result.corrupt += not intact or hashlib.sha256(body).hexdigest() != meta["sha256"]
    return result


def verify_resized(out: Path, expected: Expected, rule: Img2datasetSettings) -> Verified:
    """A resized webdataset: each image decodes whole, at the size `rule` gives the image served
    for its URL, the .json says that size, and its sha256 is the served body's (flowdc's rule)."""
    from PIL import Image

    result = Verified()
    for sample in iter_samples(out, "webdataset"):
        result.images += 1
        served = expected(sample.meta["url"])
        try:
            with Image.open(io.BytesIO(served)) as src:
                want = expected_size(rule, *src.size)
            with Image.open(io.BytesIO(sample.body)) as img:
                img.load()
                size = img.size
        except Exception:  # an undecodable image is corrupt, whatever Pillow raised
            result.corrupt += 1
            continue
        off = any(abs(a - b) > 1 for a, b in zip(size, want, strict=True))
        said = (sample.meta.get("width"), sample.meta.get("height")) != size
        result.corrupt += off or said or hashlib.sha256(served).hexdigest() != sample.meta.get("sha256")
    return result


def verify_imagefolder(out: Path, expected: Expected) -> Verified:
    result = Verified()
    table = Ledger(Destination(str(out))).latest(["url", "status", "path"])
    stored = {r["path"]: r["url"] for r in table.to_pylist() if r["status"] == "ok"}
    for rel, url in stored.items():
        path = out / rel
        result.images += path.is_file()
        result.corrupt += path.is_file() and path.read_bytes() != expected(url)
    record = out / "_flowdc" / "archive.json"  # overview.json is written before the archive
    archive = out.parent / json.loads(record.read_text())["name"] if record.is_file() else None
    if archive:
        packed = 0
        with tarfile.open(archive) as tar:
            for info in tar:
                rel = info.name.split("/", 1)[1] if "/" in info.name else info.name
                if rel in stored:
                    data = tar.extractfile(info)
                    packed += data is not None and data.read() == expected(stored[rel])
        result.corrupt += len(stored) - packed  # missing from the archive, or different there
        result.note = f"archive {Path(archive).name}: {packed} of {len(stored)} images intact"
    return result
