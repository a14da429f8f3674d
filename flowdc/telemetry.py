"""Per-host snapshots, fanned out to in-process subscribers (the UI) and an optional JSONL file."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import IO, Any

from flowdc.errors import ConfigError

Snapshot = dict[str, dict[str, Any]]  # host -> flat figures
Subscriber = Callable[[float, Snapshot], None]


class Telemetry:
    def __init__(self, path: str | None = None):
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:  # a user error (bad --telemetry path), not a crash
                raise ConfigError(f"cannot write the telemetry file {path}: {exc.strerror or exc}") from None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)
        return lambda: self._unsubscribe(callback)

    def _unsubscribe(self, callback: Subscriber) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def publish(self, t: float, snapshot: Snapshot) -> None:
        if not snapshot:
            return
        if self._file is not None:
            lines = (json.dumps({"t": round(t, 3), "host": host, **figures}) for host, figures in snapshot.items())
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(t, snapshot)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
