"""Telemetry sinks: JSON lines on any fsspec URL, and an HTTP push to a collector.

Each runs on a thread of its own (see telemetry._Lane), so a slow disk, store or collector costs
the download nothing. Writing telemetry never stops a download: a sink that fails drops its batch.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, Any

from flowdc.errors import ConfigError
from flowdc.telemetry import Sink, Snapshot

TOKEN_ENV = "FLOWDC_TELEMETRY_TOKEN"
PART_EVERY_S = 10.0  # a store that cannot append gets a new part this often (and at the end)
PART_MAX_LINES = 50_000  # ... or after this many lines, whichever comes first
PUSH_TIMEOUT_S = 2.0  # a collector slower than this loses the batch; the lane's queue bounds the rest


def lines_of(batch: Sequence[Snapshot]) -> str:
    return "".join(json.dumps(snap.to_dict(), separators=(",", ":")) + "\n" for snap in batch)


def jsonl_sink(url: str, storage_options: Mapping[str, Any] | None = None) -> Sink:
    """A file appended to where the filesystem can append (local paths), else a folder of parts."""
    if "://" not in url or url.startswith("file://"):
        return AppendedJsonl(url.removeprefix("file://"))
    return JsonlParts(url, storage_options)


class AppendedJsonl:
    """One local JSONL file, appended to (an earlier run's lines stay)."""

    def __init__(self, path: str) -> None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:  # a user error (bad --telemetry path), not a crash
            raise ConfigError(f"cannot write the telemetry file {path}: {exc.strerror or exc}") from None

    def write(self, batch: Sequence[Snapshot]) -> None:
        if self._file is not None:
            self._file.write(lines_of(batch))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class JsonlParts:
    """JSON lines under URL/ as whole objects, part-<started>-<writer>-<seq>.jsonl, for object stores
    (S3, GCS) that cannot append: a new part every PART_EVERY_S or PART_MAX_LINES, and at close.
    Parts sort by name in the order they were written; `flowdc report URL` reads them all."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from fsspec.core import url_to_fs

        try:
            self.fs, root = url_to_fs(url, **dict(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot write telemetry to {url}: {exc}") from None
        self.url = url.rstrip("/")
        self.root = root.rstrip("/")
        self._prefix = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._lines: list[str] = []
        self._count = 0
        self._since = time.monotonic()

    def write(self, batch: Sequence[Snapshot]) -> None:
        self._lines.append(lines_of(batch))
        self._count += len(batch)
        if self._count >= PART_MAX_LINES or time.monotonic() - self._since >= PART_EVERY_S:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            data = "".join(self._lines).encode()
            self._lines, self._count = [], 0
            self.fs.pipe_file(f"{self.root}/{self._prefix}-{self._seq:05d}.jsonl", data)
            self._seq += 1
        self._since = time.monotonic()

    def close(self) -> None:
        self._flush()


class HttpPushSink:
    """POST {collector}/telemetry with JSON lines (application/x-ndjson), Bearer token from
    FLOWDC_TELEMETRY_TOKEN. A 2xx is accepted; anything else, or no answer, drops the batch."""

    def __init__(self, collector_url: str, token: str | None = None, timeout_s: float = PUSH_TIMEOUT_S) -> None:
        if not collector_url.startswith(("http://", "https://")):
            raise ConfigError(f"telemetry_push must be an http(s) URL, got {collector_url!r}")
        base = collector_url.rstrip("/")
        # The collector's base URL; a URL that already names the route is taken as it is.
        self.endpoint = base if base.endswith("/telemetry") else base + "/telemetry"
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout_s = timeout_s
        self.sent = 0  # snapshots the collector accepted
        self.lost = 0  # snapshots dropped: refused, failed or unreachable
        # The collector is ours (on the cluster's manager): reach it directly, not through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def write(self, batch: Sequence[Snapshot]) -> None:
        headers = {"Content-Type": "application/x-ndjson"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.endpoint, data=lines_of(batch).encode(), headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:
                ok = 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError):  # HTTPError (non-2xx) is a URLError too
            ok = False
        if ok:
            self.sent += len(batch)
        else:
            self.lost += len(batch)

    def close(self) -> None:
        return None
