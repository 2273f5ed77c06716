"""`DonorMappedImages`: an image array where each image is combined with a donor image where indexed.

The ``chroma-swap`` step gives image i the chroma of image ``donors[i]``. Wrapped around the source, it runs
block by block where the block is purified (reading each block's donors too), and gives the same pixels as
running it over the whole set up front.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .images import LazyImages, update_digest_with_images

PairMap = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(uint8 NHWC block, uint8 NHWC donor block) -> uint8 NHWC block`` of the same shape."""


class DonorMappedImages(LazyImages):
    """``fn(base[i], base[donors[i]])`` for each indexed i, as a read-only uint8 NHWC array (`LazyImages`).

    Args:
        base: a numpy array or another lazily read array.
        donors: one donor index per image (``len(base)`` of them, each in range).
        fn: the pair function (picklable, so DataLoader workers can run it).
        description: names ``fn`` and its settings in the cache key (the donors enter it too).
    """

    def __init__(self, base: Any, donors: np.ndarray, fn: PairMap, description: str) -> None:
        donors = np.asarray(donors, dtype=np.int64)
        if donors.shape != (len(base),) or (len(donors) and (donors.min() < 0 or donors.max() >= len(base))):
            raise ValueError(f"{description}: donors must be {len(base)} indices into the images")
        self.base, self.donors, self.fn, self.description = base, donors, fn, description
        self.shape = tuple(base.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        positions = self._positions(key)
        single = isinstance(positions, int)
        own = np.atleast_1d(np.asarray(positions))
        wanted = self.donors[own]
        unique, inverse = np.unique(wanted, return_inverse=True)  # sorted: a streamed base reads forward
        donor_block = np.asarray(self.base[unique])[inverse]
        block = np.asarray(self.base[own])
        out = self.fn(block, donor_block)
        if out.shape != block.shape or out.dtype != np.uint8:
            raise ValueError(f"{self.description}: returned {out.dtype} {out.shape} for a block of {block.shape}")
        return out[0] if single else out

    def update_digest(self, digest: Any) -> None:
        """Feed ``digest`` the function's description and donors, then the base's pixels or identity."""
        digest.update(repr(("donor-mapped-v1", self.description)).encode())
        digest.update(self.donors.tobytes())
        update_digest_with_images(digest, self.base)
