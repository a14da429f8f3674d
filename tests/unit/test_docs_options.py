"""The configuration reference names every option `flowdc download` takes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from flowdc.config import DownloadConfig

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_download_option_has_a_row_in_the_configuration_reference() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split("## `flowdc download`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", section, flags=re.MULTILINE))
    options = {f.name for f in dataclasses.fields(DownloadConfig)}
    assert len(documented) > 40  # the control: the table is read right
    assert not options - documented, f"options without a row in {REFERENCE.name}: {sorted(options - documented)}"
    assert not documented - options, f"rows for options that do not exist: {sorted(documented - options)}"
