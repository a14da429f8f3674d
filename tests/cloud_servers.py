"""Session-scoped S3 (moto) and GCS (gcp-storage-emulator) servers on 127.0.0.1 for tests.

Use from a test module (or list "tests.cloud_servers" in the root conftest's pytest_plugins):

    from tests.cloud_servers import s3_endpoint, s3_filesystem  # noqa: F401

Fixtures:
  s3_endpoint   "http://127.0.0.1:PORT" of an in-process moto server (any bucket, dummy keys)
  gcs_endpoint  "http://127.0.0.1:PORT" of an in-memory gcp-storage-emulator
Helpers build fresh fsspec filesystems for them: s3_filesystem(endpoint), gcs_filesystem(endpoint).
Both servers listen on port 0 (a free port) so parallel sessions never collide.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

# gcsfs reads this at import time; left on, every bucket call stalls ~60 s on a gRPC probe.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

if TYPE_CHECKING:
    import gcsfs.core
    import s3fs

LOOPBACK: Final = "127.0.0.1"
# moto accepts any credentials; these are what the helpers and rclone tests pass.
S3_ACCESS_KEY: Final = "flowdc-test-key"
S3_SECRET_KEY: Final = "flowdc-test-secret"
# Not us-east-1: s3fs then sends LocationConstraint=us-east-1, which S3 and moto reject.
S3_REGION: Final = "eu-west-1"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An in-process moto S3 server; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """An in-memory gcp-storage-emulator; yields its endpoint URL."""
    from gcp_storage_emulator.server import create_server

    server = create_server(LOOPBACK, 0, in_memory=True)
    server.start()
    # The emulator has no public accessor for the bound port; port 0 needs the real one.
    port = server._api._httpd.server_address[1]
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        # Its API thread is not a daemon: without stop() the test process never exits.
        server.stop()


def s3_filesystem(endpoint: str) -> s3fs.S3FileSystem:
    """A fresh (uncached) s3fs filesystem talking to the moto server at `endpoint`."""
    import s3fs

    return s3fs.S3FileSystem(
        key=S3_ACCESS_KEY,
        secret=S3_SECRET_KEY,
        client_kwargs={"endpoint_url": endpoint, "region_name": S3_REGION},
        skip_instance_cache=True,
    )


def gcs_filesystem(endpoint: str) -> gcsfs.core.GCSFileSystem:
    """A fresh (uncached) gcsfs filesystem talking to the emulator at `endpoint`."""
    # gcsfs.core's class is the plain one even if gcsfs was imported before the env var was set.
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(endpoint_url=endpoint, token="anon", project="flowdc-test", skip_instance_cache=True)
