"""Betons on disk: the atomic writer, the checked reader, and the ``.beton`` data source."""
from . import sources  # noqa: F401  (registers the beton reader with eclipse_loader.data.load_source)
