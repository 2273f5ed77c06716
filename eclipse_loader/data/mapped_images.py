"""`MappedImages`: an image array with a per-image function applied where it is indexed.

Offline steps that act on each image alone (outlier repair, grayscale, JPEG) need not run over the whole
dataset before purification: wrapped around the source, they run block by block, on the rank that purifies
the block, and give the same pixels as running them up front.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .images import LazyImages, update_digest_with_images

PixelMap = Callable[[np.ndarray], np.ndarray]
"""``fn(uint8 NHWC block) -> uint8 NHWC block`` of the same shape; each output image depends on its input image alone."""


class MappedImages(LazyImages):
    """``fn`` applied to ``base`` where indexed, as a read-only uint8 NHWC array (`LazyImages`).

    Args:
        base: a numpy array or another lazily read array.
        fn: the per-image function (picklable, so DataLoader workers can run it).
        description: names ``fn`` and its settings (and versions of the code whose output it fixes) in the cache key.
    """

    def __init__(self, base: Any, fn: PixelMap, description: str) -> None:
        self.base, self.fn, self.description = base, fn, description
        self.shape = tuple(base.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        single = isinstance(key, (int, np.integer))
        block = np.asarray(self.base[key])
        out = self.fn(block[None] if single else block)
        if out.shape != (1,) * single + block.shape or out.dtype != np.uint8:
            raise ValueError(f"{self.description}: returned {out.dtype} {out.shape} for a block of {block.shape}")
        return out[0] if single else out

    def update_digest(self, digest: Any) -> None:
        """Feed ``digest`` the function's description, then the base's pixels or identity."""
        digest.update(repr(("mapped-v1", self.description)).encode())
        update_digest_with_images(digest, self.base)
