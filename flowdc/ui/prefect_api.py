"""Run a Prefect deployment through the Prefect server's REST API, with plain HTTP.

Nothing here imports Prefect: the page talks to the server the way any HTTP client can, so the UI
works against a Prefect server whatever Python (or none) the flows run under.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from flowdc.errors import UserError

TIMEOUT_S = 10.0
# A Prefect server on SQLite answers 503 while its database is busy (the write was rolled back), so
# a busy answer is tried again after a short wait instead of failing the user's click.
BUSY_STATUSES = frozenset({502, 503, 504})
BUSY_WAITS_S = (0.5, 1.0, 2.0, 4.0)


class PrefectApi:
    def __init__(self, api_url: str):
        self.api = api_url.rstrip("/")  # e.g. http://127.0.0.1:4200/api

    @staticmethod
    def parse_parameters(text: str) -> dict[str, Any]:
        try:
            params = json.loads(text or "{}")
        except ValueError as exc:
            raise UserError(f"parameters: not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise UserError("parameters: expected a JSON object")
        return params

    def run_deployment(self, name: str, parameters: dict[str, Any], push_url: str | None = None) -> dict[str, Any]:
        """Create a flow run of deployment 'flow-name/deployment-name'; returns {id, name}. A flow
        that declares a telemetry_push parameter is given push_url (unless the user set one)."""
        flow, sep, deployment = name.strip().partition("/")
        if not sep or not flow or not deployment:
            raise UserError(f"deployment: expected flow-name/deployment-name, got {name!r}")
        dep = self._call("GET", f"/deployments/name/{_q(flow)}/{_q(deployment)}")
        declared = (dep.get("parameter_openapi_schema") or {}).get("properties") or {}
        if push_url and "telemetry_push" in declared:
            parameters = {"telemetry_push": push_url, **parameters}
        run = self._call("POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})
        return {"id": run["id"], "name": run.get("name", "")}

    def flow_run_state(self, run_id: str) -> str:
        run = self._call("GET", f"/flow_runs/{_q(run_id)}")
        state = run.get("state") or {}
        return str(state.get("type") or run.get("state_type") or "UNKNOWN")

    def cancel(self, run_id: str) -> None:
        self._call("POST", f"/flow_runs/{_q(run_id)}/set_state", {"state": {"type": "CANCELLING"}, "force": True})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        for wait_s in BUSY_WAITS_S:
            try:
                return self._call_once(method, path, body)
            except _Busy:
                time.sleep(wait_s)
        try:
            return self._call_once(method, path, body)
        except _Busy as busy:
            raise busy.error from None

    def _call_once(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            what = "not found" if exc.code == 404 else f"HTTP {exc.code}"
            error = UserError(f"Prefect API {method} {path}: {what} {detail}".strip())
            if exc.code in BUSY_STATUSES:
                raise _Busy(error) from None
            raise error from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UserError(f"Prefect API at {self.api} not reachable: {exc}") from None


class _Busy(Exception):
    """The server answered that it is busy; `error` is what the user sees if it stays busy."""

    def __init__(self, error: UserError):
        super().__init__(str(error))
        self.error = error


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
