"""Register and serve the collect-dataset deployments from this process (Ctrl-C stops serving).

    collect-dataset/demo            a one-off run: the bundled sample hosts on loopback (free ports,
                                    up for the run's duration) and a sample manifest made for the run
    collect-dataset/weekly-refresh  the same dataset refreshed on a cron schedule (Mondays 03:00 UTC by
                                    default): only new rows and earlier transient failures are fetched

    python deployments/serve.py [--output DIR] [--manifest M] [--cron "0 3 * * 1"] [--sample_rows N]
    prefect deployment run 'collect-dataset/demo' --param output=DIR

Both deployments take every parameter of the flow; `manifest` and `output` default to the ones
given here (no manifest: the demo's sample hosts), every other parameter to the flow's own default.
Point PREFECT_API_URL at a server first (`prefect server start`), or every process starts its own.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

# Run as a script from a checkout: the flows package sits beside this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flows.collect_dataset import collect_dataset, demo_parameters

WEEKLY_CRON = "0 3 * * 1"


def deployments(output: str, cron: str, sample_rows: int, manifest: str = "") -> list[Any]:
    if manifest and "://" not in manifest:
        manifest = os.path.abspath(manifest)  # the flow runs in a process of its own, maybe elsewhere
    params = demo_parameters(output, sample_rows, manifest)
    demo = collect_dataset.to_deployment(
        name="demo", parameters=params, tags=["flowdc", "demo"],
        description="Collect the sample dataset from the bundled sample hosts on loopback.")
    weekly = collect_dataset.to_deployment(
        name="weekly-refresh", cron=cron, parameters=params, tags=["flowdc", "refresh"],
        description="Refresh the dataset: fetch only rows new to it and earlier transient failures; "
        "mark rows gone from the manifest.")
    return [demo, weekly]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="flowdc-demo/dataset", help="The demo's dataset folder (default: "
                        "%(default)s, from the current folder).")
    parser.add_argument("--manifest", default="", help="The manifest both deployments collect by default (a path "
                        "or fsspec URL; default: none, the demo's sample hosts).")
    parser.add_argument("--cron", default=WEEKLY_CRON, help="weekly-refresh's schedule (default: %(default)s, UTC).")
    parser.add_argument("--sample_rows", type=int, default=2000, help="Rows of the demo's sample manifest.")
    parser.add_argument("--limit", type=int, default=None, help="Flow runs at once (default: no limit).")
    args = parser.parse_args(argv)
    from prefect import serve

    # pause_on_shutdown=False: stopping this process must not pause the schedule for good.
    serve(*deployments(args.output, args.cron, args.sample_rows, args.manifest), pause_on_shutdown=False,
          limit=args.limit)


if __name__ == "__main__":
    main()
