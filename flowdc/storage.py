"""Where outputs go: a local folder or an fsspec URL (s3://, gs://, memory://, ...).

A local folder is read and written with os calls, and fsspec is imported only for a store (or for
an fsspec call a local destination has no os path for): importing it scans every installed
package's entry points, a tenth of a download's start-up in a well-stocked environment.

Every write is atomic as seen by readers: on a local disk a file is written under a hidden
temporary name and renamed; object stores only show an object once its upload completes, so
there the final name is written directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import shutil
from collections.abc import Iterator
from typing import IO, Any

import aiohttp

from flowdc.errors import FlowdcError
from flowdc.localfiles import TMP_MARK, link_or_replace, temporary_name, write_local
from flowdc.urls import redact_url

log = logging.getLogger(__name__)


def quiet_orphaned_connection_errors() -> None:
    """During a store outage, s3fs/gcsfs abandon in-flight writes; asyncio then prints each
    orphaned task's connection error with a traceback on stderr. The failure itself reaches us
    through the call that failed, so those reports only go to the debug log."""
    from fsspec.asyn import get_loop

    loop = get_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), OSError):
            log.debug("store connection error in an abandoned task: %s", context.get("exception"))
            return
        loop.default_exception_handler(context)

    loop.call_soon_threadsafe(loop.set_exception_handler, handler)


class Destination:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self._fs: Any = None
        if "://" not in url:
            url = root = os.path.abspath(url)
            self.local = True
        else:
            from fsspec.core import url_to_fs
            from fsspec.implementations.local import LocalFileSystem

            self._fs, root = url_to_fs(url, **(storage_options or {}))
            self.local = isinstance(self._fs, LocalFileSystem)  # file:// too
            if getattr(self._fs, "async_impl", False):
                quiet_orphaned_connection_errors()
        self.root = root.rstrip("/") or "/"
        self.display = redact_url(url) if "://" in url else self.root  # for messages: no credentials

    @property
    def fs(self) -> Any:
        """The fsspec file system (for a local folder, made on first use)."""
        if self._fs is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fs = LocalFileSystem()
        return self._fs

    def parent(self) -> Destination:
        """The folder that holds this destination (for siblings such as OUTPUT.tar.gz)."""
        up = object.__new__(Destination)
        up._fs, up.local = self._fs, self.local
        up.root = posixpath.dirname(self.root) or "/"
        up.display = up.root
        return up

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        full = self.path(rel)
        if self.local:
            return full
        return self.fs.unstrip_protocol(full)

    # -- writes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_atomic(self, rel: str, *, exclusive: bool = False) -> Iterator[IO[bytes]]:
        """A file that appears under `rel` only when the block exits without error.

        exclusive: never replace an existing file (FileExistsError instead). Atomic on a local
        disk (a hard link fails if the name is taken); on an object store the name is checked
        before the upload starts.
        """
        final = self.path(rel)
        parent = posixpath.dirname(final)
        if self.local:
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, temporary_name(posixpath.basename(final)))
            try:
                with open(tmp, "wb") as fh:
                    yield fh
                link_or_replace(tmp, final, exclusive=exclusive)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        if exclusive and self.fs.exists(final):
            raise FileExistsError(final)
        fh = self.fs.open(final, "wb")
        try:
            yield fh
        except BaseException:
            # Abandon the upload: an object store shows nothing for an upload never completed.
            try:
                discard = getattr(fh, "discard", None)
                if discard:
                    discard()
            finally:
                # s3fs's discard leaves the file open, and its __del__ then tries to close (upload) it.
                with contextlib.suppress(AttributeError):
                    fh.closed = True
            raise
        fh.close()

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local:
            write_local(self.path(rel), data)
            return
        with self.open_atomic(rel) as fh:
            fh.write(data)

    # -- reads and housekeeping -----------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if self.local:
            return os.path.exists(self.path(rel))
        return bool(self.fs.exists(self.path(rel)))

    def open_read(self, rel: str) -> IO[bytes]:
        if self.local:
            return open(self.path(rel), "rb")
        return self.fs.open(self.path(rel), "rb")  # type: ignore[no-any-return]

    def read_bytes(self, rel: str) -> bytes:
        if self.local:
            with open(self.path(rel), "rb") as fh:
                return fh.read()
        return bytes(self.fs.cat_file(self.path(rel)))

    def read_json(self, rel: str) -> dict[str, Any]:
        """A JSON object flowdc wrote here; {} when it is missing, unreadable or not an object."""
        try:
            doc = json.loads(self.read_bytes(rel))
        except (FileNotFoundError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def list(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under `rel`; empty when it does not exist (a file: its own name)."""
        path = self.path(rel)
        if self.local:
            try:
                return sorted(os.listdir(path))
            except NotADirectoryError:
                return [posixpath.basename(path)]
            except FileNotFoundError:
                return []
        self.fs.invalidate_cache(path)  # object stores cache listings; we just wrote here
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def version(self, rel: str) -> str | None:
        """Size and the store's version of a file (ETag, generation or mtime); None when absent."""
        path = self.path(rel)
        if self.local:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            return f"{st.st_size}:{st.st_mtime}"  # as fsspec's local info() gives them
        try:
            self.fs.invalidate_cache(path)
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        version = info.get("ETag") or info.get("generation") or info.get("mtime") or ""
        return f"{info.get('size')}:{version}"

    def remove(self, rel: str) -> None:
        path = self.path(rel)
        if self.local:
            with contextlib.suppress(FileNotFoundError):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def remove_temporaries(self) -> int:
        """Delete what a killed run left half-written: temporary files on a local disk, unfinished
        multipart uploads on S3 (invisible, but kept and billed until aborted)."""
        if not self.local:
            return self._abort_unfinished_uploads()
        if not os.path.isdir(self.root):
            return 0
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if TMP_MARK in name and name.startswith("."):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
        return removed

    def _abort_unfinished_uploads(self) -> int:
        call_s3 = getattr(self.fs, "call_s3", None)
        if call_s3 is None:
            return 0  # not S3: GCS resumable uploads expire by themselves
        bucket, _, key = self.root.partition("/")
        query: dict[str, Any] = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else ""}
        aborted = 0
        try:
            while True:
                answer = call_s3("list_multipart_uploads", **query)
                for upload in answer.get("Uploads", []):
                    call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
                if not answer.get("IsTruncated"):
                    return aborted
                query.update(KeyMarker=answer["NextKeyMarker"], UploadIdMarker=answer["NextUploadIdMarker"])
        except FileNotFoundError:
            return aborted  # no bucket yet: nothing to abort (writing will say what is wrong)
        except Exception as exc:  # e.g. no ListMultipartUploads permission: not worth failing the run
            # Unreachable, the store's next call fails with the run's one error line (or finds it back);
            # every run starts with this cleanup, so the next one aborts what is left.
            level = logging.DEBUG if is_unreachable(exc) else logging.WARNING
            log.log(level, "could not abort unfinished uploads under %s: %s: %s", self.display, type(exc).__name__, exc)
            return aborted

    def makedirs(self) -> None:
        if self.local:
            os.makedirs(self.root, exist_ok=True)


def is_unreachable(exc: BaseException) -> bool:
    """Whether a storage call failed because the store did not answer (refused, reset, timed out):
    an outage that may pass, unlike a refusal such as a missing permission."""
    if isinstance(exc, (ConnectionError, TimeoutError, aiohttp.ClientConnectionError)):
        return True
    return any(cls.__module__.startswith(("botocore", "aiobotocore"))
               and cls.__name__.endswith(("ConnectionError", "TimeoutError")) for cls in type(exc).__mro__)


def is_destination_error(exc: BaseException) -> bool:
    """Whether a storage call failed because of the destination: fsspec backends turn most errors
    into OSError, but connection errors of botocore (s3fs) and gcsfs come through as their own.
    A FlowdcError (a UserError is a ValueError) already says what is wrong, with its own exit code."""
    if isinstance(exc, FlowdcError):
        return False
    if isinstance(exc, (OSError, ValueError, aiohttp.ClientError, asyncio.TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in ("botocore", "aiobotocore", "gcsfs") for cls in type(exc).__mro__)
