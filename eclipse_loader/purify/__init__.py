"""Offline ECLIPSE purification: `Purifier` (one batch) and `purify_dataset` (resumable, to a beton)."""
from .purifier import Purifier, PurifyConfig, sample_seed, t_star_for_noise_std, timesteps_for
from .run import cache_key, purify_dataset

__all__ = [
    "Purifier",
    "PurifyConfig",
    "cache_key",
    "purify_dataset",
    "sample_seed",
    "t_star_for_noise_std",
    "timesteps_for",
]
