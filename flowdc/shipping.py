"""Ship finished files to a remote store with a command-line tool (gocmd, rclone, aws, ...).

The output folder is then local staging: a shard is uploaded once it is committed, and its
local copy is removed only after the tool confirmed the upload. Shards committed by a run that
died before shipping them are shipped by the next run.
"""

from __future__ import annotations

import asyncio
import logging
import os

from flowdc.config import DownloadConfig
from flowdc.errors import UserError
from flowdc.storage import Destination
from flowdc.uploaders import CommandUploader, UploadError, spec_of, upload_async
from flowdc.writers.shardnames import ShardNames

log = logging.getLogger(__name__)


def uploader_for(cfg: DownloadConfig) -> CommandUploader | None:
    """The run's uploader; a tool that is not installed stops the run here, before any fetch."""
    if not cfg.cloud_tool:
        return None
    uploader = CommandUploader(spec_of(vars(cfg)))
    missing = uploader.missing_tool()
    if missing:
        raise UserError(missing)
    return uploader


class Shipper:
    def __init__(self, uploader: CommandUploader, dest: Destination, names: ShardNames | None = None):
        self.uploader = uploader
        self.dest = dest
        self.names = names or ShardNames()
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self.shipped: list[str] = []
        self.failed: list[str] = []

    def ship_shard(self, shard: int) -> None:
        """Called from the writer thread once a shard is committed; uploads run on the loop."""
        for name in self.names.files(shard):
            self.loop.call_soon_threadsafe(self.ship_file, name)

    def ship_file(self, rel: str, *, keep_local: bool = False) -> None:
        """Start an upload (from the event loop's thread)."""
        task = self.loop.create_task(self._ship(rel, keep_local))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ship_leftovers(self, committed: set[int]) -> int:
        """Shards a previous run committed but did not ship whole (any of their files is still here:
        each file ships on its own, and the metadata's upload may fail where the tar's did not)."""
        names = set(self.dest.list())
        leftovers = [s for s in sorted(committed) if any(name in names for name in self.names.files(s))]
        for shard in leftovers:
            for name in self.names.files(shard):
                if name in names:
                    self.ship_file(name)
        return len(leftovers)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _ship(self, rel: str, keep_local: bool) -> None:
        local = self.dest.path(rel)
        if not os.path.isfile(local):
            return
        try:
            await upload_async(self.uploader, local, rel, remove=not keep_local)
        except UploadError as exc:
            # The local copy stays: the next run ships it. The message is already redacted.
            log.error("%s", exc)
            self.failed.append(rel)
            return
        self.shipped.append(rel)
