"""Checks a finished webdataset output against what the fake hosts served: nothing corrupt.

Every image member must be byte for byte the image its URL's host generates, and its .json's
sha256 must match it. The hosts' images are deterministic (flowdc.testing.fakehosts.make_png of the
path and size), so no copy of what was served needs keeping.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from flowdc.testing.fakehosts import MAX_BODY, FakeHostFarm, make_png


@dataclass
class Verified:
    images: int = 0
    corrupt: int = 0


def expected_body(url: str, image_bytes_by_netloc: dict[str, int]) -> bytes:
    parts = urlsplit(url)
    size = int(parse_qs(parts.query).get("size", [image_bytes_by_netloc[parts.netloc]])[0])
    return make_png(parts.path, min(MAX_BODY, max(0, size)))


def verify_webdataset(out: Path, farm: FakeHostFarm) -> Verified:
    sizes = {h.netloc: h.spec.image_bytes for h in farm.hosts}
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
            intact = body == expected_body(meta["url"], sizes)
            result.corrupt += not intact or hashlib.sha256(body).hexdigest() != meta["sha256"]
    return result
