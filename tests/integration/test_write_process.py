"""The write process (flowdc/write_process.py): a long imagefolder run's files, digests, decode
checks and archive members are done in a child process. What it stores must be exactly what the
event loop stores, its failures must be the same per-row failures, and a killed one loses nothing
that was recorded."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc import child_process, write_process
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec
from tests.integration.conftest import (
    download,
    latest,
    mixed_images_manifest,
    run_with_a_killed_write_process,
    sha256,
    size_limited_write_process_script,
    subprocess_env,
    temporaries,
)

COMPARED = ("status", "reason", "retryable", "path", "sha256", "width", "height", "image_format", "bytes")


def _archive(out: Path) -> dict[str, bytes]:
    with tarfile.open(out.parent / f"{out.name}.tar") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_the_write_process_stores_what_the_event_loop_stores(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    manifest = mixed_images_manifest(tmp_path, two_hosts, 60)
    monkeypatch.setattr(write_process, "START_AFTER", 10**9)
    on_loop = tmp_path / "on_loop"
    download(manifest, on_loop, label="label", create_tar=True)
    assert write_children == []

    monkeypatch.setattr(write_process, "START_AFTER", 5)  # the manifest's 62 rows are a "long" run
    monkeypatch.setattr(write_process, "RING_BYTES", 64 * 1024)  # the 300-KB body cannot fit
    in_child = tmp_path / "in_child"
    download(manifest, in_child, label="label", create_tar=True)
    assert len(write_children) == 1

    loop_recs, child_recs = latest(on_loop), latest(in_child)
    assert [{k: r[k] for k in COMPARED} for r in child_recs] == [{k: r[k] for k in COMPARED} for r in loop_recs]
    statuses = [r["status"] for r in child_recs]
    assert statuses.count("ok") == 61 and child_recs[60]["reason"] == "not_decodable"
    assert {r["image_format"] for r in child_recs if r["status"] == "ok"} == {"JPEG", "PNG", "WEBP", "GIF"}
    for rec in child_recs:
        if rec["status"] == "ok":
            assert sha256((in_child / rec["path"]).read_bytes()) == rec["sha256"]
    archive = _archive(in_child)
    stored = {f"in_child/{r['path']}": (in_child / r["path"]).read_bytes() for r in child_recs if r["status"] == "ok"}
    assert {k: v for k, v in archive.items() if k in stored} == stored
    assert set(archive) - set(stored) == {"in_child/overview.json"}
    assert {k.split("/", 1)[1] for k in archive} == {k.split("/", 1)[1] for k in _archive(on_loop)}
    assert not temporaries(in_child) and sorted(p.name for p in tmp_path.iterdir() if "tar" in p.name) == [
        "in_child.tar", "on_loop.tar"]


def test_files_and_an_archive_the_write_process_cannot_write(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A body past the child's file size limit fails its row after the store's retries (retryable, for
    the next run), the rest are stored; the archive, past the limit too, is packed at the end."""
    urls = [two_hosts.url(i % 2, f"/lim/{i}.png?size=60000") for i in range(30)]
    urls.append(two_hosts.url(0, "/lim/huge.png?size=1500000"))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": urls}), manifest)
    out = tmp_path / "out"
    script = size_limited_write_process_script(create_tar=True)
    done = subprocess.run([sys.executable, "-c", script, str(manifest), str(out)], capture_output=True, text=True,
                          timeout=180, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "could not keep up" in done.stderr  # the archive's fallback was taken, not a lucky fit
    recs = latest(out)
    assert [r["status"] for r in recs[:30]] == ["ok"] * 30
    assert (recs[30]["status"], recs[30]["reason"], recs[30]["retryable"]) == ("failed", "store_error:OSError", True)
    assert not (out / recs[30]["key"]).exists() and not temporaries(out)
    archive = _archive(out)
    assert {k for k in archive if k != "out/overview.json"} == {f"out/{r['path']}" for r in recs[:30]}
    assert all(archive[f"out/{r['path']}"] == (out / r["path"]).read_bytes() for r in recs[:30])


def test_a_killed_write_process_fails_the_run_and_a_rerun_loses_nothing(
        tmp_path: Path, farm_factory: Callable[[Sequence[HostSpec]], FakeHostFarm],
        monkeypatch: pytest.MonkeyPatch, write_children: list[child_process.ChildLink]) -> None:
    monkeypatch.setattr(write_process, "START_AFTER", 1)
    _farm, manifest, out, first = run_with_a_killed_write_process(
        tmp_path, farm_factory, write_children, lambda out: len(list(out.glob("*.png"))) >= 200,
        concurrent_downloads=64, create_tar=True)
    assert 0 < len(first) < 1500  # what it had answered before it died is recorded
    assert all(sha256((out / r["path"]).read_bytes()) == r["sha256"] for r in first.values())
    assert not (tmp_path / "out.tar").exists()  # a failed run leaves no archive

    download(manifest, out, concurrent_downloads=64, create_tar=True)
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok"] * 1500
    assert all(recs[row]["sha256"] == rec["sha256"] for row, rec in first.items())
    assert len(_archive(out)) == 1501 and not temporaries(out)


def test_a_run_of_unknown_length_hands_over_mid_run_and_the_archive_goes_on_where_the_loop_left_it(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    """A CSV manifest has no row count to tell a long run by: the first samples are written on the
    loop (their archive members too), then the write process takes over the same archive stream."""
    urls = [two_hosts.url(i % 2, f"/csv/{i}.png?size={2000 + 37 * i}") for i in range(400)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("url\n" + "\n".join(urls) + "\n")
    monkeypatch.setattr(write_process, "START_AFTER", 100)
    out = tmp_path / "out"
    download(manifest, out, create_tar=True)
    assert len(write_children) == 1
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok"] * 400
    archive = _archive(out)
    packed = json.loads(archive.pop("out/overview.json"))
    assert archive == {f"out/{r['path']}": (out / r["path"]).read_bytes() for r in recs}
    # The overview as packed, before it could name the archive; the output's names it since.
    assert {**packed, "archive": str(tmp_path / "out.tar")} == json.loads((out / "overview.json").read_text())


_GIVE_UP_MID_BATCH = textwrap.dedent("""
    import sys, time
    from flowdc.ledger import Ledger, Record
    from flowdc.storage import Destination
    from flowdc.write_process import WriteProcess
    from flowdc.writers.base import StoredSample
    from flowdc.writers.imagefolder import ImageFolderWriter

    dest = Destination(sys.argv[1])
    lane = WriteProcess(ImageFolderWriter(dest, Ledger(dest), labelled=False), None, "none")
    lane.send([StoredSample(Record(i, f"{i:08d}", "u", "ok"), bytes([i % 256]) * 200_000, ".bin", {})
               for i in range(400)])
    time.sleep(0.05)  # the child is in the middle of the batch
    lane.shutdown()
    print(lane._child._proc.returncode)
""")


def test_a_write_process_given_up_on_mid_batch_leaves_quietly(tmp_path: Path) -> None:
    """A failed run stops the child while it writes: no traceback on the user's terminal, exit 0."""
    done = subprocess.run([sys.executable, "-c", _GIVE_UP_MID_BATCH, str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "0", "")


def _padded_csv(path: Path, farm: FakeHostFarm, rows: int) -> Path:
    """A CSV manifest past child_process.EARLY_START_MIN_INPUT_BYTES: long URLs, small PNGs."""
    pad = "p" * 90
    path.write_text("url\n" + "\n".join(farm.url(i % 2, f"/early/{i}.png?size=900&pad={pad}")
                                        for i in range(rows)) + "\n")
    assert path.stat().st_size >= child_process.EARLY_START_MIN_INPUT_BYTES
    return path


def test_the_cli_starts_the_write_process_early_and_the_run_takes_that_one(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    """`flowdc download` of a big manifest starts its write process before it imports the download's
    modules; the run uses that child (one child in all) and stores what the loop would."""
    from flowdc.cli import main

    manifest = _padded_csv(tmp_path / "m.csv", two_hosts, 600)
    monkeypatch.setattr(write_process, "START_AFTER", 5)  # the run wants a write process
    early: list[child_process.ChildLink | None] = []
    start_early = child_process.start_early
    monkeypatch.setattr(child_process, "start_early", lambda: (start_early(), early.append(child_process._early)))
    out = tmp_path / "out"
    assert main(["download", "--input", str(manifest), "--output", str(out), "--quiet", "--timeout", "5"]) == 0
    assert write_children == early and not write_children[0].running()
    recs = latest(out)
    assert [r["status"] for r in recs] == ["ok"] * 600
    assert all(sha256((out / r["path"]).read_bytes()) == r["sha256"] for r in recs)
    assert len(_archive(out)) == 601 and not temporaries(out)


def test_a_write_process_started_early_that_no_run_takes_is_sent_away(
        tmp_path: Path, two_hosts: FakeHostFarm, monkeypatch: pytest.MonkeyPatch,
        write_children: list[child_process.ChildLink]) -> None:
    """A wrong guess (the run writes on its loop) costs a child that is stopped at the end."""
    from flowdc.cli import main

    manifest = _padded_csv(tmp_path / "m.csv", two_hosts, 600)
    monkeypatch.setattr(write_process, "START_AFTER", 10**9)
    out = tmp_path / "out"
    assert main(["download", "--input", str(manifest), "--output", str(out), "--quiet", "--timeout", "5"]) == 0
    assert len(write_children) == 1  # started early, then sent away: the run started none
    assert write_children[0]._proc.returncode == 0  # it left at the end of its pipe, and was waited for
    assert [r["status"] for r in latest(out)] == ["ok"] * 600


def test_a_ring_that_cannot_be_made_stops_the_child_and_says_why() -> None:
    """The ring's own error reaches the caller (not a second close of its descriptor), and the child
    that waited for its role is gone."""
    child = child_process.ChildLink()
    with pytest.raises(OSError) as raised:
        child.begin(-1, ("imagefolder", None, "none"))
    assert raised.value.errno == errno.EINVAL
    assert child._proc.returncode == 0
    child.shutdown()  # twice is harmless
