"""create_tar: pack an imagefolder output into an archive beside it, never over a stranger's file.

The archive is a plain tar by default (`archive_format` tar): images are compressed already, and
gzip over them took most of a run's time for a few percent of size; `tar.gz` is there for
outputs that hold other files. On a local disk it is built while the download runs: the writer
hands every file it stores to an ArchiveBuilder, which appends it to a hidden temporary beside the
output; at the end only what the run did not store itself (an earlier run's files, the overview)
is read back from disk, and the temporary takes its name. Elsewhere (object stores) the output is
packed in one pass at the end.

Where the archive goes is decided here and only here (`archive_names`, `free_names`): beside
the output, as OUTPUT.tar (or OUTPUT.tar.gz). If a file of that name exists and flowdc did not
write it, the archive takes the first free name of OUTPUT.flowdc-2.tar, OUTPUT.flowdc-3.tar, ...
and the run says so. flowdc knows its own archive by the record it keeps in
OUTPUT/_flowdc/archive.json (name, size and the store's version of the file): an archive of ours
is replaced by the next one, a file that no longer matches its record is left alone. An output
with no stored file gets no archive.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

from flowdc.storage import TMP_MARK, Destination, link_or_replace, temporary_name
from flowdc.write_child import ArchiveLoan, WriteFailure
from flowdc.writers.tarstream import TarStream

SKIP_TOP = ("_flowdc",)
FORMATS = {"tar": ".tar", "tar.gz": ".tar.gz"}
RECORD = "_flowdc/archive.json"
MAX_ALTERNATIVES = 50
BOOKKEEPING = frozenset({"overview.json"})  # an output holding only these stored nothing
GZIP_LEVEL = 6
log = logging.getLogger(__name__)


def archive_names(dest: Destination, fmt: str = "tar") -> Iterator[str]:
    """Names beside the output the archive may take, best first."""
    base, suffix = posixpath.basename(dest.root), FORMATS[fmt]
    yield base + suffix
    for n in range(2, MAX_ALTERNATIVES + 2):
        yield f"{base}.flowdc-{n}{suffix}"


def our_archives(dest: Destination) -> list[str]:
    """The archives flowdc wrote for this output that are still as written: the one recorded, and
    the one it was naming when a kill cut it short (recorded as `pending` before the name was
    given), that one first."""
    record = dest.read_json(RECORD)
    pending = record.get("pending")
    ours = []
    for entry in (pending if isinstance(pending, dict) else {}, record):
        name = entry.get("name")
        # A copied output carries the original's record: that archive, beside the original, is not ours.
        if isinstance(name, str) and any(name in archive_names(dest, fmt) for fmt in FORMATS) \
                and dest.parent().version(name) == entry.get("fingerprint") and name not in ours:
            ours.append(name)
    return ours


def our_archive(dest: Destination) -> str | None:
    """The name of the archive flowdc last wrote for this output, if it is still as written."""
    return next(iter(our_archives(dest)), None)


def free_names(dest: Destination, fmt: str = "tar") -> Iterator[tuple[str, bool]]:
    """(name, exclusive) for each name the archive may take now: our own archive's name (to be
    replaced) or a name nobody uses (to be created only if it is still free when written)."""
    parent, ours = dest.parent(), our_archives(dest)
    for name in archive_names(dest, fmt):
        if name in ours:
            yield name, False
        elif not parent.exists(name):
            yield name, True


def remove_our_archive(dest: Destination) -> bool:
    """For --force: delete the archives flowdc wrote (and only those still as written)."""
    ours = our_archives(dest)
    for name in ours:
        dest.parent().remove(name)
    dest.remove(RECORD)
    return bool(ours)


class ArchiveStopped(Exception):
    """The run was asked to stop while the archive packed the files it had not added yet: the
    archive is left to the next run (its temporary is removed)."""


class _Packer:
    """A tar (or tar.gz) stream of the output's files, each member once, under OUTPUT/."""

    def __init__(self, dest: Destination, file: IO[bytes], fmt: str):
        self.dest = dest
        self._raw = file
        self._gz = gzip.GzipFile("", "wb", GZIP_LEVEL, file, mtime=0) if fmt == "tar.gz" \
            else None
        self._tar = TarStream(self._gz or file)
        self._top = posixpath.basename(dest.root)
        self._mtime = int(time.time())
        self.added: set[str] = set()
        self.stored = 0  # members that are not bookkeeping

    def claim(self, rel: str) -> str | None:
        """The member name for `rel`, now counted as added; None if it was added already (a file
        stored twice in one run: its first bytes are its last, same key and body)."""
        if rel in self.added:
            return None
        self.added.add(rel)
        self.stored += rel not in BOOKKEEPING
        return f"{self._top}/{rel}"

    def unclaim(self, rel: str) -> None:
        """A claimed member that was never written (its file was not stored after all)."""
        if rel in self.added:
            self.added.discard(rel)
            self.stored -= rel not in BOOKKEEPING

    def add(self, rel: str, data: bytes) -> None:
        name = self.claim(rel)
        if name is not None:
            self._tar.add(name, data, self._mtime)

    def add_the_rest(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Every file under the output not added yet (not the ledger, not temporaries), read from the
        store: on a resumed output, every earlier run's. `stopped()` is asked before each file."""
        for rel in stored_files(self.dest):
            if stopped():
                raise ArchiveStopped
            if rel not in self.added:
                with self.dest.open_read(rel) as src:
                    self.add(rel, src.read())

    @property
    def offset(self) -> int:
        return self._tar.offset

    @property
    def mtime(self) -> int:
        return self._mtime

    def flush(self) -> None:
        self._tar.flush()

    def resume_at(self, offset: int) -> None:
        self._tar.offset = offset

    def finish(self) -> None:
        self._tar.finish()
        if self._gz is not None:
            self._gz.close()  # writes the gzip trailer; the raw file stays open
        self._raw.flush()


class ArchiveBuilder:
    """The archive of a local output, built while the download runs (see the module's text).

    add() is called by the writer threads for every file stored, after the file is in place;
    a failure there only logs once and falls back to packing at the end. The write process
    (flowdc.write_process) appends members itself: lend() hands it the stream, claim() names each
    member it is to add, take_back() resumes here where it stopped."""

    def __init__(self, dest: Destination, fmt: str = "tar"):
        self.dest, self.fmt = dest, fmt
        parent = dest.parent()
        remove_stale_temporaries(parent, posixpath.basename(dest.root))
        self._tmp = parent.path(temporary_name(posixpath.basename(dest.root) + FORMATS[fmt]))
        self._file: IO[bytes] | None = open(self._tmp, "wb")  # noqa: SIM115 (closed by finish or discard)
        self._packer: _Packer | None = _Packer(dest, self._file, fmt)
        self._lock = threading.Lock()

    def add(self, rel: str, data: bytes) -> None:
        with self._lock:
            if self._packer is None:
                return
            try:
                self._packer.add(rel, data)
            except OSError as exc:
                log.warning("the archive could not keep up (%s); it is packed at the end instead", exc)
                self._packer = None

    def lend(self) -> ArchiveLoan | None:
        """Flush the stream and lend it out; None when it cannot be (gzip, or given up on)."""
        with self._lock:
            packer = self._packer
            if packer is None or self.fmt != "tar":
                return None
            assert self._file is not None
            packer.flush()
            self._file.flush()
            return ArchiveLoan(self._tmp, packer.offset, packer.mtime)

    def claim(self, rel: str) -> str | None:
        """For the borrower: the member name to add `rel` under, or None (added already, or given up)."""
        with self._lock:
            return None if self._packer is None else self._packer.claim(rel)

    def unclaim(self, rel: str) -> None:
        with self._lock:
            if self._packer is not None:
                self._packer.unclaim(rel)

    def take_back(self, offset: int | None, failure: WriteFailure | None = None) -> None:
        """The borrower stopped with the stream `offset` bytes long; or it failed: pack at the end."""
        with self._lock:
            if self._packer is None:
                return
            if offset is None:
                log.warning("the archive could not keep up (%s); it is packed at the end instead", failure)
                self._packer = None
                return
            assert self._file is not None
            self._file.seek(offset)
            self._packer.resume_at(offset)

    def finish(self, stopped: Callable[[], bool] = lambda: False) -> str | None:
        """Add what the run did not store itself, give the archive its name; returns where it went,
        or None when the output holds nothing to pack or no name is free. ArchiveStopped when
        `stopped()` turns true on the way."""
        with self._lock:
            packer, self._packer = self._packer, None
        if packer is None:  # broken on the way: one pass at the end
            self.discard()
            return create_archive(self.dest, self.fmt, stopped)
        try:
            packer.add_the_rest(stopped)
            if not packer.stored:
                return None
            packer.finish()
            assert self._file is not None
            self._file.close()
            self._file = None
            parent, tmp = self.dest.parent(), posixpath.basename(self._tmp)
            for name, exclusive in free_names(self.dest, self.fmt):
                # Recorded as pending first: a kill right after the link leaves an archive that is ours.
                _pending(self.dest, name, parent.version(tmp))
                try:
                    link_or_replace(self._tmp, parent.path(name), exclusive=exclusive)
                except FileExistsError:
                    continue  # a file of that name appeared meanwhile: it is not ours
                return _recorded(self.dest, name, self.fmt)
            return _no_name(self.dest)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the temporary (an interrupted run, a failure, or after finish)."""
        with self._lock:
            self._packer = None
            if self._file is not None:
                self._file.close()
                self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def start_archive(dest: Destination, fmt: str = "tar") -> ArchiveBuilder | None:
    """A builder for a local output; None (packed at the end instead) when its temporary cannot be made."""
    try:
        return ArchiveBuilder(dest, fmt)
    except OSError as exc:
        log.warning("the archive is packed at the end of the run: %s", exc)
        return None


def create_archive(dest: Destination, fmt: str = "tar", stopped: Callable[[], bool] = lambda: False) -> str | None:
    """Pack every stored file (not the ledger) into an archive beside the output in one pass;
    returns where it went, or None when the output holds nothing to pack or no name is free.
    ArchiveStopped when `stopped()` turns true on the way."""
    if all(rel in BOOKKEEPING for rel in stored_files(dest)):
        return None
    builder = start_archive(dest, fmt) if dest.local else None
    if builder is not None:  # packed into a temporary, and named as a builder names it (never unrecorded by a kill)
        return builder.finish(stopped)
    parent = dest.parent()
    for name, exclusive in free_names(dest, fmt):
        try:
            with parent.open_atomic(name, exclusive=exclusive) as fh:
                packer = _Packer(dest, fh, fmt)
                packer.add_the_rest(stopped)
                packer.finish()
        except FileExistsError:
            continue  # a file of that name appeared while we packed: it is not ours
        return _recorded(dest, name, fmt)
    return _no_name(dest)


def _pending(dest: Destination, name: str, fingerprint: str | None) -> None:
    """Record the archive about to take `name` (its temporary's fingerprint, which the name keeps)."""
    record = dest.read_json(RECORD)
    dest.write_bytes(RECORD, json.dumps({**record, "pending": {"name": name, "fingerprint": fingerprint}}).encode())


def _recorded(dest: Destination, name: str, fmt: str) -> str:
    """Record the archive as ours; an earlier archive of ours under another name (another format,
    or a name taken meanwhile) is stale now and goes."""
    parent, earlier = dest.parent(), our_archives(dest)
    dest.write_bytes(RECORD, json.dumps({"name": name, "fingerprint": parent.version(name)}).encode())
    for stale in earlier:
        if stale != name:
            parent.remove(stale)
    first = next(archive_names(dest, fmt))
    if name != first:
        log.warning("%s exists and flowdc did not write it; the archive is %s", first, name)
    return parent.url(name)


def _no_name(dest: Destination) -> None:
    log.warning("no archive written: every name beside %s is taken by files flowdc did not write", dest.display)
    return None


def remove_stale_temporaries(parent: Destination, base: str) -> int:
    """An archive temporary a killed run left beside the output (only names of our own making)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(parent.root) as entries:
        for entry in entries:
            if entry.name.startswith(f".{base}.tar") and TMP_MARK in entry.name and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed += 1
    return removed


def stored_files(dest: Destination) -> list[str]:
    """Paths (relative, sorted) of the files under the output an archive holds: not _flowdc/, no temporaries.
    On a local disk by os.scandir, which never enters _flowdc/: fsspec's find costs a dict per file
    (and os.walk a path join per file: 30 ms of a run's tail for 20k files)."""
    if not dest.local:
        prefix = dest.root.rstrip("/") + "/"
        return sorted(rel for p in dest.fs.find(dest.root) if not _skipped(rel := p[len(prefix):]))
    found: list[str] = []
    folders = [("", dest.root)]
    while folders:
        rel, folder = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.is_dir():
                    if TMP_MARK not in entry.name:
                        found.append(rel + entry.name)
                elif not entry.is_symlink() and not (not rel and entry.name in SKIP_TOP):
                    folders.append((f"{rel}{entry.name}/", entry.path))  # as os.walk: a linked folder is not entered
    return sorted(found)


def _skipped(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in SKIP_TOP or TMP_MARK in posixpath.basename(rel)
