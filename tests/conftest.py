"""Shared fixtures: real servers on loopback (moto S3, GCS emulator) and fake image hosts."""

import pytest

# NiceGUI's `user` fixture (3.x: the plugin is enabled by name; pyproject sets main_file = "" because
# the UI tests register their own page on a fresh app).
pytest_plugins = ["tests.cloud_servers", "nicegui.testing.user_plugin"]

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                   "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """flowdc honours the environment's proxies; the tests' traffic stays on loopback whatever the
    machine running them sets. Tests of proxies set these themselves."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
