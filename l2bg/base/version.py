"""The package version, in the bottom layer so that every layer may name it (caches, results)."""

__version__ = "0.2.0"
