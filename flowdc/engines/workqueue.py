"""Work Queue (Debian's coop-computing-tools and python3-workqueue): workers join with
`work_queue_worker HOST PORT`."""

from __future__ import annotations

from typing import Any, ClassVar

from flowdc.engines.cctools import CctoolsEngine, import_binding
from flowdc.errors import ConfigError


class WorkQueueEngine(CctoolsEngine):
    name = "workqueue"
    setters: ClassVar[dict[str, str]] = {
        "cores": "specify_cores", "memory": "specify_memory", "disk": "specify_disk",
        "retries": "specify_max_retries",
        "env": "specify_environment_variable"}

    def __init__(self, port: int = 0, run_dir: str = "") -> None:
        super().__init__(port, run_dir)
        self.wq = import_binding("work_queue", self.name, "run scripts/bootstrap.sh (apt python3-workqueue, "
                                 "linked into the venv)")

    def _new_manager(self, port: int) -> Any:
        try:
            return self.wq.WorkQueue(port=port)
        except Exception as exc:  # the binding wraps every failure; a taken port is the usual one
            raise ConfigError(f"cannot start the Work Queue manager on port {port}: {exc}") from None

    def _new_task(self, command: str) -> Any:
        return self.wq.Task(command)

    def _add_input(self, task: Any, local: str, remote: str) -> None:
        task.specify_input_file(local, remote, cache=False)

    def _add_output(self, task: Any, local: str, remote: str) -> None:
        task.specify_output_file(local, remote, cache=False)

    def _outcome(self, task: Any) -> tuple[bool, int | None, str]:
        # `result` says whether the command ran; its exit code is in return_status.
        if task.result == self.wq.WORK_QUEUE_RESULT_SUCCESS:
            return True, int(task.return_status), ""
        return False, None, str(task.result_str).lower().replace("_", " ")
