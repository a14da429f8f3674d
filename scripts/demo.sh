#!/usr/bin/env bash
# The main job on embedded defaults: the collect-dataset Prefect flow on sample image hosts on loopback
# (a local Prefect server, the local engine, a local folder); it prints where to see the run in the UI.
# `--no_prefect` (or `--ui`) runs the plain `flowdc demo` instead: one download, no Prefect.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
for arg in "$@"; do
  if [ "$arg" = "--no_prefect" ] || [ "$arg" = "--ui" ]; then
    args=()
    for a in "$@"; do [ "$a" = "--no_prefect" ] || args+=("$a"); done
    exec .venv/bin/flowdc demo "${args[@]}"
  fi
done
exec .venv/bin/python -m flows.demo "$@"
