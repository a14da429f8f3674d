"""Ownership and --force on a local folder, without a download: what counts as ours, what
--force removes (only paths the ledger records, never outside the output), the archive record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from flowdc.archive import RECORD, ArchiveBuilder, create_archive, our_archive
from flowdc.errors import OutputInUseError, OutputNotOursError, UserError
from flowdc.ledger import Ledger, Record
from flowdc.ownership import MARK, check_ours, claim_output, clear_ours
from flowdc.storage import Destination


def test_what_counts_as_ours(tmp_path: Path) -> None:
    """New, empty (OS litter aside), marked, or an older flowdc's ledger: accepted. Anything else,
    or a file as the output: refused."""
    check_ours(Destination(str(tmp_path / "new")))
    litter = tmp_path / "litter"
    (litter / "lost+found").mkdir(parents=True)
    (litter / ".DS_Store").write_text("x")
    check_ours(Destination(str(litter)))
    (litter / "a.txt").write_text("mine")
    with pytest.raises(OutputNotOursError, match="flowdc did not write"):
        check_ours(Destination(str(litter)), force=True)
    (litter / "_flowdc" / "ledger").mkdir(parents=True)
    check_ours(Destination(str(litter)))  # an older flowdc's output
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_ours(Destination(str(tmp_path / "file")))


def test_force_follows_only_recorded_paths_inside_the_output(tmp_path: Path) -> None:
    """A ledger edited to name ../ or _flowdc/ paths cannot make --force delete them; recorded
    sample files and the folders they leave empty go, a folder holding a user's file stays."""
    out = tmp_path / "out"
    dest = Destination(str(out))
    (tmp_path / "outside.txt").write_text("keep")
    for rel in ("a/1.png", "b/2.png", "b/user.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(rel)
    ledger = Ledger(dest)
    absolute = str(tmp_path / "outside.txt")  # an absolute path in the ledger is not followed either
    for i, path in enumerate(["a/1.png", "b/2.png", "../outside.txt", absolute, "a/../../outside.txt"]):
        ledger.add(Record(i, f"{i:08d}", f"http://h/{i}", "ok", path=path))
    ledger.flush()
    (out / "overview.json").write_text(json.dumps({"tool": "someone else"}))
    removed = clear_ours(dest)
    assert removed["sample_files"] == 2 and removed["folders"] == 1
    assert (tmp_path / "outside.txt").read_text() == "keep"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["b/user.txt", "overview.json"]


def test_claim_holds_the_output_and_a_cut_short_force_is_finished(tmp_path: Path) -> None:
    out = tmp_path / "out"
    claim = claim_output(Destination(str(out)), run_id="r1", force=False, lease_ttl_s=60)
    assert json.loads((out / MARK).read_text())["run_id"] == "r1"
    with pytest.raises(OutputInUseError, match="run r1"):
        claim_output(Destination(str(out)), run_id="r2", force=True, lease_ttl_s=60)
    claim.release()
    (out / "_flowdc" / "clearing.json").write_text("{}")  # a --force that was killed
    (out / "_flowdc" / "ledger").mkdir()
    claim = claim_output(Destination(str(out)), run_id="r3", force=False, lease_ttl_s=60)
    claim.release()
    assert not (out / "_flowdc" / "clearing.json").exists() and not (out / "_flowdc" / "ledger").exists()


def test_an_archive_changed_since_it_was_written_is_no_longer_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "1.png").write_bytes(b"png")
    dest = Destination(str(out))
    assert create_archive(dest) == str(tmp_path / "out.tar")
    assert our_archive(dest) == "out.tar" and dest.exists(RECORD)
    (tmp_path / "out.tar").write_bytes(b"the user replaced it")
    assert our_archive(dest) is None
    assert create_archive(dest, "tar.gz") == str(tmp_path / "out.tar.gz")
    assert (tmp_path / "out.tar").read_bytes() == b"the user replaced it"


def test_the_archive_built_meanwhile_holds_each_file_once_and_a_discarded_one_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "old.png").write_bytes(b"an earlier run's")
    (tmp_path / ".out.tar.tmp-99-0").write_bytes(b"a killed run's temporary")
    dest = Destination(str(out))
    gone = ArchiveBuilder(dest)
    gone.discard()  # an interrupted run
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    builder = ArchiveBuilder(dest)
    for _ in range(2):  # a file stored twice in one run is packed once
        (out / "a" / "new.png").write_bytes(b"this run's")
        builder.add("a/new.png", b"this run's")
    assert builder.finish() == str(tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar", "r:") as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar} == {  # type: ignore[union-attr]
            "out/a/new.png": b"this run's", "out/a/old.png": b"an earlier run's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tar"]


# A run killed while it names its archive: os._exit in place of the step that follows the link
# (the record), or in place of the link itself.
_KILLED_WHILE_NAMING = textwrap.dedent("""
    import os, sys
    import flowdc.archive as archive
    from flowdc.storage import Destination
    out, window = sys.argv[1], sys.argv[2]
    if window == "after the link":
        archive._recorded = lambda *args: os._exit(9)
    else:
        archive.link_or_replace = lambda *args, **kwargs: os._exit(9)
    archive.create_archive(Destination(out))
""")


@pytest.mark.parametrize("window", ["after the link", "before the link"])
@pytest.mark.parametrize("earlier", [False, True])
def test_an_archive_named_by_a_run_killed_at_that_moment_stays_ours(tmp_path: Path, window: str,
                                                                    earlier: bool) -> None:
    """A kill between naming the archive and recording it left OUTPUT.tar unrecorded: every later
    run took it for a user's file, wrote OUTPUT.flowdc-2.tar beside it, and --force kept it. The
    name is recorded as pending, with the temporary's fingerprint, before it is given."""
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "1.png").write_bytes(b"png")
    dest = Destination(str(out))
    if earlier:
        assert create_archive(dest) == str(tmp_path / "out.tar")
        (out / "a" / "2.png").write_bytes(b"png 2")
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_NAMING, str(out), window], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert killed.returncode == 9, killed.stderr
    assert our_archive(dest) == ("out.tar" if earlier or window == "after the link" else None)
    assert create_archive(dest) == str(tmp_path / "out.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tar"]
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert sorted(tar.getnames()) == sorted(["out/a/1.png", *(["out/a/2.png"] if earlier else [])])
    clear_ours(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# Run in a process of its own: it lowers the file size limit (RLIMIT_FSIZE) and ignores SIGXFSZ,
# so writes past the limit fail for real (EFBIG), as on a full disk.
_ARCHIVE_UNDER_A_SIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from flowdc.archive import ArchiveBuilder
    from flowdc.storage import Destination
    out, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    builder = ArchiveBuilder(Destination(out))
    for i in range(40):
        body = bytes([i]) * 200_000
        with open(f"{out}/a/{i:02d}.png", "wb") as fh:
            fh.write(body)
        builder.add(f"a/{i:02d}.png", body)  # the archive passes the limit: its writes fail
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(builder.finish())
""")


def test_an_archive_whose_writes_failed_is_packed_at_the_end(tmp_path: Path) -> None:
    """The archive fails to write (EFBIG past a file size limit) while the files
    themselves fit: the run's archive is then packed in one pass at the end, whole, and the
    temporary is gone."""
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", _ARCHIVE_UNDER_A_SIZE_LIMIT, str(out), str(1_000_000)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "could not keep up" in done.stderr  # the fallback was taken, not a lucky fit
    assert done.stdout.strip() == str(tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar", "r:") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert members == {f"out/a/{i:02d}.png": bytes([i]) * 200_000 for i in range(40)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tar"]


def test_a_run_that_exited_unreaped_is_gone() -> None:
    """A killed run whose parent reaps nothing (a container's first process) stays a zombie: it holds
    no output, so its lease may be taken over. A live process is not gone; an unused pid is."""
    from flowdc.leases import process_gone

    assert not process_gone(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while not process_gone(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # exited, and left unreaped until wait() below
        assert process_gone(child.pid)
        assert os.path.exists(f"/proc/{child.pid}")  # still there: a zombie, not a freed pid
    finally:
        child.wait()
    assert process_gone(child.pid)
