"""Error types every layer may raise and the CLI reports as one line (torch-free, import-light)."""
from __future__ import annotations


class MissingExtraError(ImportError):
    """An optional dependency (an extra of the package, e.g. ``[ffcv]``) is needed and not installed."""
