"""`FolderIndex`: the files of an image folder (torchvision's ``ImageFolder`` layout) as two numpy arrays.

``ImageFolder`` keeps one Python ``(path, class)`` tuple per file: about 170 bytes an image, 34 MiB for a
200k-image folder, held for the whole purification. This index lists the same files in the same order,
with torchvision's own ``find_classes`` and ``make_dataset`` run one class at a time, and keeps them as a
fixed-width bytes array of paths relative to the root plus an int64 label array (about 30 bytes an image).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class FolderIndex:
    """The image files under ``root``, one sub-folder per class, in ``ImageFolder``'s order.

    Attributes:
        root: the folder (user-expanded, as ``ImageFolder`` reads it).
        classes: the class folder names, sorted; label ``k`` is ``classes[k]``.
        relative_paths: ``os.fsencode`` of each file's path relative to ``root`` (a numpy ``S`` array).
        labels: int64 class index of each file.
    """

    root: str
    classes: tuple[str, ...]
    relative_paths: np.ndarray
    labels: np.ndarray

    @classmethod
    def scan(cls, root: PathLike) -> "FolderIndex":
        """List ``root`` as ``torchvision.datasets.ImageFolder(root)`` would (same files, order and labels).

        Raises:
            FileNotFoundError: ``root`` has no class folder, or a class folder holds no image file.
        """
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        base = os.path.expanduser(os.fspath(root))
        classes, class_to_idx = find_classes(base)
        prefix = os.path.join(base, "")
        paths, labels = [], []
        for name in classes:  # one class at a time: only one class's tuples exist as Python objects
            samples = make_dataset(base, {name: class_to_idx[name]}, extensions=IMG_EXTENSIONS)
            assert all(path.startswith(prefix) for path, _ in samples), "make_dataset joins paths onto the root"
            paths.append(np.array([os.fsencode(path[len(prefix):]) for path, _ in samples], dtype=bytes))
            labels.append(np.full(len(samples), class_to_idx[name], dtype=np.int64))
        return cls(base, tuple(classes), np.concatenate(paths), np.concatenate(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        """The full path of file ``index``."""
        return os.path.join(self.root, os.fsdecode(self.relative_paths[index]))
