"""Shared fixtures: real servers on loopback (moto S3, GCS emulator) and fake image hosts."""

# NiceGUI's `user` fixture (3.x: the plugin is enabled by name; pyproject sets main_file = "" because
# the UI tests register their own page on a fresh app).
pytest_plugins = ["tests.cloud_servers", "nicegui.testing.user_plugin"]
