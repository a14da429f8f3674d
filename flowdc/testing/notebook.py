"""Execute a Jupyter notebook top to bottom with a kernel from this Python's environment.

Used by the test that runs examples/quickstart.ipynb and by scripts/regen_notebook.py, which stores
the executed notebook with its outputs. nbclient/nbformat/ipykernel come with the dev extra.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import Any

VOLATILE_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")  # per-cell timing and UI state


def run_notebook(path: str | Path, workdir: str | Path, timeout_s: float = 240.0) -> Any:
    """Execute the notebook at `path` in `workdir` (its working directory) and return the executed
    nbformat.NotebookNode; a failing cell raises nbclient's CellExecutionError with its traceback.

    The kernel is ipykernel's own spec ("python3"), which starts sys.executable: this environment's Python.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=int(timeout_s), kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(workdir)}}, allow_errors=False)
    client.km = client.create_kernel_manager()
    client.km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client.execute()
    return nb


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_SPACES = str.maketrans({"\xa0": " ", "\u2007": " "})  # tqdm's HTML keeps its columns with these


def strip_volatile(nb: Any) -> Any:
    """Drop what changes on every run and means nothing to a reader: timings, widget state, kernel versions.

    A widget (tqdm.auto's bar) cannot render from a stored file without its state, so its output becomes
    the widget's last text ("download: 100%|...| 600/600 ..."), read from the state before it is dropped.
    """
    states = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in nb.cells:
        for key in VOLATILE_METADATA:
            cell.metadata.pop(key, None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
            view = output.get("data", {}).pop(WIDGET_VIEW, None)
            if view is not None:
                output["data"]["text/plain"] = _widget_text(states, view.get("model_id", "")) or output["data"].get(
                    "text/plain", "")
    return nb


def _widget_text(states: dict[str, Any], model_id: str) -> str:
    """The text parts of a widget and its children (tqdm's bar: description, bar, figures), as shown last."""
    state = states.get(model_id, {}).get("state", {})
    if state.get("_model_name") == "FloatProgressModel":
        top = state.get("max") or 0
        filled = round(10 * min((state.get("value") or 0) / top, 1)) if top else 0
        return f"|{'█' * filled}{' ' * (10 - filled)}|"
    if "children" in state:
        parts = (_widget_text(states, child.removeprefix("IPY_MODEL_")) for child in state["children"])
        return " ".join(p for p in parts if p)
    return html.unescape(str(state.get("value") or "")).translate(_SPACES).strip()
