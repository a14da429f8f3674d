"""FLOW-DC: download ML image datasets from URL manifests, fast and politely."""

from flowdc.api import RunResult, download_partition
from flowdc.config import DownloadConfig, PartitionConfig, SizeConfig
from flowdc.download import download_async, run_download
from flowdc.errors import ConfigError, DestinationError, UserError
from flowdc.fetch import download_single
from flowdc.manifest import Manifest, load_input_file

__all__ = [
    "ConfigError",
    "DestinationError",
    "DownloadConfig",
    "Manifest",
    "PartitionConfig",
    "RunResult",
    "SizeConfig",
    "UserError",
    "download_async",
    "download_partition",
    "download_single",
    "load_input_file",
    "run_download",
]
