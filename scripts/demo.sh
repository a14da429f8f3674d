#!/usr/bin/env bash
# The main job on embedded defaults: sample image hosts on loopback, a sample manifest, a download.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/flowdc demo "$@"
