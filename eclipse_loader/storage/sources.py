"""The storage layer's data sources: ``PATH.beton`` and ``beton:PATH`` for `load_source`.

The reader is registered when `eclipse_loader.storage` is imported, so the data layer never imports this
one; `load_source` from here (and ``eclipse_loader.load_source``) reads every source, betons included
(reading a beton needs the ffcv extra).
"""
from __future__ import annotations

from ..data.sources import load_source, register_source_reader
from .reader import read_beton

__all__ = ["load_source"]

register_source_reader("beton", read_beton)
