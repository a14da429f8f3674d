"""FLOW-DC: download ML image datasets from URL manifests, fast and politely."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one place the version is written (pyproject.toml reads it from here). (importlib.metadata
# took 37 ms of start-up.)
from flowdc._version import __version__

if TYPE_CHECKING:
    from flowdc.api import RunResult, download_partition
    from flowdc.config import DownloadConfig, PartitionConfig, SizeConfig
    from flowdc.download import download_async, run_download
    from flowdc.errors import ConfigError, DestinationError, UserError
    from flowdc.fetch import download_single
    from flowdc.manifest import Manifest, load_input_file

# The public names, loaded on first use: a process that needs one small module (the write
# process, a resize worker) would otherwise import aiohttp, pyarrow and fsspec, 0.4 s, for nothing.
_PUBLIC = {
    "RunResult": "flowdc.api",
    "download_partition": "flowdc.api",
    "DownloadConfig": "flowdc.config",
    "PartitionConfig": "flowdc.config",
    "SizeConfig": "flowdc.config",
    "download_async": "flowdc.download",
    "run_download": "flowdc.download",
    "ConfigError": "flowdc.errors",
    "DestinationError": "flowdc.errors",
    "UserError": "flowdc.errors",
    "download_single": "flowdc.fetch",
    "Manifest": "flowdc.manifest",
    "load_input_file": "flowdc.manifest",
}

__all__ = [
    "ConfigError",
    "DestinationError",
    "DownloadConfig",
    "Manifest",
    "PartitionConfig",
    "RunResult",
    "SizeConfig",
    "UserError",
    "__version__",
    "download_async",
    "download_partition",
    "download_single",
    "load_input_file",
    "run_download",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'flowdc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
