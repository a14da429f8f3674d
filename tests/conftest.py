"""Shared fixtures: real servers on loopback (moto S3, GCS emulator) and fake image hosts."""

pytest_plugins = ["tests.cloud_servers"]
