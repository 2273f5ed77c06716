"""Offline ECLIPSE purification: `Purifier` (one batch) and `purify_dataset` (resumable, to a beton).

The names below are imported lazily, so light submodules (``outliers``) load without torch's
diffusion stack (diffusers).
"""
from __future__ import annotations

from .._lazy import lazy_exports


_LAZY = {
    "Purifier": "eclipse_loader.purify.purifier",
    "PurifyConfig": "eclipse_loader.purify.purifier",
    "sample_seed": "eclipse_loader.purify.purifier",
    "t_star_for_noise_std": "eclipse_loader.purify.purifier",
    "timesteps_for": "eclipse_loader.purify.purifier",
    "cache_key": "eclipse_loader.purify.run",
    "purify_dataset": "eclipse_loader.purify.run",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
