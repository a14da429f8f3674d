"""Shared by the browser tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowdc.testing.browser import CHROMIUM

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"no Chromium at {CHROMIUM} (scripts/bootstrap.sh installs it as root)")


def host_rows(page: Any) -> dict[str, dict[str, str]]:
    """The per-host table as the browser shows it: host ip -> column heading -> cell text."""
    heads = [h.strip().replace("arrow_upward", "").strip()
             for h in page.locator(".flowdc-hosts thead th").all_inner_texts()]
    rows = {}
    for cells in page.locator(".flowdc-hosts tbody tr").evaluate_all(
            "rows => rows.map(r => Array.from(r.querySelectorAll('td')).map(td => td.innerText))"):
        row = dict(zip(heads, cells, strict=False))
        if row.get("host"):
            rows[row["host"].split(":")[0]] = row
    return rows


def chart_series(page: Any, css: str) -> dict[str, list[Any]]:
    return page.evaluate(
        """css => Object.fromEntries(getElement(document.querySelector('.' + css)).chart.getOption().series
               .map(s => [s.name, s.data]))""", css)
