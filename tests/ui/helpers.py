"""Shared by the browser tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowdc.testing.browser import CHROMIUM

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"no Chromium at {CHROMIUM} (scripts/bootstrap.sh installs it as root)")
