"""FLOW-DC: download ML image datasets from URL manifests, fast and politely."""

from importlib import metadata as _metadata

try:  # set before the imports below: modules they load record it in what they write
    __version__ = _metadata.version("flowdc")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

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
    "__version__",
    "download_async",
    "download_partition",
    "download_single",
    "load_input_file",
    "run_download",
]
