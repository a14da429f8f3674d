"""One small object written with preconditions: the primitive a lease needs on an object store.

An `ObjectSlot` reads an object with a version, creates it only if absent, and replaces or
deletes it only if it still has the version read. Where the store enforces the condition the
operation is atomic:
  S3   PutObject with If-None-Match: * (create) and If-Match: ETAG (replace, delete)
  GCS  ifGenerationMatch=0 (create) and ifGenerationMatch=GENERATION (replace, delete)
Some servers accept these and ignore them (the GCS emulator does; older S3-compatible stores
may). `slot_for` asks the store once: it creates a probe object that already exists; a store
that lets that through gets the `PlainSlot` fallback, which checks, writes and reads back, and
is only as safe as the pause between its write and its read-back (docs/safety.md says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fsspec.asyn import sync

from flowdc.storage import Destination

log = logging.getLogger(__name__)
PROBE = "_flowdc/.condition-probe"
SETTLE_S = 1.0  # PlainSlot: how long a write is left to settle before it is read back


class Conflict(Exception):
    """The object was not in the state the operation required (someone else changed it)."""


@dataclass(frozen=True)
class Versioned:
    data: bytes
    version: str


class ObjectSlot:
    """A small object at `rel` under a destination, changed only under a condition."""

    atomic = True  # whether the store itself enforces the conditions
    kind = "conditional"

    def __init__(self, dest: Destination, rel: str):
        self.dest = dest
        self.path = dest.path(rel)

    def read(self) -> Versioned | None:
        raise NotImplementedError

    def create(self, data: bytes) -> str:
        """Write `data` if no object is there; returns its version, raises Conflict otherwise."""
        raise NotImplementedError

    def replace(self, data: bytes, version: str) -> str:
        """Write `data` if the object still has `version`; returns the new version."""
        raise NotImplementedError

    def delete(self, version: str) -> None:
        """Remove the object if it still has `version` (a missing object is fine)."""
        raise NotImplementedError


def _precondition_failed(exc: BaseException) -> bool:
    """s3fs and gcsfs turn HTTP 412 into FileExistsError, or into an OSError caused by the
    botocore error; 409 ConditionalRequestConflict is S3's answer to a race between conditions."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3Slot(ObjectSlot):
    kind = "s3 If-None-Match / If-Match"

    def __init__(self, dest: Destination, rel: str):
        super().__init__(dest, rel)
        self.bucket, _, self.key = self.path.partition("/")

    def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            return self.dest.fs.call_s3(op, Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:
            if _precondition_failed(exc):
                raise Conflict(str(exc)) from None
            raise

    def read(self) -> Versioned | None:
        fs = self.dest.fs

        async def get() -> Versioned:
            resp = await fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return Versioned(await resp["Body"].read(), resp["ETag"])
            finally:
                resp["Body"].close()

        try:
            return sync(fs.loop, get)
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> str:
        return str(self._call("put_object", Body=data, IfNoneMatch="*")["ETag"])

    def replace(self, data: bytes, version: str) -> str:
        return str(self._call("put_object", Body=data, IfMatch=version)["ETag"])

    def delete(self, version: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete_object", IfMatch=version)


class GcsSlot(ObjectSlot):
    kind = "gcs ifGenerationMatch"

    def __init__(self, dest: Destination, rel: str):
        super().__init__(dest, rel)
        self.bucket, _, self.key = self.path.partition("/")

    def _call(self, method: str, path: str, *args: str, **kwargs: Any) -> Any:
        try:
            return self.dest.fs.call(method, path, *args, **kwargs)
        except FileExistsError as exc:
            raise Conflict(str(exc)) from None

    def read(self) -> Versioned | None:
        try:
            meta = self._call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
            _headers, data = self._call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media",
                                        generation=meta["generation"])
        except FileNotFoundError:
            return None  # absent, or replaced between the two calls: the caller reads again
        return Versioned(bytes(data), str(meta["generation"]))

    def _upload(self, data: bytes, generation: str) -> str:
        url = f"{self.dest.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o"
        meta = self._call("POST", url, uploadType="media", name=self.key, ifGenerationMatch=generation,
                          data=data, headers={"Content-Type": "application/octet-stream"}, json_out=True)
        self.dest.fs.invalidate_cache(self.path)
        return str(meta["generation"])

    def create(self, data: bytes) -> str:
        return self._upload(data, "0")

    def replace(self, data: bytes, version: str) -> str:
        return self._upload(data, version)

    def delete(self, version: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=version)
        self.dest.fs.invalidate_cache(self.path)


class PlainSlot(ObjectSlot):
    """For stores without enforced conditions: check, write, pause, read back.

    Two runs that both find the object absent both write; the one whose write lands last keeps
    it, and the other sees a stranger's bytes when it reads back after SETTLE_S and backs off.
    Only a run whose write takes longer than SETTLE_S to show can slip through.
    """

    atomic = False
    kind = "none (check, write, read back)"

    def read(self) -> Versioned | None:
        fs = self.dest.fs
        fs.invalidate_cache(posixpath.dirname(self.path))
        try:
            data = bytes(fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        return Versioned(data, _digest(data))

    def _write_checked(self, data: bytes) -> str:
        self.dest.fs.pipe_file(self.path, data)
        time.sleep(SETTLE_S)
        now = self.read()
        if now is None or now.data != data:
            raise Conflict("another writer wrote the same object")
        return now.version

    def create(self, data: bytes) -> str:
        if self.read() is not None:
            raise Conflict("exists")
        return self._write_checked(data)

    def replace(self, data: bytes, version: str) -> str:
        now = self.read()
        if now is None or now.version != version:
            raise Conflict("changed")
        self.dest.fs.pipe_file(self.path, data)
        return _digest(data)  # a heartbeat: no pause, the read-back of the next one tells

    def delete(self, version: str) -> None:
        now = self.read()
        if now is not None and now.version == version:
            with contextlib.suppress(FileNotFoundError):
                self.dest.fs.rm_file(self.path)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slot_for(dest: Destination, rel: str) -> ObjectSlot:
    """The most atomic slot this store really supports (asked once per destination)."""
    name = type(dest.fs).__name__
    candidate: type[ObjectSlot] | None = None
    if hasattr(dest.fs, "call_s3"):
        candidate = S3Slot
    elif name.startswith(("GCSFileSystem", "ExtendedGcsFileSystem")):
        candidate = GcsSlot
    # A probe of this run's own: two runs starting at once must not delete each other's probe.
    probe = f"{PROBE}-{os.getpid()}-{os.urandom(4).hex()}"
    if candidate is not None and _enforces_conditions(candidate(dest, probe)):
        return candidate(dest, rel)
    if candidate is not None:
        log.info("%s ignores conditional writes; leases fall back to check-write-read-back", dest.display)
    return PlainSlot(dest, rel)


def _enforces_conditions(probe: ObjectSlot) -> bool:
    """Create-if-absent on an object that exists must be refused; a store that lets it through
    ignores the condition."""
    fs = probe.dest.fs
    fs.pipe_file(probe.path, b"probe")
    try:
        probe.create(b"probe")
    except Conflict:
        return True
    except Exception as exc:  # e.g. botocore too old for the parameter, or the store rejects it
        log.info("conditional write refused by %s: %s", probe.dest.display, exc)
        return False
    finally:
        with contextlib.suppress(Exception):
            fs.rm_file(probe.path)
    return False
