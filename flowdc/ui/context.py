"""The UI server's state, shared by every open page: the live telemetry, the forms and the run.

No NiceGUI here, so the logic is testable without a page and `flowdc ui` can check its options
before the web server starts.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any

from flowdc import config as config_module
from flowdc.errors import UserError
from flowdc.ui.form import ConfigForm
from flowdc.ui.live import LiveState
from flowdc.ui.prefect_api import PrefectApi
from flowdc.ui.runs import LocalRun, RunStatus, start_run


def run_kinds() -> dict[str, type]:
    """The run kinds this install has: download always, distribute once its config exists."""
    kinds: dict[str, type] = {"download": config_module.DownloadConfig}
    distribute = getattr(config_module, "DistributeConfig", None)
    if distribute is not None:
        kinds["distribute"] = distribute
    return kinds


@dataclasses.dataclass
class UiContext:
    workdir: Path  # task configs and telemetry files of the runs started here
    live: LiveState = dataclasses.field(default_factory=LiveState)
    push_token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(24))
    push_url: str = ""  # this server as a telemetry collector (senders POST to push_url + /telemetry)
    prefect_api: str | None = None
    kind: str = "download"
    config_path: str = "flowdc-config.json"
    external: RunStatus | None = None  # a run this server did not start (the demo's): its status
    forms: dict[str, ConfigForm] = dataclasses.field(default_factory=dict)
    prefect: dict[str, str] = dataclasses.field(default_factory=lambda: {"deployment": "", "parameters": "{}"})
    run: LocalRun | None = None
    prefect_run: dict[str, Any] | None = None
    last: str = ""  # "local" or "prefect": which run the status line is about

    def __post_init__(self) -> None:
        if not self.forms:
            self.forms = {kind: ConfigForm(cls) for kind, cls in run_kinds().items()}

    # -- runs -----------------------------------------------------------------------------------
    def start(self, kind: str, cfg: Any) -> str:
        if self.busy():
            raise UserError("a run is going on; stop it first (or wait for it to end)")
        if kind not in self.forms:
            raise UserError(f"no {kind} runs in this version")
        self.run = start_run(kind, cfg, self.live, self.workdir, env=self._child_env())
        self.last = "local"
        return f"{kind} started (pid {self.run.proc.pid})"

    def stop(self) -> str:
        if self.last == "local" and self.run is not None and self.run.running:
            self.run.stop()
            return "stopping: the run keeps what it stored; start it again to resume"
        if self.last == "prefect" and self.prefect_run is not None and self.prefect_api:
            PrefectApi(self.prefect_api).cancel(self.prefect_run["id"])
            return f"cancelling flow run {self.prefect_run.get('name', self.prefect_run['id'])}"
        raise UserError("no run to stop")

    def start_prefect(self) -> str:
        if not self.prefect_api:
            raise UserError("no Prefect API configured (flowdc ui --prefect_api URL)")
        params = PrefectApi.parse_parameters(self.prefect["parameters"])
        self.live.reset()  # a flow that takes telemetry_push streams its hosts to this page
        self.prefect_run = PrefectApi(self.prefect_api).run_deployment(self.prefect["deployment"], params,
                                                                       push_url=self.push_url or None)
        self.last = "prefect"
        return f"flow run {self.prefect_run.get('name', '')} created ({self.prefect_run['id']})"

    def busy(self) -> bool:
        return (self.run is not None and self.run.running) or (self.external is not None
                                                               and self.external.state == "running")

    def status_text(self) -> str:
        if self.last == "prefect" and self.prefect_run is not None:
            return f"prefect: {self.prefect_state()}"
        st = self.run.status if self.run is not None else self.external
        if st is None:
            return "no run yet"
        text = f"{st.kind}: {st.state}"
        return f"{text} ({st.detail})" if st.detail and st.state != "running" else text

    def prefect_state(self) -> str:
        assert self.prefect_run is not None and self.prefect_api
        now = time.monotonic()
        if now - self.prefect_run.get("checked", 0) > 2:  # at most one REST call per two seconds
            self.prefect_run["checked"] = now
            try:
                self.prefect_run["state"] = PrefectApi(self.prefect_api).flow_run_state(self.prefect_run["id"])
            except UserError as exc:
                self.prefect_run["state"] = f"unknown ({exc})"
        return str(self.prefect_run.get("state", "SCHEDULED"))

    def _child_env(self) -> dict[str, str]:
        return {"FLOWDC_TELEMETRY_TOKEN": self.push_token}  # what this page accepts, should a child push here
