"""FLOW-DC: download ML image datasets from URL manifests, fast and politely."""

# The one place the version is written (pyproject.toml reads it from here). Set before the imports
# below: modules they load record it in what they write. (importlib.metadata took 37 ms of start-up.)
from flowdc._version import __version__
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
