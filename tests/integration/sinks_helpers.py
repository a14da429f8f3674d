"""Helpers for the storage-sink tests (tests/integration/test_sinks.py).

- TcpProxy: a loopback TCP proxy in front of moto that a test can cut (the endpoint goes away:
  new connections are refused, open ones are reset) and restore on the same port.
- Readers that check what a bucket (or folder) holds: objects, shards read back member by member,
  the ledger, and leftovers of unfinished uploads.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shlex
import socket
import struct
import sys
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow.parquet as pq

from flowdc.ledger import LEDGER_DIR, Ledger
from flowdc.storage import TMP_MARK, Destination
from flowdc.writers.shardnames import ShardNames
from tests.cloud_servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

LOOPBACK = "127.0.0.1"


def s3_options(endpoint: str, secret: str = S3_SECRET_KEY, **config_kwargs: Any) -> dict[str, Any]:
    """fsspec storage_options for moto at `endpoint` (what --storage_options carries)."""
    options: dict[str, Any] = {"key": S3_ACCESS_KEY, "secret": secret,
                               "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION}}
    if config_kwargs:
        options["config_kwargs"] = config_kwargs
    return options


def gcs_options(endpoint: str) -> dict[str, Any]:
    """fsspec storage_options for the GCS emulator at `endpoint`."""
    return {"endpoint_url": endpoint, "token": "anon"}


# -- a proxy that can be cut ---------------------------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:port to `upstream`. cut() makes the endpoint go away (refused and reset
    connections), restore() brings it back on the same port, and break_requests() breaks the
    connection of chosen requests only."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.broken_requests = 0
        self._trap: tuple[bytes, bool] | None = None
        self._disarm_on: bytes | None = None
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> TcpProxy:
        """Listen (again) on the same port; the first start takes a free port below the ephemeral
        range, so that no outgoing connection takes it while the proxy is cut."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.port:
            listener.bind((LOOPBACK, self.port))
        else:
            _bind_free_port(listener, 20000, 29999)
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, listener)
        return self

    def cut(self) -> None:
        """Stop listening and reset every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            _reset(conn)

    def restore(self) -> None:
        self.start()

    def break_requests(self, request_line: bytes, *, after_server: bool, until: bytes | None = None) -> None:
        """From now on, reset the connection of every request whose request line starts with
        `request_line` (e.g. b"PUT /bucket/key"): before the server sees it, or after the server
        handled it (its response is dropped, so the client cannot tell the write happened).
        With `until`, the first request that holds it passes and ends the breaking."""
        self._trap, self._disarm_on = (request_line, after_server), until

    def stop(self) -> None:
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-proxy")
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _reset(client)
                    _reset(server)
                    return
                self._open |= {client, server}
            state = {"drop_response": False}
            self._spawn(self._pump, client, server, state, True)
            self._spawn(self._pump, server, client, state, False)

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict[str, bool], upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                trap = self._trap
                if upstream and trap is not None and self._disarm_on is not None and self._disarm_on in data:
                    self._trap = trap = None
                if upstream and trap is not None and trap[0] in data:
                    self.broken_requests += 1
                    if not trap[1]:
                        raise OSError("request broken before the server")
                    state["drop_response"] = True
                elif not upstream and state["drop_response"]:
                    raise OSError("response dropped after the server")
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(src)
            _reset(dst)


def _bind_free_port(sock: socket.socket, low: int, high: int) -> None:
    for port in random.sample(range(low, high + 1), 200):
        try:
            sock.bind((LOOPBACK, port))
            return
        except OSError:
            continue
    raise RuntimeError(f"no free port on {LOOPBACK} in {low}-{high}")


def _reset(sock: socket.socket) -> None:
    """Drop a connection at once: shutdown wakes the pump blocked on it (close alone would not),
    and linger 0 makes the close a reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# -- what an output holds -----------------------------------------------------------------------
def all_files(dest: Destination) -> list[str]:
    """Every object (or file) under the destination, relative to its root."""
    dest.fs.invalidate_cache()
    root = dest.root.rstrip("/") + "/"
    return sorted(str(p)[len(root):] for p in dest.fs.find(dest.root))


def partial_names(files: list[str]) -> list[str]:
    """Names that only an unfinished write leaves: flowdc temporaries and the stand-ins' parts."""
    return [f for f in files if TMP_MARK in f or f.endswith((".part", ".partial", ".standin-part"))]


def open_multipart_uploads(fs: Any, bucket: str) -> list[dict[str, Any]]:
    """S3 multipart uploads begun and never completed or aborted in `bucket` (s3fs)."""
    answer = fs.call_s3("list_multipart_uploads", Bucket=bucket)
    return list(answer.get("Uploads", []))


def ledger_latest(dest: Destination) -> list[dict[str, Any]]:
    """Each row's current ledger record, sorted by row."""
    return sorted(Ledger(dest).latest().to_pylist(), key=lambda r: r["row"])


def ledger_records(dest: Destination) -> list[dict[str, Any]]:
    """Every ledger record ever written (all parts, all runs)."""
    return Ledger(dest).read().to_pylist()


def shard_members(dest: Destination) -> dict[str, list[tuple[str, bytes]]]:
    """shard tar name -> its members (name, bytes), each tar read whole with the tarfile module."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for name in all_files(dest):
        if "/" in name or not name.endswith(".tar"):
            continue
        data = dest.read_bytes(name)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = []
            for info in tar:
                fh = tar.extractfile(info)
                assert fh is not None, f"{name}: {info.name} is not a file"
                members.append((info.name, fh.read()))
        out[name] = members
    return out


def samples_in_shards(dest: Destination) -> Counter[str]:
    """Sample key -> how many times its image appears over all shards (1 each when nothing is doubled)."""
    counts: Counter[str] = Counter()
    for members in shard_members(dest).values():
        for member, _data in members:
            key, _, ext = member.rpartition(".")
            if ext != "json":
                counts[key] += 1
    return counts


def committed_shard_files(dest: Destination) -> list[str]:
    """The shard files (tar, parquet and stats) whose ledger part exists."""
    parts = [n for n in dest.list(LEDGER_DIR) if n.startswith("shard-") and n.endswith(".parquet")]  # not .started
    return sorted(name for p in parts for name in ShardNames().files(int(p[6:12])))


def shard_file_names(shards: int) -> list[str]:
    """Every file of shards 0 .. shards-1, sorted."""
    return sorted(name for i in range(shards) for name in ShardNames().files(i))


def shard_metadata_rows(dest: Destination) -> int:
    """Stored samples' rows over every shard's metadata parquet (failed rows are listed there too)."""
    total = 0
    for name in all_files(dest):
        if "/" not in name and name.endswith(".parquet"):
            with dest.fs.open(dest.path(name), "rb") as fh:
                total += pq.read_table(fh, columns=["status"]).column("status").to_pylist().count("success")
    return total


def webdataset_samples(urls: list[str]) -> list[dict[str, Any]]:
    """Every sample webdataset.WebDataset yields from `urls`, in shard order."""
    import webdataset as wds

    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


# The reader a `pipe:` URL runs: stream one object from moto to stdout with s3fs.
_S3CAT = ("import shutil, sys, s3fs; "
          "fs = s3fs.S3FileSystem(key=sys.argv[1], secret=sys.argv[2], "
          "client_kwargs={'endpoint_url': sys.argv[3], 'region_name': sys.argv[4]}); "
          "shutil.copyfileobj(fs.open(sys.argv[5], 'rb'), sys.stdout.buffer, 1 << 20)")


def s3_pipe_url(endpoint: str, path: str) -> str:
    """A webdataset `pipe:` URL that streams s3://`path` from moto through s3fs."""
    argv = [sys.executable, "-c", _S3CAT, S3_ACCESS_KEY, S3_SECRET_KEY, endpoint, S3_REGION, path]
    return "pipe:" + shlex.join(argv)


def overview(dest: Destination) -> dict[str, Any]:
    """The output's overview.json."""
    return json.loads(dest.read_bytes("overview.json"))


def iter_bytes_of(dest: Destination, extra_files: Sequence[str] = ()) -> Iterator[tuple[str, bytes]]:
    """(name, content) of every object under the destination, then of each extra local file.
    A parquet file comes twice: as stored, and decoded to JSON text, since its pages are
    compressed and a string inside them need not appear in the raw bytes."""
    for name in all_files(dest):
        data = dest.read_bytes(name)
        yield dest.url(name), data
        if name.endswith(".parquet"):
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
            yield dest.url(name) + " (decoded)", json.dumps(rows, default=str).encode()
    for path in extra_files:
        with open(path, "rb") as fh:
            yield path, fh.read()
