"""The storage layer's data sources: ``PATH.beton`` and ``beton:PATH`` for `eclipse_loader.data.load_source`
(registered on import, so the data layer never imports this one; reading needs the ffcv extra)."""
from __future__ import annotations

from ..data.sources import register_source_reader
from .reader import read_beton

register_source_reader("beton", read_beton)
