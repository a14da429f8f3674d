"""Smoke tests for the loopback S3 (moto) and GCS (gcp-storage-emulator) fixtures."""

from __future__ import annotations

from tests.cloud_servers import gcs_endpoint, gcs_filesystem, s3_endpoint, s3_filesystem  # noqa: F401


def test_moto_s3_roundtrip(s3_endpoint: str) -> None:  # noqa: F811
    assert s3_endpoint.startswith("http://127.0.0.1:")
    fs = s3_filesystem(s3_endpoint)
    fs.mkdir("smoke-bkt")
    fs.pipe("smoke-bkt/dir/a b.bin", b"hello s3")
    assert fs.cat("smoke-bkt/dir/a b.bin") == b"hello s3"
    assert fs.ls("smoke-bkt/dir") == ["smoke-bkt/dir/a b.bin"]


def test_gcs_emulator_roundtrip(gcs_endpoint: str) -> None:  # noqa: F811
    assert gcs_endpoint.startswith("http://127.0.0.1:")
    fs = gcs_filesystem(gcs_endpoint)
    fs.mkdir("smoke-bkt")
    fs.pipe("smoke-bkt/dir/a b.bin", b"hello gcs")
    assert fs.cat("smoke-bkt/dir/a b.bin") == b"hello gcs"
    assert fs.ls("smoke-bkt/dir") == ["smoke-bkt/dir/a b.bin"]
