"""The page's logic with NiceGUI's simulated `user`: the live view from real telemetry records,
the form checked by the CLI's code, secrets kept off the page, the push route, a real run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nicegui import ui
from nicegui.testing import User

from flowdc.testing.fakehosts import HostSpec, run_farm_in_thread, write_manifest
from flowdc.ui.context import UiContext
from flowdc.ui.server import register


def host_line(t: float, partition: str, name: str, limit: int) -> dict:
    return {"kind": "host", "t": t, "partition_id": partition, "host": name, "state": "PROBE_BW", "limit": limit,
            "inflight": limit, "p50_ms": 12.5, "ok": 40}


async def start_download(user: User, tmp_path: Path, manifest: Path, **fields: str) -> UiContext:
    """Open the page, fill the form (input, output and `fields`), press Start."""
    ctx = UiContext(workdir=tmp_path / "ui")
    register(ctx)
    await user.open("/")
    user.find("Configure and run").click()
    for name, value in {"input": str(manifest), "output": str(tmp_path / "out"), **fields}.items():
        user.find(marker=f"field-{name}").clear().type(value)
    user.find("Start").click()
    await user.should_see("download started")
    return ctx


def table_rows(user: User) -> list[dict]:
    (table,) = user.find(ui.table).elements
    return table.rows


async def test_the_live_view_lists_every_partitions_hosts_and_the_totals(user: User, tmp_path: Path):
    ctx = UiContext(workdir=tmp_path)
    for t in (1.0, 1.5, 2.0):
        ctx.live.ingest(host_line(t, "part-00000", "127.0.0.2:81", 12))
        ctx.live.ingest(host_line(t, "part-00001", "127.0.0.3:81", 3))
    register(ctx)
    await user.open("/")
    await user.should_see("partitions: part-00000, part-00001")
    await user.should_see("no run yet")
    assert {(r["partition"], r["host"], r["limit"]) for r in table_rows(user)} == {
        ("part-00000", "127.0.0.2:81", 12), ("part-00001", "127.0.0.3:81", 3)}
    await user.should_see("80")  # done: 2 hosts x 40 ok requests
    ctx.live.ingest(host_line(2.5, "part-00001", "127.0.0.4:81", 7))  # a record arrives: the timer shows it
    await user.should_see("120", retries=10)
    assert any(r["host"] == "127.0.0.4:81" for r in table_rows(user))
    limit_chart = next(c for c in user.find(ui.echart).elements if "flowdc-limit-chart" in c.classes)
    assert {s["name"] for s in limit_chart.options["series"]} >= {"part-00000/127.0.0.2:81", "part-00001/127.0.0.3:81"}


async def test_a_bad_value_gets_the_cli_message_and_starts_nothing(user: User, tmp_path: Path):
    ctx = UiContext(workdir=tmp_path)
    register(ctx)
    await user.open("/")
    user.find("Configure and run").click()
    user.find(marker="field-input").type("m.parquet")
    user.find(marker="field-output").type(str(tmp_path / "out"))
    user.find(marker="field-concurrent_downloads").clear().type("0")
    user.find("Start").click()
    await user.should_see("concurrent_downloads must be >= 1, got 0")
    assert ctx.run is None


async def test_a_loaded_config_never_puts_its_secrets_on_the_page(user: User, tmp_path: Path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"input": "m.parquet", "output": "s3://bkt/x",
                               "storage_options": {"secret": "s3cr3t-value", "endpoint_url": "http://127.0.0.1:9"}}))
    ctx = UiContext(workdir=tmp_path, config_path=str(cfg))
    register(ctx)
    await user.open("/")
    user.find("Configure and run").click()
    user.find("Load").click()
    await user.should_see(f"loaded {cfg}")
    assert user.client is not None
    page = json.dumps([el.props for el in user.client.elements.values()], ensure_ascii=False)
    assert "http://127.0.0.1:9" in page and "s3cr3t-value" not in page
    saved = tmp_path / "saved.json"
    user.find(marker="config-path").clear().type(str(saved))
    user.find("Save").click()
    await user.should_see(f"saved {saved}")
    assert json.loads(saved.read_text())["storage_options"]["secret"] == "s3cr3t-value"  # the user's own file


async def test_the_push_route_takes_json_lines_with_the_token_only(user: User, tmp_path: Path):
    ctx = UiContext(workdir=tmp_path, push_token="push-token-123456")
    register(ctx)
    body = "\n".join(json.dumps(host_line(3.0, "part-00002", "127.0.0.9:1", 5)) for _ in range(2))
    headers = {"Content-Type": "application/x-ndjson"}
    bad = await user.http_client.post("/telemetry", content=body, headers={**headers, "Authorization": "Bearer no"})
    assert bad.status_code == 401 and ctx.live.view().rows == []
    ok = await user.http_client.post("/telemetry", content=body,
                                     headers={**headers, "Authorization": "Bearer push-token-123456"})
    assert ok.status_code == 200 and ok.json() == {"accepted": 2}
    assert ctx.live.view().rows[0]["host"] == "127.0.0.9:1"


async def test_start_runs_a_real_download_and_the_table_fills_with_its_hosts(user: User, tmp_path: Path):
    specs = [HostSpec("127.0.0.2", latency_s=0.05), HostSpec("127.0.0.3", latency_s=0.02, capacity=2)]
    with run_farm_in_thread(specs) as farm:
        urls = [farm.url(i % 2, f"/img/{i}.png") for i in range(120)]
        manifest = write_manifest(tmp_path / "m.parquet", urls)
        ctx = await start_download(user, tmp_path, manifest)
        assert ctx.run is not None
        status = await asyncio.to_thread(ctx.run.wait, 60)
        assert status.state == "finished", status.detail
        await user.should_see("download: finished", retries=10)
    hosts = {r["host"].split(":")[0] for r in ctx.live.view().rows}
    assert hosts == {"127.0.0.2", "127.0.0.3"}
    assert ctx.live.view().totals.ok == 120
    (telemetry,) = (tmp_path / "ui").glob("telemetry-*.jsonl")  # kept, for `flowdc report`
    assert telemetry.stat().st_size > 0 and not list((tmp_path / "ui").glob("*.json"))  # the task is gone


async def test_stop_is_a_ctrl_c_for_the_run_and_keeps_what_it_stored(user: User, tmp_path: Path):
    with run_farm_in_thread([HostSpec("127.0.0.2", latency_s=0.1, capacity=1)]) as farm:
        manifest = write_manifest(tmp_path / "m.parquet", [farm.url(0, f"/img/{i}.png") for i in range(400)])
        ctx = await start_download(user, tmp_path, manifest, C_init="1", C_min="1")
        assert ctx.run is not None
        for _ in range(100):  # until the run is at work (its first snapshot)
            if ctx.live.view().rows:
                break
            await asyncio.sleep(0.1)
        user.find("Stop").click()
        await user.should_see("stopping")
        status = await asyncio.to_thread(ctx.run.wait, 60)
        assert status.state == "stopped", status.detail
        await user.should_see("download: stopped", retries=10)
        stored = ctx.live.view().totals.ok
        assert 0 < stored < 400  # stopped mid-run, with what it stored kept (overview.json's count)
