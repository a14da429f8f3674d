"""The file names of webdataset shards, in one place.

A committed shard is PREFIX + NNNNNN + .tar / .parquet / _stats.json; a local shard still being
appended to is the hidden `.PREFIXNNNNNN.tar.open`. The prefix is empty for one download (the
names img2dataset uses); `flowdc distribute` gives each partition its own ("part-00003-") so that
shard names are unique across the whole dataset, not only inside one partition's folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flowdc.errors import ConfigError

PREFIX_OK = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
NUMBERED_LEN = len("000000.tar")  # what follows the prefix in a tar's name


def check_prefix(prefix: str) -> str:
    """A prefix is one plain file-name fragment: no folders, no hidden names, nothing a shell or a
    remote tool (rclone's `remote:path`) would read as more than a name."""
    if not PREFIX_OK.match(prefix):
        raise ConfigError(f"shard_prefix {prefix!r}: use letters, digits, '-', '_' and '.', starting with a letter "
                          "or digit")
    return prefix


@dataclass(frozen=True)
class ShardNames:
    prefix: str = ""
    _shard_file: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _open_file: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        p = re.escape(self.prefix)
        object.__setattr__(self, "_shard_file", re.compile(rf"^{p}(\d{{6}})(?:\.tar|\.parquet|_stats\.json)$"))
        object.__setattr__(self, "_open_file", re.compile(rf"^\.{p}(\d{{6}})\.tar\.open$"))

    def name(self, shard: int, ext: str) -> str:
        return f"{self.prefix}{shard:06d}.{ext}"

    def stats(self, shard: int) -> str:
        return f"{self.prefix}{shard:06d}_stats.json"  # img2dataset's name for a shard's counts

    def files(self, shard: int) -> list[str]:
        """Every file of a committed shard (shards of older versions have no stats file)."""
        return [self.name(shard, "tar"), self.name(shard, "parquet"), self.stats(shard)]

    def open(self, shard: int) -> str:
        return f".{self.prefix}{shard:06d}.tar.open"

    def number(self, name: str) -> int | None:
        """The shard a committed shard's file belongs to; None for any other name."""
        m = self._shard_file.match(name)
        return int(m.group(1)) if m else None

    def open_number(self, name: str) -> int | None:
        m = self._open_file.match(name)
        return int(m.group(1)) if m else None


def prefix_of_tar(tar_name: str) -> str:
    """The prefix a recorded tar name was written with (`part-00003-000012.tar` -> `part-00003-`)."""
    return tar_name[:-NUMBERED_LEN] if len(tar_name) >= NUMBERED_LEN else ""
