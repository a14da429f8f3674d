"""create_tar: pack an imagefolder output into an archive beside it, never over a stranger's file.

Where the archive goes is decided here and only here (`archive_names`, `free_names`): beside
the output, as OUTPUT.tar.gz. If a file of that name exists and flowdc did not write it, the
archive takes the first free name of OUTPUT.flowdc-2.tar.gz, OUTPUT.flowdc-3.tar.gz, ... and the
run says so. flowdc knows its own archive by the record it keeps in OUTPUT/_flowdc/archive.json
(name, size and the store's version of the file): an archive of ours is replaced by the next
one, a file that no longer matches its record is left alone. An output with no stored file gets
no archive.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections.abc import Iterator

from flowdc.storage import TMP_MARK, Destination

SKIP_TOP = ("_flowdc",)
SUFFIX = ".tar.gz"
RECORD = "_flowdc/archive.json"
MAX_ALTERNATIVES = 50
BOOKKEEPING = frozenset({"overview.json"})  # an output holding only these stored nothing
log = logging.getLogger(__name__)


def archive_names(dest: Destination) -> Iterator[str]:
    """Names beside the output the archive may take, best first."""
    base = posixpath.basename(dest.root)
    yield base + SUFFIX
    for n in range(2, MAX_ALTERNATIVES + 2):
        yield f"{base}.flowdc-{n}{SUFFIX}"


def fingerprint(parent: Destination, name: str) -> str | None:
    """Size and the store's version of a file (ETag, generation or mtime); None when absent."""
    try:
        parent.fs.invalidate_cache(parent.path(name))
        info = parent.fs.info(parent.path(name))
    except FileNotFoundError:
        return None
    version = info.get("ETag") or info.get("generation") or info.get("mtime") or ""
    return f"{info.get('size')}:{version}"


def our_archive(dest: Destination) -> str | None:
    """The name of the archive flowdc last wrote for this output, if it is still as written."""
    try:
        record = json.loads(dest.read_bytes(RECORD))
        name = str(record["name"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if "/" in name or name in ("", ".", ".."):
        return None
    return name if fingerprint(dest.parent(), name) == record.get("fingerprint") else None


def free_names(dest: Destination) -> Iterator[tuple[str, bool]]:
    """(name, exclusive) for each name the archive may take now: our own archive's name (to be
    replaced) or a name nobody uses (to be created only if it is still free when written)."""
    parent, ours = dest.parent(), our_archive(dest)
    for name in archive_names(dest):
        if name == ours:
            yield name, False
        elif not parent.exists(name):
            yield name, True


def remove_our_archive(dest: Destination) -> bool:
    """For --force: delete the archive flowdc wrote (and only if it is still as written)."""
    name = our_archive(dest)
    if name is not None:
        dest.parent().remove(name)
    dest.remove(RECORD)
    return name is not None


def create_archive(dest: Destination) -> str | None:
    """Stream every stored file (not the ledger) into a gzip tar beside the output; returns where
    it went, or None when the output holds nothing to pack or no name is free."""
    prefix = dest.root.rstrip("/") + "/"
    files = sorted(p for p in dest.fs.find(dest.root) if not _skipped(p[len(prefix):]))
    if all(p[len(prefix):] in BOOKKEEPING for p in files):
        return None
    parent = dest.parent()
    for name, exclusive in free_names(dest):
        try:
            with parent.open_atomic(name, exclusive=exclusive) as fh, tarfile.open(fileobj=fh, mode="w|gz") as tar:
                for path in files:
                    rel = path[len(prefix):]
                    info = tarfile.TarInfo(posixpath.join(posixpath.basename(dest.root), rel))
                    info.size = dest.fs.size(path)
                    with dest.fs.open(path, "rb") as src:
                        tar.addfile(info, src)
        except FileExistsError:
            continue  # a file of that name appeared while we packed: it is not ours
        dest.write_bytes(RECORD, json.dumps({"name": name, "fingerprint": fingerprint(parent, name)}).encode())
        if name != next(archive_names(dest)):
            log.warning("%s exists and flowdc did not write it; the archive is %s", next(archive_names(dest)), name)
        return parent.url(name)
    log.warning("no archive written: every name beside %s is taken by files flowdc did not write", dest.display)
    return None


def _skipped(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in SKIP_TOP or TMP_MARK in posixpath.basename(rel)
