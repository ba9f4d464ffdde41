"""The version of roiroa (one place: the package, results and cache keys read it)."""

__version__ = "0.2.0"
