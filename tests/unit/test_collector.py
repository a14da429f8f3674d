"""The manager's telemetry collector, over real HTTP on loopback: token, merging, the JSONL file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flowdc.engines import collector
from flowdc.engines.collector import Collector


def post(url: str, body: str, token: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/x-ndjson"}
    return request("POST", f"{url}/telemetry", token, data=body.encode(), headers=headers)


def request(method: str, url: str, token: str | None, **kwargs: Any) -> tuple[int, Any]:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"

    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers,
                                                                        **kwargs) as resp:
            return resp.status, await resp.json()

    return asyncio.run(go())


def lines(*docs: dict) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)


def run_doc(part: str, ok: int, rate: float, done: bool = False) -> dict:
    return {"kind": "run", "t": 1.0, "run_id": "r1", "partition_id": part, "ok": ok, "failed": 1, "skipped": 0,
            "bytes": ok * 1000, "rate_per_s": rate, "mb_per_s": rate / 1000, "done": done}


def test_posts_merge_into_latest_and_the_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "_flowdc" / "telemetry.jsonl"
    with Collector(str(path)) as col:
        assert col.url.startswith("http://127.0.0.1:")
        body = lines(run_doc("part-00000", 10, 5.0), run_doc("part-00001", 20, 7.0),
                     {"t": 1.0, "host": "127.0.0.2:80", "limit": 8, "partition_id": "part-00000"}) + "not json\n\n"
        status, answer = post(col.url, body, col.token)
        assert (status, answer) == (202, {"accepted": 3})
        status, _ = post(col.url, lines(run_doc("part-00000", 30, 6.0, done=True)), col.token)
        assert status == 202
        latest = col.latest()
    # The later snapshot of part-00000 replaces the earlier one; a finished partition adds no rate.
    assert latest["partitions"]["r1/part-00000"]["ok"] == 30
    assert latest["totals"]["ok"] == 50 and latest["totals"]["failed"] == 2 and latest["totals"]["bytes"] == 50_000
    assert latest["totals"]["rate_per_s"] == pytest.approx(7.0)
    assert [h["host"] for h in latest["hosts"]] == ["127.0.0.2:80"]  # a line without "kind" is a host line
    written = [json.loads(x) for x in path.read_text().splitlines()]
    assert [d.get("partition_id") for d in written] == ["part-00000", "part-00001", "part-00000", "part-00000"]


def test_a_wrong_or_missing_token_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with Collector(str(path), token="right") as col:
        for token in ("wrong", None):
            status, _ = post(col.url, lines(run_doc("p", 1, 1.0)), token)
            assert status == 401
        assert request("GET", f"{col.url}/latest", None)[0] == 401
        assert col.latest()["partitions"] == {} and col.rejected == 2
    assert path.read_text() == ""


def test_latest_is_served_to_a_holder_of_the_token(tmp_path: Path) -> None:
    with Collector(str(tmp_path / "t.jsonl")) as col:
        post(col.url, lines(run_doc("part-00003", 4, 2.0)), col.token)
        status, doc = request("GET", f"{col.url}/latest", col.token)
        assert status == 200
    assert doc["partitions"]["r1/part-00003"]["ok"] == 4 and doc["lines"] == 1


def test_host_lines_kept_in_memory_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "MAX_HOSTS_KEPT", 3)
    col = Collector(str(tmp_path / "t.jsonl"))
    col.add_lines([json.dumps({"kind": "host", "host": f"h{i}", "partition_id": "p"}) for i in range(5)])
    assert [h["host"] for h in col.latest()["hosts"]] == ["h2", "h3", "h4"]


def test_snapshots_are_kept_per_run_and_partition(tmp_path: Path) -> None:
    """A resubmitted task (same run, same partition) replaces its predecessor's figures; another
    run's partition of the same number, and one host seen by two partitions, stay apart."""
    col = Collector(str(tmp_path / "t.jsonl"))
    host = {"kind": "host", "t": 1.0, "host": "127.0.0.2:80", "run_id": "r1"}
    col.add_lines([json.dumps(d) for d in (
        run_doc("part-00000", 10, 5.0), run_doc("part-00000", 12, 5.0),
        {**run_doc("part-00000", 3, 1.0), "run_id": "r2"},
        {**host, "partition_id": "part-00000", "limit": 4}, {**host, "partition_id": "part-00001", "limit": 2},
        {**host, "partition_id": "part-00000", "limit": 6})])
    latest = col.latest()
    assert {k: v["ok"] for k, v in latest["partitions"].items()} == {"r1/part-00000": 12, "r2/part-00000": 3}
    assert sorted((h["partition_id"], h["limit"]) for h in latest["hosts"]) == [("part-00000", 6), ("part-00001", 2)]
