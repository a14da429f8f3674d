"""Claim an output before the first sample: is it ours, is it free, can it be written, and --force.

flowdc marks an output as its own with _flowdc/owner.json before it writes anything else, so a
run killed at any point leaves an output the next run recognises. A folder or prefix that holds
anything else and has no mark (nor the ledger of an older flowdc) is refused, with or without
--force. --force then removes only what flowdc wrote: the files and shards its ledger records,
its overview and archive, and its own _flowdc/ folder; every other file stays.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flowdc import __version__
from flowdc.archive import remove_our_archive
from flowdc.errors import REFUSED, DestinationError, FlowdcError, OutputNotOursError, UserError, failure_words
from flowdc.leases import LEASE_FILE, LOCK_FILE, OutputHold, hold_output
from flowdc.ledger import LEDGER_DIR, Ledger
from flowdc.storage import TMP_MARK, Destination, is_destination_error
from flowdc.writers.shardnames import PREFIX_OK, ShardNames, prefix_of_tar

log = logging.getLogger(__name__)
META_DIR = "_flowdc"
MARK = f"{META_DIR}/owner.json"
CLEARING = f"{META_DIR}/clearing.json"  # a --force under way: the next run finishes it
KEEP_WHILE_CLEARING = frozenset(posixpath.basename(p) for p in (MARK, CLEARING, LOCK_FILE, LEASE_FILE))
# Root files flowdc writes besides samples and shards (checked for our "tool" before removal).
OWN_ROOT_JSON = ("overview.json",)
# What an operating system leaves in an empty folder; such a folder still counts as empty.
LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "lost+found"})
# A local path that cannot exist as given (a name too long, a folder under /proc): the user's to change.
UNMAKEABLE = frozenset({errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR})
DELETE_BATCH = 1000
Layout = dict[str, Any]  # option name -> value, as the owner mark records it
# The options every run of an output keeps (check_layout).
LAYOUT_OPTIONS = ("output_format", "key_col", "label", "naming_mode")


@dataclass
class OutputClaim:
    """This run's hold on its output; release() at the end of the run."""

    dest: Destination
    run_id: str
    hold: OutputHold
    cleared: dict[str, int] = field(default_factory=dict)  # what --force removed

    def release(self) -> None:
        self.hold.release()


def claim_output(dest: Destination, *, run_id: str, force: bool, lease_ttl_s: float,
                 on_lost: Callable[[str], None] | None = None, layout: Layout | None = None) -> OutputClaim:
    """Check ownership, mark the output, take its lock or lease, probe that it takes writes, and
    for --force (or a --force that was cut short) remove what flowdc wrote there before.
    `layout`: the settings every run of this output must share (see check_layout)."""
    layout = layout or {}
    try:
        check_ours(dest, force=force)
        if not dest.exists(MARK):
            write_mark(dest, run_id, layout)  # before the lock file, which would otherwise be an unmarked write
        hold = hold_output(dest, run_id, lease_ttl_s, on_lost)
    except Exception as exc:
        raise _as_user_facing(dest, exc) from None
    try:
        if dest.local:
            probe_writes(dest)
        cleared: dict[str, int] = {}
        if force or dest.exists(CLEARING):
            if not force:
                log.warning("finishing the --force that an earlier run of %s did not complete", dest.display)
            cleared = clear_ours(dest)
            write_mark(dest, run_id, layout)  # a fresh output from here on
        else:
            check_layout(dest, run_id, layout)
    except BaseException as exc:
        hold.release()
        if isinstance(exc, Exception):
            raise _as_user_facing(dest, exc) from None
        raise
    return OutputClaim(dest, run_id, hold, cleared)


# -- ownership ------------------------------------------------------------------------------------
def check_ours(dest: Destination, *, force: bool = False) -> None:
    """Refuse an output that holds anything flowdc did not mark (OutputNotOursError)."""
    if dest.local and os.path.lexists(dest.root) and not os.path.isdir(dest.root):
        raise UserError(f"--output {dest.display} is a file, not a folder; give a folder (new or empty)")
    if dest.exists(MARK) or dest.exists(LEDGER_DIR):  # the ledger alone: written by an older flowdc
        return
    if not _other_entries(dest):
        return  # empty, or nothing but our own folder (a run cut short before its mark landed)
    hint = " (--force only ever removes what flowdc wrote)" if force else ""
    raise OutputNotOursError(f"--output {dest.display} already holds files that flowdc did not write "
                             f"(it has no {MARK}); give a new or empty folder{hint}")


def _other_entries(dest: Destination) -> bool:
    """Whether the output's top holds anything but OS litter and _flowdc/ (locally without listing
    a folder of millions of files in full)."""
    ignored = LITTER | {META_DIR}
    if dest.local:
        try:
            with os.scandir(dest.root) as entries:
                return any(e.name not in ignored for e in entries)
        except FileNotFoundError:
            return False
    return bool(set(dest.list()) - ignored)


def write_mark(dest: Destination, run_id: str, layout: Layout | None = None) -> None:
    mark = {"tool": "flowdc", "version": __version__, "run_id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "layout": dict(layout or {})}
    dest.makedirs()
    dest.write_bytes(MARK, json.dumps(mark, indent=1).encode())


def check_layout(dest: Destination, run_id: str, layout: Layout) -> None:
    """Refuse a run whose layout differs from the one the output was written with: another
    --output_format would put samples the ledger holds as stored where the output has none;
    another --key_col or --naming_mode gives every row a new identity or name, so each would be
    stored a second time; another --label would file new rows in another class tree than the
    stored ones (which the overview would then describe). A mark without some of these (an older
    flowdc) takes this run's for them."""
    mark = dest.read_json(MARK)
    recorded = mark.get("layout")
    if not isinstance(recorded, dict):
        write_mark(dest, run_id, layout)
        return
    for name, value in layout.items():
        if name in recorded and recorded[name] != value:
            raise UserError(f"--output {dest.display} was written with {_setting(name, recorded[name])} and this run "
                            f"asks for {_setting(name, value)}; every run of an output keeps its "
                            f"{', '.join('--' + n for n in LAYOUT_OPTIONS)}: give the same, another --output, or "
                            "--force to start over")
    if not layout.keys() <= recorded.keys():
        dest.write_bytes(MARK, json.dumps({**mark, "layout": {**layout, **recorded}}, indent=1).encode())


def _setting(name: str, value: Any) -> str:
    if value is None:
        return f"no --{name}"
    return f"--{name} {value}"


def probe_writes(dest: Destination) -> None:
    """Create and delete a file at the output's top: a read-only mount or an immutable folder
    says so here, once, instead of failing every sample's write."""
    probe = dest.path(f".flowdc-probe{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    os.unlink(probe)


def _as_user_facing(dest: Destination, exc: Exception) -> Exception:
    if isinstance(exc, FlowdcError):
        return exc
    why = REFUSED.get(getattr(exc, "errno", None) or 0)
    if why is None and isinstance(exc, PermissionError):
        why = "access denied"
    if why is not None:
        return UserError(f"--output {dest.display} refuses writes ({why}); give a writable folder or fix its "
                         "permissions")
    if dest.local and getattr(exc, "errno", None) in UNMAKEABLE:
        return UserError(f"--output {dest.display} cannot be made ({failure_words(exc)}); give another folder")
    if is_destination_error(exc):
        return DestinationError(f"cannot prepare {dest.display}: {type(exc).__name__}: {exc}")
    return exc


# -- --force ----------------------------------------------------------------------------------------
def clear_ours(dest: Destination) -> dict[str, int]:
    """Remove what flowdc wrote in `dest` and nothing else. A note under _flowdc/ says a clearing
    is under way until it is done, so a run cut short here is finished by the next one."""
    dest.write_bytes(CLEARING, json.dumps({"started": time.time()}).encode())
    files, shards, prefixes = recorded_outputs(Ledger(dest))
    removed = {"sample_files": _remove_files(dest, files)}
    shard_files = [name for p in sorted(prefixes) for s in sorted(shards) for name in ShardNames(p).files(s)]
    removed["shard_files"] = _remove_files(dest, shard_files)
    removed["folders"] = _remove_empty_folders(dest, files)
    removed["bookkeeping"] = sum(remove_if_ours(dest, name) for name in OWN_ROOT_JSON)
    removed["archive"] = int(remove_our_archive(dest))
    removed["temporaries"] = dest.remove_temporaries()
    for name in dest.list(META_DIR):
        if name not in KEEP_WHILE_CLEARING:
            dest.remove(f"{META_DIR}/{name}")
    dest.remove(CLEARING)
    return removed


def recorded_outputs(ledger: Ledger) -> tuple[set[str], set[int], set[str]]:
    """Sample files (imagefolder), shard numbers and shard name prefixes (webdataset) the ledger
    says flowdc wrote (a prefix is read back from the shards its samples name)."""
    table = ledger.read(["path", "shard"])
    shards = {int(s) for s in table["shard"].drop_null().to_pylist()} | ledger.committed_shards() \
        | ledger.started_shards()  # begun, never committed: a killed run's staged shard
    paths = table["path"].drop_null().unique().to_pylist()
    files = {p for p in paths if ":" not in p and _inside(p)}
    prefixes = {""} | {prefix_of_tar(p.split(":", 1)[0]) for p in paths if ":" in p}
    prefixes = {p for p in prefixes if PREFIX_OK.match(p)}  # never a path into another folder
    return files, shards, prefixes


def _inside(rel: str) -> bool:
    """A relative path that stays inside the output (a ledger edited by hand cannot reach out)."""
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and not ({"", ".", ".."} & set(parts)) \
        and parts[0] != META_DIR


def _remove_files(dest: Destination, rels: Iterable[str]) -> int:
    paths = [dest.path(r) for r in rels]
    removed = 0
    if dest.local:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
        return removed
    for i in range(0, len(paths), DELETE_BATCH):
        batch = paths[i:i + DELETE_BATCH]
        try:
            dest.fs.rm(batch)  # one bulk request where the store has one
        except FileNotFoundError:  # some were gone already: one by one
            for path in batch:
                with contextlib.suppress(FileNotFoundError):
                    dest.fs.rm_file(path)
        removed += len(batch)
    return removed


def _remove_empty_folders(dest: Destination, files: Iterable[str]) -> int:
    """Class folders the removed files leave empty (a folder that still holds a user's file stays)."""
    if not dest.local:
        return 0  # an object store has no folders
    folders = {posixpath.dirname(f) for f in files} - {""}
    removed = 0
    for rel in sorted(folders, key=lambda f: -f.count("/")):
        with contextlib.suppress(OSError):  # not empty, or already gone
            os.rmdir(dest.path(rel))
            removed += 1
    return removed


def remove_if_ours(dest: Destination, name: str) -> int:
    """Remove the JSON file `name` if flowdc wrote it (its "tool" says so); 1 if removed."""
    if dest.read_json(name).get("tool") != "flowdc":
        return 0
    dest.remove(name)
    return 1
