"""The ledger and resume: kill -9 at any moment, rerun, and nothing is lost, duplicated, half-written
or fetched twice; reruns after a finished run retry only transient failures; --force starts over.

`python -m flowdc download` runs as a real subprocess against fake hosts on 127.0.0.x that live in
this test process, so both runs of a test talk to the same servers (same ports, and the hosts'
per-URL request counts show exactly what each run fetched).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import webdataset as wds

from flowdc.ledger import LEDGER_DIR
from flowdc.testing.fakehosts import FakeHostFarm, HostSpec, run_farm_in_thread
from tests.integration.conftest import (
    REPO,
    download,
    expected_png,
    free_port,
    latest,
    requested_urls,
    run_flowdc,
    subprocess_env,
    tar_samples,
    temporaries,
    visible_files,
    write_manifest,
)

FarmFactory = Callable[[Sequence[HostSpec]], FakeHostFarm]
ROWS = 1400
IMAGE_BYTES = 600
KILL_AT = {"first_request": 1, "half": ROWS // 2, "late": int(ROWS * 0.85)}


def kill_farm(farm_factory: FarmFactory) -> FakeHostFarm:
    """Four hosts slow enough (~75 ms per request, 4 at a time each) that a run lasts ~6.5 s: long
    enough to pass imagefolder's first timed ledger flush (after 5 s) before the late kill."""
    return farm_factory([HostSpec(f"127.0.0.{i}", latency_s=0.065, jitter_s=0.02, image_bytes=IMAGE_BYTES, seed=i)
                         for i in (2, 3, 4, 5)])


def speed_up(farm: FakeHostFarm) -> None:
    """Make the same hosts fast for the rerun (their specs are read per request), to keep tests short."""
    for host in farm.hosts:
        host.spec.latency_s, host.spec.jitter_s = 0.002, 0.0


def kill_manifest(tmp_path: Path, farm: FakeHostFarm) -> tuple[Path, list[str]]:
    urls = []
    for i in range(ROWS):
        fault = "?fail=404" if i % 97 == 5 else "?fail=503x1" if i % 53 == 7 else ""
        urls.append(farm.url(i % len(farm.hosts), f"/k/{i:05d}.png{fault}"))
    path = write_manifest(tmp_path / "manifest.parquet", urls, labels=[f"class_{i % 5}" for i in range(ROWS)],
                          extra_columns={"license": ["CC0", "CC-BY"] * (ROWS // 2)})
    return path, urls


def wait_until_idle(farm: FakeHostFarm, timeout: float = 5.0) -> None:
    """Until no request is in any host (a killed client's requests are being torn down)."""
    deadline = time.monotonic() + timeout
    while any(st["in_system"] for st in farm.stats().values()) and time.monotonic() < deadline:
        time.sleep(0.02)


def kill_when(cmd: list[str], farm: FakeHostFarm, ready: Callable[[], bool]) -> None:
    """Start `cmd`, kill -9 it once `ready()` holds (the run must not end first), and wait until the
    hosts have let go of its requests."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.wait(10)
    assert proc.returncode == -9
    wait_until_idle(farm)


def ledger_parts(out: Path) -> list[str]:
    folder = out / LEDGER_DIR
    return [p.name for p in folder.glob("*.parquet") if not p.name.startswith(".")] if folder.is_dir() else []


def check_visible_files_are_whole(out: Path, fmt: str) -> None:
    """Right after a kill: every file under a final name is complete (temporaries are hidden)."""
    if fmt == "webdataset":
        for key, parts in tar_samples(out).items():  # opens and reads every member of every shard
            assert parts["png"] == expected_png(f"/k/{int(key) - 1:05d}.png", IMAGE_BYTES), key
        return
    for path in visible_files(out):
        if ".tmp-" in path.name or "_flowdc" in path.parts:
            continue
        if path.suffix == ".png":
            row = int(path.stem) - 1
            assert path.read_bytes() == expected_png(f"/k/{row:05d}.png", IMAGE_BYTES), path


def check_final_output(out: Path, fmt: str, urls: list[str]) -> None:
    """Every fetchable row is ok exactly once, with the right bytes; 404 rows failed; no temporaries."""
    rows = latest(out)
    assert [r["row"] for r in rows] == list(range(ROWS))
    for rec in rows:
        if "fail=404" in rec["url"]:
            assert (rec["status"], rec["reason"]) == ("failed", "http_404"), rec
        else:
            assert rec["status"] == "ok", rec
            assert rec["url"] == urls[rec["row"]] and rec["key"] == f"{rec['row'] + 1:08d}"
            body = expected_png(urlsplit(rec["url"]).path, IMAGE_BYTES)
            assert rec["sha256"] == hashlib.sha256(body).hexdigest()
    assert temporaries(out) == []
    ok = {r["key"]: r for r in rows if r["status"] == "ok"}
    if fmt == "imagefolder":
        files = [p for p in visible_files(out) if "_flowdc" not in p.parts and p.name != "overview.json"]
        assert len(files) == len(ok), "one file per ok key, and nothing else"
        assert {str(p.relative_to(out)) for p in files} == {r["path"] for r in ok.values()}
        for path in files:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == ok[path.stem]["sha256"], path
        return
    samples = tar_samples(out)  # fails on any key stored twice
    assert set(samples) == set(ok)
    for key, parts in samples.items():
        assert hashlib.sha256(parts["png"]).hexdigest() == ok[key]["sha256"]
        assert json.loads(parts["json"])["url"] == ok[key]["url"]
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert shards == [f"{n:06d}.tar" for n in range(len(shards))], shards  # no gap: a brace pattern finds all
    for shard in out.glob("*.tar"):
        assert shard.with_suffix(".parquet").is_file()
        assert (out / LEDGER_DIR / f"shard-{shard.stem}.parquet").is_file()
    read_back = [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")),
                                                      shardshuffle=False, empty_check=False)]
    assert sorted(read_back) == sorted(ok)


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset"])
@pytest.mark.parametrize("moment", list(KILL_AT))
def test_sigkill_and_rerun_loses_and_duplicates_nothing(tmp_path: Path, farm_factory: FarmFactory, fmt: str,
                                                        moment: str) -> None:
    """kill -9 during a download (at the first request, half way, near the end), then the same
    command again: every fetchable row is stored exactly once, whole, and no URL the ledger held
    as ok (or as a final failure) before the rerun is fetched again."""
    farm = kill_farm(farm_factory)
    manifest, urls = kill_manifest(tmp_path, farm)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output", str(out),
           "--label", "label", "--output_format", fmt, "--samples_per_shard", "40", "--concurrent_downloads", "32",
           "--disable_paarc", "--C_init", "4", "--timeout", "5", "--retry_backoff_sec", "0.05", "--quiet",
           "--no_create_tar"]
    kill_when(cmd, farm, lambda: farm.totals()["requests"] >= KILL_AT[moment] and (moment != "late"
                                                                                    or bool(ledger_parts(out))))

    check_visible_files_are_whole(out, fmt)
    held = latest(out) if (out / LEDGER_DIR).is_dir() else []
    held_ok = {r["url"] for r in held if r["status"] == "ok"}
    held_final = {r["url"] for r in held if r["status"] == "failed" and not r["retryable"]}
    if moment == "late":
        assert held_ok and held_final, "the late kill should leave ok rows and 404s in the ledger"
    before = requested_urls(farm)

    speed_up(farm)
    rerun = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    after = requested_urls(farm)
    fetched_again = [u for u in held_ok | held_final if after.get(u, 0) != before.get(u, 0)]
    assert fetched_again == [], f"{len(fetched_again)} finished URLs fetched again, e.g. {fetched_again[:3]}"
    check_final_output(out, fmt, urls)


def test_rerun_retries_only_transient_failures_and_force_starts_over(tmp_path: Path,
                                                                      two_hosts: FakeHostFarm) -> None:
    """After a finished run, a rerun fetches nothing for ok rows or final failures and retries the
    transient ones (a 503 that outlasted max_retry_attempts now succeeds); a third run fetches
    nothing at all; --force fetches everything again and leaves no trace of the old layout."""
    ok_urls = [two_hosts.url(i % 2, f"/rr/{i}.png?size=500") for i in range(30)]
    flaky = two_hosts.url(0, "/rr/flaky.png?fail=503x2")
    final = [two_hosts.url(1, "/rr/gone.png?fail=404"), two_hosts.url(0, "/rr/page.png?ctype=text/html"),
             two_hosts.url(1, "/rr/big.png?size=90000")]
    urls = [*ok_urls, flaky, *final, "ftp://127.0.0.2/x.png"]
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["a", "b"] * (len(urls) // 2) + ["a"])
    out = tmp_path / "out"
    opts: dict[str, Any] = {"label": "label", "max_retry_attempts": 1, "max_body_bytes": 50_000}

    first = download(manifest, out, **opts)
    assert first["totals"] == {"rows": 35, "ok": 30, "failed": 5, "skipped": 0}
    state = {r["url"]: r for r in latest(out)}
    assert (state[flaky]["reason"], state[flaky]["retryable"], state[flaky]["attempts"]) == ("http_503", True, 2)
    assert not any(state[u]["retryable"] for u in final)

    before = requested_urls(two_hosts)
    second = download(manifest, out, **opts)
    after = requested_urls(two_hosts)
    changed = {u: after[u] - before.get(u, 0) for u in after if after[u] != before.get(u, 0)}
    assert changed == {flaky: 1}
    assert second["totals"] == {"rows": 35, "ok": 31, "failed": 4, "skipped": 0}
    assert second["this_run"]["already_done"] == 34 and second["this_run"]["ok"] == 1

    third = download(manifest, out, **opts)
    assert requested_urls(two_hosts) == after
    assert third["this_run"]["already_done"] == 35 and third["totals"]["ok"] == 31

    forced = download(manifest, out, **opts, force=True, output_format="webdataset", samples_per_shard=8)
    again = requested_urls(two_hosts)
    assert all(again[u] == after[u] + 1 for u in [*ok_urls, *final[:2]])
    assert forced["this_run"]["already_done"] == 0 and forced["totals"]["ok"] == 31
    assert not (out / "a").exists() and not (out / "b").exists()
    assert len(tar_samples(out)) == 31


def test_rerun_against_restarted_hosts_on_fixed_ports(tmp_path: Path) -> None:
    """A later rerun, after the hosts restarted on the same ports, asks them only for the rows that
    were not stored: here the rows of a host that was down during the first run."""
    ips = ("127.0.0.2", "127.0.0.3")
    ports = [free_port(ip) for ip in ips]
    urls = [f"http://{ips[i % 2]}:{ports[i % 2]}/fx/{i}.png?size=400" for i in range(20)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = tmp_path / "out"
    with run_farm_in_thread([HostSpec(ips[0], port=ports[0])]):  # the second host is down
        first = download(manifest, out, max_retry_attempts=1, timeout=2, host_down_after=1.0)
    # Refused: its rows fail as connect_failed, and as host_down once a run of refusals takes it as down.
    assert first["totals"]["ok"] == 10 and sum(first["errors"].values()) == 10
    assert set(first["errors"]) <= {"connect_failed", "host_down"}, first["errors"]
    with run_farm_in_thread([HostSpec(ip, port=port) for ip, port in zip(ips, ports, strict=True)]) as farm:
        second = download(manifest, out, max_retry_attempts=1, timeout=2)
        asked = requested_urls(farm)
    assert second["totals"]["ok"] == 20
    assert sorted(asked) == sorted(u for u in urls if u.startswith(f"http://{ips[1]}"))
    assert all(n == 1 for n in asked.values())


def test_every_row_ends_in_the_ledger(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """ok + failed + skipped == rows, and every non-ok row carries a reason."""
    urls = [two_hosts.url(i % 2, f"/every/{i}.png?size=300") for i in range(12)]
    urls += [two_hosts.url(0, "/every/x.png?fail=404"), "", "mailto:a@b.c", urls[0]]
    out = tmp_path / "out"
    overview = download(write_manifest(tmp_path / "m.parquet", urls), out, naming_mode="url_based")
    rows = latest(out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "skipped")}
    assert counts == {"ok": 12, "failed": 2, "skipped": 2} and sum(counts.values()) == len(urls) == len(rows)
    assert all(r["reason"] for r in rows if r["status"] != "ok")
    assert overview["totals"] == {"rows": len(urls), **counts}


def test_interrupt_then_resume(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """Ctrl-C (SIGINT) stops cleanly with exit code 130 and a resume hint; the rerun completes."""
    farm = farm_factory([HostSpec("127.0.0.2", latency_s=0.02)])
    urls = [farm.url(0, f"/int/{i}.png?size=300") for i in range(400)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    args = ["download", "--input", str(manifest), "--output", str(tmp_path / "out"), "--quiet", "--disable_paarc",
            "--C_init", "4", "--output_format", "webdataset", "--samples_per_shard", "25"]
    proc = subprocess.Popen([sys.executable, "-m", "flowdc", *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while farm.totals()["requests"] < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(2)
        stdout, _ = proc.communicate(timeout=30)
        speed_up(farm)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in stdout
    assert 0 < sum(r["status"] == "ok" for r in latest(tmp_path / "out")) < 400
    rerun = run_flowdc(*args)
    assert rerun.returncode == 0 and "400/400 rows stored" in rerun.stdout
    assert len(tar_samples(tmp_path / "out")) == 400


def test_a_kill_during_a_changed_manifests_run_leaves_no_copies(tmp_path: Path, farm_factory: FarmFactory) -> None:
    """New rows put before the stored ones take row numbers (keys) past the output's: a kill in the
    middle of that run, then the same command, must give them the same keys. The rerun numbered the
    rows the killed run had not recorded anew, and the files that run wrote under their first keys
    stayed beside the rerun's copies (244 in QA), packed by the archive and kept by --force."""
    farm = kill_farm(farm_factory)
    speed_up(farm)
    first = [farm.url(i % 4, f"/k/{i:05d}.png") for i in range(400)]
    out = tmp_path / "out"
    assert download(write_manifest(tmp_path / "first.parquet", first), out)["totals"]["ok"] == 400
    # ~2 s for the new rows, answered out of order: the kill comes after a few of the journal's
    # half-second syncs, with rows written but not yet recorded on both sides of the highest recorded.
    for host in farm.hosts:
        host.spec.latency_s, host.spec.jitter_s = 0.05, 0.1
    new = [farm.url(i % 4, f"/k/{i:05d}.png{'?fail=503x1' if i % 7 == 0 else ''}") for i in range(400, 700)]
    now = new + first  # 300 new rows first: all move
    manifest = write_manifest(tmp_path / "now.parquet", now)
    cmd = [sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output", str(out),
           "--disable_paarc", "--C_init", "4", "--retry_backoff_sec", "0.3", "--quiet", "--no_create_tar"]
    kill_when(cmd, farm, lambda: farm.totals()["requests"] >= 400 + 200)
    speed_up(farm)
    rerun = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    ok = {r["path"]: r for r in latest(out) if r["status"] == "ok"}
    assert len(ok) == 700
    files = {str(p.relative_to(out)) for p in visible_files(out) if "_flowdc" not in p.parts
             and p.name != "overview.json"}
    assert files == set(ok), f"{len(files - set(ok))} files no record names, e.g. {sorted(files - set(ok))[:3]}"
