"""examples/quickstart.ipynb runs top to bottom (nbclient, a kernel from this venv) on a copy, against
the sample hosts on free ports; any failing cell fails the test. The committed copy holds its outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from flowdc.testing.notebook import WIDGET_VIEW, run_notebook

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_quickstart_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "quickstart.ipynb"
    shutil.copy(NOTEBOOK, copy)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel inherits it: the notebook's scratch stays here
    nb = run_notebook(copy, tmp_path, timeout_s=180)
    text = _text(nb)
    assert "ok=600 failed=0" in text and "600 samples (the download stored 600)" in text, text[-2000:]
    assert _images(nb) == 2  # the sample images and the limit plot
    assert nbformat.read(str(NOTEBOOK), as_version=4).cells[2].source == nb.cells[2].source  # the copy ran, untouched


def test_committed_notebook_holds_outputs_and_no_volatile_metadata() -> None:
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "run scripts/regen_notebook.py and commit the result"
    assert _images(nb) == 2 and "600 samples" in _text(nb)
    assert "widgets" not in nb.metadata and all("execution" not in c.metadata for c in code)
    assert WIDGET_VIEW not in str(nb) and NOTEBOOK.stat().st_size < 200_000
