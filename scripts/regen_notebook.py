"""Execute examples/quickstart.ipynb in a scratch folder and store it with its outputs (images and plots).

Run from the repository root with the project's venv: `.venv/bin/python scripts/regen_notebook.py`.
Volatile metadata (timings, widget state, kernel versions) is stripped so a rerun gives a small diff.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat

from flowdc.testing.notebook import run_notebook, strip_volatile

NOTEBOOKS = [Path("examples/quickstart.ipynb")]


def main() -> int:
    for path in NOTEBOOKS:
        with tempfile.TemporaryDirectory(prefix="flowdc-regen-") as workdir:
            nb = strip_volatile(run_notebook(path, workdir))
        nbformat.write(nb, str(path))
        print(f"{path}: {path.stat().st_size // 1024} KiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
