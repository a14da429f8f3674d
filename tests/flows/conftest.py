"""Prefect for the flow tests: one temporary Prefect home and one test harness (a real, temporary
Prefect server with SQLite) for the whole session; nothing is sent off this machine."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.integration.conftest import farm_factory  # noqa: F401  (the fake hosts' fixture)

# Before Prefect is imported anywhere: no analytics, no telemetry, a home of its own.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="flowdc-prefect-home-"))
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
