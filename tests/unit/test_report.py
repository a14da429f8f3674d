"""`flowdc report`: a synthetic telemetry file (ramp, backoff, 429s, a fixed-limit host) becomes a
valid PNG or HTML page; summaries add up; damaged and missing files are handled as documented."""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flowdc.cli import main
from flowdc.config import ConfigError
from flowdc.report import MAX_HOSTS, _bins, _time_axis, render_report
from flowdc.telemetry_read import load_series, summarize

T0 = 1_790_000_000.0
STEP = 0.5
FAST, BURSTY, FIXED = "127.0.0.2:18000", "127.0.0.3:18000", "127.0.0.4:18000"
COUNTERS = ("requests", "ok", "n_429_503", "n_5xx", "n_timeouts")


class _Host:
    """Cumulative counters plus a scripted limit, written the way telemetry.py writes them."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name, self.rng = name, rng
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.last_ok = 0

    def serve(self, limit: int, ok: int, n429: int = 0, n5xx: int = 0, timeouts: int = 0) -> None:
        self.counts["ok"] += ok
        self.counts["n_429_503"] += n429
        self.counts["n_5xx"] += n5xx
        self.counts["n_timeouts"] += timeouts
        self.counts["requests"] += ok + n429 + n5xx + timeouts

    def paarc(self, t: float, state: str, limit: int, p50: float | None) -> dict[str, Any]:
        inflight = max(0, limit - self.rng.randint(0, 2))
        goodput = (self.counts["ok"] - self.last_ok) / STEP  # what PAARC measures, roughly
        self.last_ok = self.counts["ok"]
        return {"t": round(t, 3), "host": self.name, "state": state, "phase": None, "limit": limit,
                "inflight": inflight, "base_lat_ms": 20.0 if p50 else None, "p50_ms": p50,
                "p95_ms": p50 * 1.8 if p50 else None, "goodput": goodput, **self.counts, "queued": 100}

    def fixed(self, t: float) -> dict[str, Any]:
        return {"t": round(t, 3), "host": self.name, "state": "FIXED", "limit": 8, **self.counts,
                "inflight": self.rng.randint(5, 8), "queued": 50}


def synthetic_lines(seconds: float = 60.0, seed: int = 1) -> list[str]:
    """FAST ramps 8 -> 64 and cruises; BURSTY ramps, hits 429s at 20 s and 40 s and backs off;
    FIXED keeps limit 8 with no latency figures and a few 5xx/timeouts."""
    rng = random.Random(seed)
    fast, bursty, fixed = _Host(FAST, rng), _Host(BURSTY, rng), _Host(FIXED, rng)
    lines = []
    for i in range(int(seconds / STEP)):
        t, s = T0 + i * STEP, i * STEP
        limit = min(64, 8 * 2 ** int(s // 2))
        fast.serve(limit, ok=limit)
        lines.append(fast.paarc(t, "STARTUP" if limit < 64 else "PROBE_BW", limit, None if s < 1 else 22 + s / 10))
        lines.append(_bursty_snapshot(bursty, t, s))
        fixed.serve(8, ok=20, n5xx=int(i % 17 == 0), timeouts=int(i % 23 == 0))
        lines.append(fixed.fixed(t))
    return [json.dumps(rec) for rec in lines]


def _bursty_snapshot(host: _Host, t: float, s: float) -> dict[str, Any]:
    if 20 <= s < 21 or 40 <= s < 41:
        host.serve(30, ok=10, n429=5)
        return host.paarc(t, "BACKOFF", 21, 90.0)
    limit = min(30, 8 + int(s * 2)) if s < 20 else 21 if s < 40 else 15
    host.serve(limit, ok=limit // 2)
    return host.paarc(t, "STARTUP" if s < 10 else "PROBE_BW", limit, 35.0)


def write_telemetry(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def telemetry(tmp_path: Path) -> Path:
    return write_telemetry(tmp_path / "run.jsonl", synthetic_lines())


def assert_png(data: bytes, min_kb: int = 30) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_kb * 1024
    from io import BytesIO

    with Image.open(BytesIO(data)) as img:
        img.verify()
        return img.size


# -- rendering ------------------------------------------------------------------------------------
def test_png_beside_the_telemetry_file_by_default(telemetry: Path) -> None:
    out = render_report(telemetry)
    assert out == str(telemetry.with_suffix(".png"))
    width, height = assert_png(Path(out).read_bytes())
    assert width > height > 600  # three rows of three panels


def test_html_is_self_contained_with_image_and_table(telemetry: Path, tmp_path: Path) -> None:
    out = render_report(telemetry, str(tmp_path / "report.html"))
    page = Path(out).read_text(encoding="utf-8")
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match is not None
    assert_png(base64.b64decode(match.group(1)))
    for host in (FAST, BURSTY, FIXED):
        assert f"<td>{host}</td>" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched when opened


def test_busiest_hosts_only_when_there_are_many(tmp_path: Path) -> None:
    lines = []
    for i in range(20):
        host = _Host(f"10.0.0.{i}:80", random.Random(i))
        for k in range(20):
            host.serve(8, ok=i + 1)
            lines.append(json.dumps(host.paarc(T0 + k * STEP, "PROBE_BW", 8, 30.0)))
    path = write_telemetry(tmp_path / "many.jsonl", lines)
    _, height = assert_png(Path(render_report(path)).read_bytes(), min_kb=20)
    from flowdc.report import DPI, _figure_height

    assert abs(height - DPI * _figure_height(MAX_HOSTS)) < 2  # one row per plotted host
    page = Path(render_report(path, str(tmp_path / "many.html"))).read_text(encoding="utf-8")
    assert "<td>10.0.0.0:80</td>" in page  # the table still lists every host


# -- summary --------------------------------------------------------------------------------------
def test_summary_figures(telemetry: Path) -> None:
    summary = summarize(telemetry)
    assert list(summary) == [FAST, FIXED, BURSTY]  # busiest (most requests) first
    fast, bursty, fixed = summary[FAST], summary[BURSTY], summary[FIXED]
    assert (fast["final_limit"], fast["max_limit"], fast["n_429_503"]) == (64, 64, 0)
    assert (bursty["final_limit"], bursty["max_limit"]) == (15, 30)
    assert bursty["n_429_503"] == 5 * 4  # two bursts of two snapshots with 5 each
    assert bursty["median_p50_ms"] == 35.0
    assert fixed["median_p50_ms"] is None and fixed["final_state"] == "FIXED"
    assert fixed["n_5xx"] == 8 and fixed["n_timeouts"] == 6
    assert 5 <= fixed["mean_inflight"] <= 8
    assert fast["snapshots"] == 120 and fast["last_t"] - fast["first_t"] == pytest.approx(59.5)


def test_counters_restarting_in_an_appended_run_still_add_up(tmp_path: Path) -> None:
    run = synthetic_lines(seconds=10)
    later = [json.dumps({**json.loads(line), "t": json.loads(line)["t"] + 3600}) for line in run]
    once = summarize(write_telemetry(tmp_path / "once.jsonl", run))
    twice = summarize(write_telemetry(tmp_path / "twice.jsonl", run + later))
    for host in once:
        for key in COUNTERS:
            assert twice[host][key] == 2 * once[host][key]
    render_report(tmp_path / "twice.jsonl")  # a one-hour gap between the runs plots fine


def test_ok_rate_has_no_dips_where_the_snapshot_clock_drifts_against_the_bins(tmp_path: Path) -> None:
    """Telemetry ticks every ~0.507 s, not 0.5: every ~35 s a 2-s bin holds three snapshots, not
    four. Divided by the bin's width, a steady 300 ok/s then read as 225, a dip no host had."""
    step, rate = 0.507, 300.0
    host = _Host(FAST, random.Random(1))
    lines = []
    for i in range(1, int(80 / step)):
        host.serve(30, ok=round(rate * step))
        lines.append(json.dumps(host.paarc(T0 + i * step, "PROBE_BW", 30, 40.0)))
    # The host leaves for a minute and comes back: its first snapshot back spans one step, not the gap.
    for i in range(1, 40):
        host.serve(30, ok=round(rate * step))
        lines.append(json.dumps(host.paarc(T0 + 140 + i * step, "PROBE_BW", 30, 40.0)))
    path = write_telemetry(tmp_path / "drift.jsonl", lines)
    series = load_series(path, {FAST})
    bins = _bins(series[FAST], _time_axis(summarize(path), [FAST], series))
    rates = bins.rate(series[FAST].deltas["ok"], series[FAST].covered)
    shown = rates[~np.isnan(rates)]
    assert len(shown) > 40
    assert shown.min() == pytest.approx(rate, rel=0.01) and shown.max() == pytest.approx(rate, rel=0.01)


def _partition_lines(partition: str, start: float, seconds: float, ok_per_step: int) -> list[dict[str, Any]]:
    """One download's snapshots of FAST: its own controller and counters from 0, as distribute's tasks write them."""
    host = _Host(FAST, random.Random(partition))
    lines = []
    for i in range(int(seconds / STEP)):
        host.serve(4, ok=ok_per_step)  # the first snapshot comes up to a tick after the first replies
        lines.append({**host.paarc(start + i * STEP, "PROBE_BW", 4, 30.0), "run_id": "r1", "partition_id": partition})
    return lines


@pytest.mark.parametrize("concurrent", [True, False], ids=["at-once", "one-after-another"])
def test_a_host_split_over_partitions_adds_up_per_partition(tmp_path: Path, concurrent: bool) -> None:
    """Three partitions fetch one host, at once (distribute) or in turn; each counts from 0. Read as
    one stream, every drop looked like a restart: at once, the counts were added again and again;
    in turn, a partition whose first snapshot was above where the last one ended was undercounted."""
    starts = [T0, T0 + 0.1, T0 + 0.2] if concurrent else [T0, T0 + 21.5, T0 + 43]  # a task starts in ~2 s
    ok_per_step = [5, 3, 9] if concurrent else [1, 50, 9]  # ok/s: twice these
    lines = [rec for part, (start, ok) in enumerate(zip(starts, ok_per_step, strict=True))
             for rec in _partition_lines(f"part-{part:05d}", start, 20.0, ok)]
    lines.sort(key=lambda rec: rec["t"])
    path = write_telemetry(tmp_path / "split.jsonl", [json.dumps(rec) for rec in lines])
    info = summarize(path)[FAST]
    assert info["ok"] == info["requests"] == sum(40 * ok for ok in ok_per_step)
    series = load_series(path, {FAST})
    s = series[FAST]
    rates = _bins(s, _time_axis(summarize(path), [FAST], series)).rate(s.deltas["ok"], s.covered)
    shown = rates[~np.isnan(rates)]
    if concurrent:  # the host's rate is the three partitions' together; its limit, their three limits
        # (the first bin reads a little high: the first snapshots' replies came before the first tick)
        assert np.median(shown) == pytest.approx(34, rel=0.05) and shown.max() < 45
        assert info["max_limit"] == 12
    else:
        assert shown.max() == pytest.approx(100, rel=0.05) and info["max_limit"] == 4


# -- damaged, missing and wrong input -------------------------------------------------------------
def test_truncated_last_line_is_tolerated(tmp_path: Path) -> None:
    lines = synthetic_lines()
    path = tmp_path / "killed.jsonl"
    path.write_text("\n".join(lines) + "\n" + lines[-1][:37], encoding="utf-8")
    assert summarize(path) == summarize(write_telemetry(tmp_path / "whole.jsonl", lines))
    assert_png(Path(render_report(path)).read_bytes())


def test_malformed_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    lines = synthetic_lines()
    lines.insert(50, '{"t": 17900')
    assert summarize(write_telemetry(tmp_path / "bad.jsonl", lines))[FAST]["snapshots"] == 120


@pytest.mark.parametrize("content", [None, "", "\n\n", "time,host\n1,a\n", '{"t": 1}\n', "\x89PNG\r\n\x1a\n\x00\x01"])
def test_unusable_input_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "telemetry.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError):
        render_report(path)
    with pytest.raises(ConfigError):
        summarize(path)


def test_unknown_output_type_is_a_config_error(telemetry: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.png or \.html"):
        render_report(telemetry, str(tmp_path / "report.pdf"))
    with pytest.raises(ConfigError, match="does not exist"):
        render_report(telemetry, str(tmp_path / "missing" / "report.png"))
    with pytest.raises(ConfigError, match=r"--out s3://bucket/r\.png: a local path is needed"):
        render_report(telemetry, "s3://bucket/r.png")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a file"):  # said before the log is read
        render_report(telemetry, str(tmp_path / "taken.png"))
    odd_name = tmp_path / "telemetry.png"  # the default output would be the input itself
    odd_name.write_bytes(telemetry.read_bytes())
    with pytest.raises(ConfigError, match="overwrite"):
        render_report(odd_name)


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_report(telemetry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(telemetry)]) == 0
    assert str(telemetry.with_suffix(".png")) in capsys.readouterr().out
    assert main(["report", str(telemetry), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 30 * 1024


def test_cli_missing_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
