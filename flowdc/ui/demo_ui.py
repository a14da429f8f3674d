"""`flowdc demo --ui`: the sample hosts, a download from them, and the live view of it.

The download runs in a thread of this process and feeds the page through a telemetry subscriber
(no file or network hop); the page keeps showing the finished run until Ctrl-C.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from flowdc.demo import DEMO_PORT, demo_run
from flowdc.telemetry import Telemetry
from flowdc.ui.context import UiContext
from flowdc.ui.live import telemetry_subscriber
from flowdc.ui.runs import RunStatus


def run_demo_ui(out: str, rows: int = 2000, output_format: str = "webdataset", host: str = "127.0.0.1",
                port: int = 8080, hosts_port: int = DEMO_PORT, token: str | None = None) -> int:
    from flowdc.ui.server import check_bind, serve

    check_bind(host, token)  # before anything starts
    folder = Path(out).resolve()
    with demo_run(out, rows, True, output_format, hosts_port) as (cfg, hosts):
        # Its own output, started afresh each time, so the page always shows a whole run.
        cfg.output = str(folder / f"output-{output_format}-ui")
        cfg.force = True
        ctx = UiContext(workdir=folder / "ui")
        ctx.forms["download"].shown.update({"input": cfg.input, "output": str(folder / "output-from-ui")})
        ctx.live.reset(rows_total=rows)
        ctx.external = RunStatus(kind="demo download", state="running", started=time.time())
        telemetry = Telemetry(cfg.telemetry)
        telemetry.subscribe(telemetry_subscriber(ctx.live))
        print("flowdc demo: hosts on loopback:", *hosts, sep="\n")

        def download() -> None:
            from flowdc.api import download_partition

            status = ctx.external
            assert status is not None
            overview = None
            try:
                result = download_partition(cfg, telemetry=telemetry)  # made to run in a thread
                status.state, status.detail = "finished", f"{result.ok} stored"
                overview = result.overview
            except Exception as exc:  # shown on the page; the demo keeps serving
                status.state, status.detail = "failed", f"{type(exc).__name__}: {exc}"
            ctx.live.finish(overview)

        # Once the page is up, so that a person (or a test) opening it sees the run from its start.
        serve(ctx, host, port, token, on_startup=threading.Thread(target=download, name="flowdc-demo-download",
                                                                  daemon=True).start)
    return 0
