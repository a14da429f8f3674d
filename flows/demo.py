"""The main job on embedded defaults, under Prefect: the collect-dataset flow on the bundled sample hosts.

    python -m flows.demo [--out flowdc-demo] [--rows 2000] [--port 4200] [--ephemeral]

It uses the Prefect server PREFECT_API_URL names, else one already on 127.0.0.1:PORT, else it starts
one there (left running so the run can be reviewed in the UI; the demo says how to stop it). With
--ephemeral, or when no server comes up, Prefect runs a temporary server for this process only.
Then it runs the flow (local engine, a local folder, sample hosts on loopback) and prints where to
see the run in the Prefect UI. Running it again refreshes the same dataset: nothing stored is
fetched again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

SERVER_START_S = 90.0


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_server(port: int, log_path: Path) -> tuple[str | None, int | None]:
    """A Prefect server on 127.0.0.1:port in a session of its own (it outlives the demo); (API URL, pid)."""
    api_url = f"http://127.0.0.1:{port}/api"
    if healthy(api_url):
        return api_url, None
    prefect = Path(sys.executable).with_name("prefect")
    argv = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(port)]
    print(f"flowdc demo: starting a Prefect server on 127.0.0.1:{port} (log: {log_path}) ...", flush=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if healthy(api_url):
            return api_url, proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    if proc.poll() is None:
        proc.terminate()
    print(f"flowdc demo: the Prefect server did not come up (see {log_path}); using a temporary one", flush=True)
    return None, None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flows.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="flowdc-demo", help="Folder for the dataset (default: %(default)s).")
    parser.add_argument("--rows", type=int, default=2000, help="Rows of the sample manifest (default: %(default)s).")
    parser.add_argument("--port", type=int, default=4200, help="Local Prefect server port (default: %(default)s).")
    parser.add_argument("--ephemeral", action="store_true", help="A temporary Prefect server for this run only.")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.exit(2, "flows.demo: error: --rows must be >= 1\n")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Before Prefect is imported: nothing is sent off this machine.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    started_pid = None
    if not os.environ.get("PREFECT_API_URL") and not args.ephemeral:
        api_url, started_pid = start_server(args.port, out / "prefect-server.log")
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
    from flows.collect_dataset import collect_dataset, demo_parameters

    state = collect_dataset(**demo_parameters(str(out / "dataset"), args.rows), return_state=True)
    run_id = state.state_details.flow_run_id
    if not state.is_completed():
        print(f"flowdc demo: the flow run {run_id} ended {state.type.value}: {state.message}", file=sys.stderr)
        return 1
    result = state.result()
    t, run = result["dataset"]["totals"], result["run"]
    print(f"flowdc demo: {t['ok']}/{t['rows']} rows stored ({result['dataset']['success_rate']:.1%}), "
          f"{result['dataset']['bytes'] / 1e6:.1f} MB; this run fetched {run['rows_new']} new rows and retried "
          f"{run['rows_retry']}")
    print(f"  dataset: {out / 'dataset'}\n  index:   {result['dataset']['index']}\n"
          f"  summary: {out / 'dataset' / 'dataset.json'}")
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        ui = api_url.rstrip("/").removesuffix("/api")
        print(f"  Prefect UI: {ui}/runs/flow-run/{run_id}  (run history, task runs, logs, artifacts)")
        if started_pid:
            print(f"  the Prefect server keeps running for the UI; stop it with: kill {started_pid}")
    else:
        print("  (a temporary Prefect server ran this flow; start `prefect server start` to keep run history)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
