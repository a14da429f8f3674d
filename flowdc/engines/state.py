"""A staged partition's state, carried between its task's sandbox and the manager as one tar.

With cloud_tool a task downloads into a folder in its sandbox and ships each committed shard;
the partition's state is what stays of it at the end: its ledger (`_flowdc/`), overview.json,
and the files of any shard whose upload failed (an imagefolder's samples are not part of it:
there, cloud_tool ships one archive of a whole run). The task packs that folder into one file, the engine brings
it back to the manager (a task output file), and a rerun gets it as an input and unpacks it
before it resumes: the ledger says which rows are stored, and a shard left behind is shipped
then. One file, because both Work Queue and TaskVine carry files alike, and a folder's
transfer differs between them.
"""

from __future__ import annotations

import os
import shutil
import tarfile

STATE_FILE = "flowdc-state.tar"  # its name in the task's sandbox
BOOKKEEPING = ("_flowdc", "overview.json")
SHARD_SUFFIXES = (".tar", ".parquet", "_stats.json")


def state_names(folder: str) -> list[str]:
    """The top-level names of `folder` that make the state."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n in BOOKKEEPING or (
        not n.startswith(".") and n.endswith(SHARD_SUFFIXES) and os.path.isfile(os.path.join(folder, n))))


def unshipped_shards(folder: str) -> list[str]:
    """Shard files still in the staging folder: their upload failed."""
    return [n for n in state_names(folder) if n.endswith(SHARD_SUFFIXES)]


def pack_state(folder: str, tar_path: str) -> None:
    """The state of `folder` into `tar_path`, written whole or not at all."""
    tmp = tar_path + ".part"
    with tarfile.open(tmp, "w") as tar:
        for name in state_names(folder):
            tar.add(os.path.join(folder, name), arcname=name)
    os.replace(tmp, tar_path)


def unpack_state(tar_path: str, folder: str) -> bool:
    """Make `folder`'s state the packed one (its other files stay); False when there is none."""
    if not os.path.isfile(tar_path) or os.path.getsize(tar_path) == 0:
        return False
    fresh = folder.rstrip("/") + ".unpacking"
    shutil.rmtree(fresh, ignore_errors=True)
    os.makedirs(fresh)
    try:
        with tarfile.open(tar_path, "r") as tar:
            tar.extractall(fresh, filter="data")  # no links out, no absolute paths, no devices
        os.makedirs(folder, exist_ok=True)
        for name in state_names(folder):
            _remove(os.path.join(folder, name))
        for name in state_names(fresh):
            os.replace(os.path.join(fresh, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
