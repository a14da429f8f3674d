"""The manager's telemetry collector: tasks POST their snapshots here, it merges them into one JSONL
file and keeps the latest state for the live view (and the UI, through `latest()`).

Push format (the telemetry contract): `POST /telemetry` with `Authorization: Bearer <token>` and a
body of JSON lines, one snapshot dict per line with "kind" "run" or "host" (no kind = host). The
token is made per run, so a stray or stale task cannot write into another run's telemetry. The
server listens on loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import socket
import threading
import time
from typing import IO, Any

from aiohttp import web

from flowdc.telemetry import source_label

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_HOSTS_KEPT = 10_000  # latest host lines kept in memory (the JSONL file has them all)
START_TIMEOUT_S = 10.0
FRESH_S = 15.0  # a partition's rates count in the totals while its latest run snapshot is this recent


class Collector:
    def __init__(self, jsonl_path: str, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.jsonl_path = jsonl_path
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, Any]] = {}  # source_label (run/partition) -> latest run snapshot
        self._hosts: dict[tuple[str, str], dict[str, Any]] = {}  # (source_label, host) -> latest host snapshot
        self.lines = 0
        self.rejected = 0
        self._file: IO[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Collector:
        os.makedirs(os.path.dirname(os.path.abspath(self.jsonl_path)), exist_ok=True)
        self._file = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flowdc-collector", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(START_TIMEOUT_S)
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/telemetry", self._post)
        app.router.add_get("/latest", self._get_latest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        """The address tasks push to; a wildcard bind is advertised under this machine's name."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(START_TIMEOUT_S)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(START_TIMEOUT_S)
                self._runner = None
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP -----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def _post(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.rejected += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "body too large"}, status=413)
        accepted = self.add_lines(body.decode("utf-8", "replace").splitlines())
        return web.json_response({"accepted": accepted}, status=202)

    async def _get_latest(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(self.latest())

    # -- merging --------------------------------------------------------------------------------
    def add_lines(self, lines: list[str]) -> int:
        """Keep and record the snapshot dicts among `lines`; anything else is skipped."""
        good: list[dict[str, Any]] = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                good.append(doc)
        if not good:
            return 0
        with self._lock:
            for doc in good:
                self._remember(doc)
            if self._file is not None:
                self._file.write("".join(json.dumps(doc, separators=(",", ":")) + "\n" for doc in good))
                self._file.flush()
            self.lines += len(good)
        return len(good)

    def _remember(self, doc: dict[str, Any]) -> None:
        part = source_label(doc)
        if doc.get("kind") == "run":
            doc.setdefault("received", time.time())
            self._runs[part] = doc
            return
        key = (part, str(doc.get("host", "")))
        self._hosts.pop(key, None)  # re-insert: the dict stays ordered oldest first
        self._hosts[key] = doc
        while len(self._hosts) > MAX_HOSTS_KEPT:
            self._hosts.pop(next(iter(self._hosts)))

    def latest(self) -> dict[str, Any]:
        """Latest run snapshot per partition, latest host snapshots, and totals over partitions."""
        with self._lock:
            runs = {k: dict(v) for k, v in self._runs.items()}
            hosts = [dict(v) for v in self._hosts.values()]
        now = time.time()
        totals: dict[str, float] = {"ok": 0, "failed": 0, "skipped": 0, "bytes": 0, "rate_per_s": 0.0,
                                    "mb_per_s": 0.0}
        for run in runs.values():
            for name in ("ok", "failed", "skipped", "bytes"):
                totals[name] += _number(run.get(name))
            if not run.get("done") and now - float(run.get("received", now)) < FRESH_S:
                totals["rate_per_s"] += _number(run.get("rate_per_s"))
                totals["mb_per_s"] += _number(run.get("mb_per_s"))
        return {"partitions": runs, "hosts": hosts, "totals": totals, "lines": self.lines}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
