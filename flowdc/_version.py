"""The package version, kept apart so that packaging can read it without importing flowdc."""

__version__ = "0.1.0"
