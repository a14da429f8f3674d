"""create_tar: pack an imagefolder output into OUTPUT.tar.gz, beside it, atomically."""

from __future__ import annotations

import posixpath
import tarfile

from flowdc.storage import Destination

SKIP_TOP = ("_flowdc",)


def create_archive(dest: Destination) -> str:
    """Stream every stored file (not the ledger) into a gzip tar; returns where it went."""
    parent = dest.parent()
    name = posixpath.basename(dest.root) + ".tar.gz"
    prefix = dest.root.rstrip("/") + "/"
    files = sorted(p for p in dest.fs.find(dest.root) if not _skipped(p[len(prefix):]))
    with parent.open_atomic(name) as fh, tarfile.open(fileobj=fh, mode="w|gz") as tar:
        for path in files:
            rel = path[len(prefix):]
            info = tarfile.TarInfo(posixpath.join(posixpath.basename(dest.root), rel))
            info.size = dest.fs.size(path)
            with dest.fs.open(path, "rb") as src:
                tar.addfile(info, src)
    return parent.url(name)


def _skipped(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in SKIP_TOP or ".tmp-" in posixpath.basename(rel)
