"""The page runs a Prefect deployment through the server's REST API with plain HTTP (the UI never
imports Prefect; only this test does, for the session's real server)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flowdc.errors import UserError
from flowdc.ui.context import UiContext


def call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    """One API call; a 503 (the SQLite-backed test server is busy under load) is tried again."""
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    for wait_s in (0.5, 1.0, 2.0, 4.0, 0.0):
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or not wait_s:
                raise
            time.sleep(wait_s)


def test_the_page_runs_and_cancels_a_deployment(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    api = str(PREFECT_API_URL.value())
    # A deployment as `prefect deploy` registers one; creating a run of it needs no worker.
    flow = call("POST", f"{api}/flows/", {"name": "ui-check"})
    schema = {"type": "object", "properties": {"rows": {"type": "integer"}, "telemetry_push": {"type": "string"}}}
    call("POST", f"{api}/deployments/", {"name": "nightly", "flow_id": flow["id"], "parameter_openapi_schema": schema})
    call("POST", f"{api}/deployments/", {"name": "plain", "flow_id": flow["id"]})
    ctx = UiContext(workdir=tmp_path, prefect_api=api, push_url="http://127.0.0.1:8080")
    ctx.prefect.update(deployment="ui-check/nightly", parameters='{"rows": 5}')
    assert "created" in ctx.start_prefect()
    assert ctx.prefect_run is not None
    run = call("GET", f"{api}/flow_runs/{ctx.prefect_run['id']}")
    assert run["parameters"] == {"rows": 5, "telemetry_push": "http://127.0.0.1:8080"}
    assert ctx.status_text() == "prefect: SCHEDULED"
    assert "cancelling" in ctx.stop()
    state = call("GET", f"{api}/flow_runs/{ctx.prefect_run['id']}")["state"]["type"]
    assert state in ("CANCELLING", "CANCELLED")
    ctx.prefect.update(deployment="ui-check/plain")  # a flow without telemetry_push gets only what was given
    ctx.start_prefect()
    assert call("GET", f"{api}/flow_runs/{ctx.prefect_run['id']}")["parameters"] == {"rows": 5}
    ctx.prefect.update(deployment="ui-check/no-such")
    with pytest.raises(UserError, match="not found"):
        ctx.start_prefect()
    ctx.prefect.update(deployment="no-slash")
    with pytest.raises(UserError, match="flow-name/deployment-name"):
        ctx.start_prefect()
