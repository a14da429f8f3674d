"""Stopping a download by signal at the moments no fetch is under way: SIGTERM before the run's
own handlers are in place, and Ctrl-C while the archive packs the earlier runs' files. Each is a
real `python -m flowdc` process whose code is hooked only to send the signal at that moment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flowdc.testing.fakehosts import FakeHostFarm
from tests.integration.conftest import REPO, download, subprocess_env, write_manifest

# Runs `flowdc download ARGS` after hooking `TARGET` (module:Class.method or module:function) to
# send the process SIGNAL before its first call.
HOOKED = """
import importlib, os, signal, sys
from flowdc.cli import main
target, sig, argv = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3:]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
def hooked(*args, **kwargs):
    os.kill(os.getpid(), sig)
    return original(*args, **kwargs)
setattr(owner, name, hooked)
sys.exit(main(["download", *argv]))
"""


def run_hooked(target: str, sig: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HOOKED, target, sig, *argv], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=subprocess_env())


def test_sigterm_before_the_runs_handlers_stops_it_as_ctrl_c_does(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A SIGTERM as the run starts (its manifest, its output's claim: before its event loop takes
    the signals) killed the process outright (-15): no word of it, no exit 130."""
    manifest = write_manifest(tmp_path / "m.parquet", [two_hosts.url(i % 2, f"/t/{i}.png") for i in range(20)])
    proc = run_hooked("flowdc.download:DownloadJob.__init__", "SIGTERM", "--input", str(manifest), "--output",
                      str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == "flowdc: interrupted; run the same command again to resume", proc.stderr


def test_ctrl_c_while_the_archive_packs_earlier_files_stops_and_the_next_run_packs_it(
        tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """The archive's last step reads every file the run did not store itself, on a resumed output
    all of them: Ctrl-C there was ignored until it ended. It now stops the run (exit 130, the
    overview says interrupted, no archive and no temporary left), and the next run packs it."""
    urls = [two_hosts.url(i % 2, f"/a/{i}.png") for i in range(30)]
    manifest = write_manifest(tmp_path / "m.parquet", urls)
    out = tmp_path / "out"
    assert download(manifest, out)["totals"]["ok"] == 30  # no archive: the next run packs every file
    proc = run_hooked("flowdc.archive:_Packer.add_the_rest", "SIGINT", "--input", str(manifest), "--output",
                      str(out), "--quiet")
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert json.loads((out / "overview.json").read_text())["interrupted"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet", "out"]
    again = subprocess.run([sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output", str(out),
                            "--quiet"], capture_output=True, text=True, timeout=120, cwd=REPO, env=subprocess_env())
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet", "out", "out.tar"]
