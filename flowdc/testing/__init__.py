"""Test doubles that run for real on loopback: fake image hosts (used by tests, bench and the demo)."""
