"""Start-up trims for a process that runs one flowdc command and exits; never for the library call.

pyarrow, when pandas is installed, imports it the first time it converts Python objects, only to
recognise pandas inputs: 0.2 s of a download's start-up, all of it holding the GIL. No flowdc
command hands pyarrow a pandas object (flowdc has no pandas dependency; it comes with Prefect),
so a command's own process runs as if pandas were not installed. A process that may use pandas
later (a notebook, a test calling `flowdc.cli.main`) is left alone: pyarrow would keep believing
pandas absent there.

A command's modules are also imported with the cyclic collector paused (`collections_paused`),
which is harmless in any process.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class PandasHeldBack(importlib.abc.MetaPathFinder):
    """Answers every import of pandas with ModuleNotFoundError, as if it were not installed."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"pandas is held back in a flowdc command's process ({__name__})", name=name)
        return None


def hold_back_pandas() -> None:
    """For the rest of this process; a no-op once pandas is imported (there is nothing left to save)."""
    if "pandas" in sys.modules or any(isinstance(f, PandasHeldBack) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PandasHeldBack())


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No cyclic collections inside: for importing a command's modules.

    Imports make tens of thousands of long-lived objects and next to no garbage, yet each 700 new
    ones start a collection: importing the download's modules ran 115 of them, 28-31 ms of a
    0.36-s import.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
