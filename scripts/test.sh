#!/usr/bin/env bash
# Lint and the whole test suite (unit, integration against real servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check flowdc flows deployments tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
