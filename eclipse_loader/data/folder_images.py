"""`FolderImages`: the pixels of an image folder as an (N, H, W, 3) uint8 array decoded on demand.

Purification reads its source block by block, so a folder need not be decoded up front: indexing
``images[a:b]`` decodes those files only. Under DDP each rank then decodes only the blocks it purifies
(`eclipse_loader.adapters.lightning_purify`), and no rank writes a decoded copy of the whole folder.

The cache key of such a source (`FolderImages.update_digest`) hashes the files' bytes, their paths and
labels, the decode settings and Pillow's version, not the decoded pixels, so global rank 0 reads every
file once and decodes none of them. While it streams the files it also checks each one's header (size,
grayscale mode), so those problems are reported before any image is purified, as the eager sources do.
Damaged image data is found when its block is decoded, naming the file.
"""
from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np

from . import decode
from .folder_index import FolderIndex
from .images import GrayscalePolicy, InvalidInputError, LazyImages

_GRAYSCALE_MODES = ("L", "LA", "I", "I;16", "F", "1")


class FolderImages(LazyImages):
    """A read-only, lazily decoded uint8 NHWC array over the files of a `FolderIndex`.

    Indexing by an integer, a slice or an integer array decodes those files (`LazyImages` gives the rest
    of the array surface); ``np.asarray`` decodes every file.

    Args:
        index: the folder's files and labels.
        grayscale: ``"refuse"`` grayscale files or ``"convert"`` them (as `from_image_folder`).
        resize: ``(H, W)`` every image is resized to (PIL bicubic); None: all must share file 0's size.
    """

    def __init__(self, index: FolderIndex, grayscale: GrayscalePolicy = "refuse",
                 resize: Optional[tuple[int, int]] = None) -> None:
        if len(index) == 0:
            raise InvalidInputError(f"the image folder {index.root} is empty")
        self.index, self.grayscale = index, grayscale
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        with open(index.path(0), "rb") as handle:
            first = self._check_header(0, handle, expected_size=None)
        self.shape = (len(index),) + (self.resize or first) + (3,)

    def __getitem__(self, key: Any) -> np.ndarray:
        positions = self._positions(key)
        if isinstance(positions, int):
            return self._decode(positions)
        out = np.empty((len(positions),) + self.shape[1:], dtype=np.uint8)
        for k, position in enumerate(positions):
            out[k] = self._decode(int(position))
        return out

    def update_digest(self, digest: Any) -> None:
        """Feed the source's identity to ``digest`` (a hashlib object): decode settings, Pillow's version,
        then each file's relative path and bytes; checks each file's header on the way."""
        import PIL

        digest.update(repr(("image-folder-v1", self.shape, self.grayscale, self.resize, PIL.__version__)).encode())
        for position in range(len(self)):
            with open(self.index.path(position), "rb") as handle:
                content = handle.read()
            self._check_header(position, io.BytesIO(content), None if self.resize else self.shape[1:3])
            name = self.index.relative_paths[position]
            digest.update(len(name).to_bytes(8, "little") + name + len(content).to_bytes(8, "little"))
            digest.update(content)

    def _where(self, position: int) -> str:
        return f"sample {position} ({self.index.path(position)})"

    def _check_header(self, position: int, handle: Any, expected_size: Optional[tuple[int, int]]) -> tuple[int, int]:
        """``(H, W)`` of file ``position`` from its header; refuses a grayscale mode (unless converted) and a
        size other than ``expected_size`` (None: any size), as the decode would."""
        import PIL.Image

        try:
            with PIL.Image.open(handle) as image:
                width, height = image.size
                mode = image.mode
        except Exception as error:  # not an image at all: name it before any work starts
            raise InvalidInputError(f"cannot read {self._where(position)}: {type(error).__name__}: {error}") from None
        if mode in _GRAYSCALE_MODES and self.grayscale == "refuse":
            raise InvalidInputError(f"{self._where(position)} is a grayscale image (mode {mode}); pass grayscale='convert'")
        if expected_size is not None and (height, width) != tuple(expected_size):
            raise InvalidInputError(f"{self._where(position)} has size {(height, width)} but sample 0 has "
                                    f"{tuple(expected_size)}: a raw beton needs equal sizes; pass resize=(H, W)")
        return height, width

    def _decode(self, position: int) -> np.ndarray:
        where = self._where(position)
        try:
            raw = decode.open_image(self.index.path(position))
        except Exception as error:
            raise InvalidInputError(f"cannot read {where}: {type(error).__name__}: {error}") from error
        image = decode.to_hwc_uint8(raw, where, self.grayscale, self.resize)
        if image.shape != self.shape[1:]:
            raise InvalidInputError(f"{where} has size {image.shape[:2]} but sample 0 has {self.shape[1:3]}: "
                                    "a raw beton needs equal sizes; pass resize=(H, W)")
        return image
