"""flowdc.loops.run_sync (sync calls inside a running loop) and flowdc.api.read_telemetry."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from flowdc.api import read_telemetry, report
from flowdc.errors import ConfigError
from flowdc.loops import in_running_loop, run_sync


async def _where() -> str:
    await asyncio.sleep(0)
    return threading.current_thread().name


async def _fails() -> None:
    raise ValueError("bad input")


def test_without_a_running_loop_it_runs_in_this_thread() -> None:
    assert not in_running_loop()
    assert run_sync(_where, "x_async") == threading.current_thread().name


async def test_inside_a_running_loop_it_runs_in_a_helper_thread() -> None:
    assert in_running_loop()
    assert run_sync(_where, "x_async") == "flowdc-sync:x_async"
    with pytest.raises(ValueError, match="bad input"):  # the coroutine's own error, as it is
        run_sync(_fails, "x_async")


def test_read_telemetry_keeps_host_lines_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"t": 2.0, "host": "a:1", "limit": 9}, {"kind": "run", "t": 1.5, "ok": 3},
             {"kind": "host", "t": 1.0, "host": "b:1", "limit": 4}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    table = read_telemetry(path)
    assert table["host"].to_list() == ["b:1", "a:1"] and table["limit"].to_list() == [4, 9]
    (tmp_path / "empty.jsonl").write_text("")
    assert read_telemetry(tmp_path / "empty.jsonl").height == 0


@pytest.mark.parametrize("content", [None, "time,host\n1,a\n"], ids=["missing", "not-telemetry"])
def test_read_telemetry_and_report_refuse_the_same_input_alike(tmp_path: Path, content: str | None) -> None:
    """Both ConfigError (docs/api.md), with the same message: one reader behind both."""
    path = tmp_path / "t.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as by_report:
        report(path)
    with pytest.raises(ConfigError) as by_reader:
        read_telemetry(path)
    assert str(by_reader.value) == str(by_report.value)
