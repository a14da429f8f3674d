"""Which manifest rows a collect-dataset run fetches (flowdc.refresh._select), compared with the
dataset's index and the plans of earlier runs."""

from __future__ import annotations

import numpy as np
import polars as pl

from flowdc.refresh import _select


def index(rows: list[tuple[int, int, str, bool]]) -> pl.DataFrame:
    """(ident, row, status, retryable) entries, none removed."""
    return pl.DataFrame([(*r, False) for r in rows], orient="row", schema={
        "ident": pl.Int64, "row": pl.Int64, "status": pl.String, "retryable": pl.Boolean, "removed": pl.Boolean})


def test_rows_an_earlier_run_planned_but_never_recorded_keep_their_row_numbers() -> None:
    current = np.array([10, 11, 12, 13, 14, 15], np.int64)
    done = index([(10, 0, "ok", False), (11, 1, "failed", True), (12, 2, "failed", False), (99, 3, "ok", False)])
    planned = pl.DataFrame({"ident": [10, 11, 13, 14], "row": [0, 1, 7, 8]})  # 13 and 14: planned, never recorded
    chosen = _select(current, done, planned)
    fetched = dict(zip(current[chosen.fetch].tolist(), chosen.rows.tolist(), strict=True))
    # 11 failed retryably (its old row), 13 and 14 as planned; 15 is new, numbered after every row planned.
    assert fetched == {11: 1, 13: 7, 14: 8, 15: 9}
    assert (chosen.new, chosen.retry, chosen.removed, chosen.first_new) == (1, 3, 1, 9)


def test_a_first_run_numbers_every_row_from_zero() -> None:
    current = np.array([5, 3, 8], np.int64)
    chosen = _select(current, None, None)
    assert chosen.fetch.all() and chosen.rows.tolist() == [0, 1, 2] and (chosen.new, chosen.retry) == (3, 0)


def test_a_stopped_first_run_is_taken_up_from_its_plan_alone() -> None:
    """Nothing recorded yet (the first run stopped before any ledger was written): its plan's rows
    keep their numbers, and a row added since comes after them."""
    current = np.array([1, 2, 3, 4], np.int64)
    planned = pl.DataFrame({"ident": [1, 2, 3], "row": [0, 1, 2]})
    chosen = _select(current, index([]), planned)
    assert chosen.rows.tolist() == [0, 1, 2, 3] and (chosen.new, chosen.retry) == (1, 3)
