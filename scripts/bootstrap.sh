#!/usr/bin/env bash
# Make a fresh machine ready: system packages (when root), a venv in .venv, and the project in it.
# Safe to run again; it redoes pip only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the UI's browser tests (Playwright drives it); tinyproxy: the network tests' real HTTP proxy;
# coop-computing-tools + python3-workqueue: Work Queue manager bindings and work_queue_worker (flowdc distribute).
APT_PACKAGES=(rclone chromium tinyproxy coop-computing-tools python3-workqueue)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: apt-get install ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.flowdc-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing flowdc and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi
# flowdc's own bytecode, written now: an editable install leaves it to the first import, and where
# PYTHONDONTWRITEBYTECODE is set (as on this project's machines) every start compiled flowdc again (60 ms).
.venv/bin/python -m compileall -q flowdc flows >/dev/null || true

# Work Queue's Python bindings come from Debian (python3-workqueue), built for the system Python 3.11:
# link them into the venv (same ABI). TaskVine (ndcctools) is not packaged here; see docs/distributed.md.
SYS_DIST=/usr/lib/python3/dist-packages
if [ -f "$SYS_DIST/work_queue.py" ]; then
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for f in "$SYS_DIST"/work_queue.py "$SYS_DIST"/_work_queue*.so "$SYS_DIST"/resource_monitor.py \
           "$SYS_DIST"/_resource_monitor*.so; do
    if [ -e "$f" ]; then ln -sf "$f" "$site/$(basename "$f")"; fi
  done
fi
