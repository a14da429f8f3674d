"""What `flowdc distribute` keeps at the top of DEST: its files, the plan its partitions come from, --force.

A DEST holds the partitions of one plan. Its partition folders are named by number only, so a
DEST filled from another plan (other groups, another method) would be resumed as if it were this
one: rows moved to another partition fetched again, stale folders left, a dataset that adds up
to more rows than the manifest. The first run records the plan (each partition's manifest, by
content); every later run compares, and a different plan is refused unless --force clears DEST.
A partition file whose size and modification time are those recorded is taken as the one
recorded, as rsync and make take a file: hashing tens of GB of manifests at every start would
cost minutes on a cluster's shared disk. Any other is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from typing import Any

from flowdc.engines.plan import Partition
from flowdc.errors import UserError
from flowdc.ledger import LEDGER_DIR
from flowdc.ownership import META_DIR, claim_output, remove_if_ours
from flowdc.storage import Destination

SUMMARY_FILE = "_flowdc/distribute.json"
TELEMETRY_FILE = "_flowdc/telemetry.jsonl"
PARTITIONS_DIR = "_flowdc/partitions"  # staged partitions' state files, as their tasks returned them
PLAN_RECORD = "_flowdc/distribute-plan.json"
PART_DIR = re.compile(r"^part-\d{5,}$")
SHOWN = 3  # partitions named in a message


IDENTITY = ("file", "rows", "sha256")  # what makes two plans' partitions the same; size and mtime only spare a hash


def plan_record(parts: list[Partition], known: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """partition name -> its manifest's file name, rows, content digest, size and modification
    time. A digest in `known` (the recorded plan) is kept for a file of the size and time recorded."""
    return {p.name: _entry(p, (known or {}).get(p.name)) for p in parts}


def _entry(part: Partition, known: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": os.path.basename(part.path), "rows": part.rows}
    if "://" in part.path:
        return {**entry, "sha256": None}  # a remote manifest: its name stands for it
    st = os.stat(part.path)
    stat = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    same_file = isinstance(known, dict) and known.get("file") == entry["file"]
    if same_file and all(known.get(k) == v for k, v in stat.items()):
        return {**entry, "sha256": known.get("sha256"), **stat}
    with open(part.path, "rb") as fh:
        return {**entry, "sha256": hashlib.file_digest(fh, "sha256").hexdigest(), **stat}


def claim_plan(dest: Destination, parts: list[Partition]) -> None:
    """Refuse a DEST that holds another plan's partitions (UserError); record this plan where none
    is, or where only the files' times have changed (the next start then hashes nothing)."""
    recorded = dest.read_json(PLAN_RECORD)
    known = recorded.get("partitions", {}) if recorded else {}
    mine = plan_record(parts, known)
    problem = _difference(known, mine) if recorded else _unrecorded_difference(dest, mine)
    if problem:
        raise UserError(f"--output {dest.display} holds the partitions of another plan ({problem}); give another "
                        "--output, or --force to delete what flowdc wrote there and start over")
    if mine != known:
        dest.write_bytes(PLAN_RECORD, json.dumps({"tool": "flowdc", "partitions": mine}, indent=1).encode())


def _difference(recorded: dict[str, Any], mine: dict[str, dict[str, Any]]) -> str:
    gone = sorted(set(recorded) - set(mine))
    if gone:
        return f"{_names(gone)} not in this plan"
    new = sorted(set(mine) - set(recorded))
    if new:
        return f"this plan's {_names(new)} not in it"
    changed = sorted(name for name in mine if not isinstance(recorded[name], dict)
                     or any(recorded[name].get(k) != mine[name][k] for k in IDENTITY))
    return f"{_names(changed)} from another manifest" if changed else ""


def _unrecorded_difference(dest: Destination, mine: dict[str, dict[str, Any]]) -> str:
    """A DEST from before plans were recorded: its partition folders and its last summary are the evidence."""
    stray = [name for name in dest.list() if PART_DIR.match(name) and name not in mine
             and dest.list(f"{name}/{LEDGER_DIR}")]
    if stray:
        return f"{_names(stray)} not in this plan"
    summary = dest.read_json(SUMMARY_FILE)
    rows = {p.get("name"): p.get("rows") for p in summary.get("partitions", []) if isinstance(p, dict)}
    changed = sorted(name for name, entry in mine.items() if isinstance(rows.get(name), int)
                     and entry["rows"] is not None and rows[name] != entry["rows"])
    return f"{_names(changed)} of other rows" if changed else ""


def _names(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more + (" is" if len(names) == 1 else " are")


def clear_dest(dest: Destination, storage_options: dict[str, Any], lease_ttl_s: float) -> None:
    """--force, once, before any task runs: remove what flowdc wrote in DEST and nothing else.

    Each partition folder is cleared as `flowdc download --force` clears an output (it is refused
    while another run holds it); then DEST's own files go: plan record, summary, telemetry,
    returned states, the consolidated index and dataset.json. The partition locks stay: a lock
    file another process holds must keep its name.
    """
    from flowdc.consolidate import DATASET_FILE, INDEX_FILE  # polars: only when asked to clear

    run_id = f"force-{uuid.uuid4().hex[:12]}"
    for name in dest.list():
        if not PART_DIR.match(name) or not dest.exists(f"{name}/{META_DIR}"):
            continue
        part = Destination(dest.url(name), storage_options)
        claim_output(part, run_id=run_id, force=True, lease_ttl_s=lease_ttl_s).release()
        part.remove(META_DIR)  # only its mark and lock were left: the next task marks it afresh
        if part.local:
            with contextlib.suppress(OSError):  # a folder that still holds a user's file stays
                os.rmdir(part.root)
    for rel in (PLAN_RECORD, SUMMARY_FILE, TELEMETRY_FILE, PARTITIONS_DIR, INDEX_FILE):
        dest.remove(rel)
    remove_if_ours(dest, DATASET_FILE)
