"""`LabelledImages`: the one in-memory form every input is turned into, and its validation.

Everything downstream (beton writer, purifier, torch fallback loader) takes a `LabelledImages`,
so a dataset is checked once, before any work starts, and an error names the offending index.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional, Union

import numpy as np

GrayscalePolicy = Literal["refuse", "convert"]
#: the largest class count inferred from the labels alone; above it, num_classes must be given
MAX_INFERRED_CLASSES = 100_000


class InvalidInputError(ValueError):
    """Input data that cannot be used as-is; the message names the sample index and the problem."""


@dataclass(frozen=True)
class LabelledImages:
    """A validated image-classification dataset held in memory.

    Attributes:
        images: uint8 array of shape (N, H, W, 3), RGB, HWC (the layout of torchvision's CIFAR10.data),
            or an array decoded on demand (`eclipse_loader.data.folder_images.FolderImages`: indexing it
            returns numpy arrays; `materialised` turns it into one).
        labels: int64 array of shape (N,), each in ``[0, num_classes)``.
        num_classes: number of classes (labels need not use all of them).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        validate_images(self.images)
        validate_labels(self.labels, len(self.images), self.num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """sha256 of the pixels, labels and class count: equal fingerprints mean equal datasets."""
        digest = hashlib.sha256()
        digest.update(repr((self.images.shape, self.num_classes)).encode())
        update_digest_with_images(digest, self.images)
        digest.update(self.labels.astype("<i8").tobytes())
        return digest.hexdigest()

    def materialised(self) -> "LabelledImages":
        """This dataset with its pixels in a numpy array: itself, or a lazily decoded source decoded once into
        an array mapped from an unnamed temporary file (`disk_backed_array`)."""
        if not is_lazy(self.images):
            return self
        from .disk_array import disk_backed_array

        images = disk_backed_array(tuple(self.images.shape))
        for start, block in image_blocks(self.images):
            images[start:start + len(block)] = block
        return LabelledImages(images, self.labels, self.num_classes)

    def subset(self, indices: np.ndarray) -> "LabelledImages":
        """The samples at ``indices``, in that order (copies the pixels)."""
        indices = np.asarray(indices, dtype=np.int64)
        return LabelledImages(self.images[indices], self.labels[indices], self.num_classes)


def as_labelled_images(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: Optional[int] = None,
    grayscale: GrayscalePolicy = "refuse",
) -> LabelledImages:
    """Validate arrays and return them as a `LabelledImages` (no pixel is changed).

    Args:
        images: uint8 NHWC with 3 channels; (N, H, W) or (N, H, W, 1) grayscale is refused unless
            ``grayscale="convert"``, which repeats the channel three times.
        labels: integer class ids, one per image.
        num_classes: defaults to ``max(labels) + 1``.
        grayscale: ``"refuse"`` (default) or ``"convert"``.

    Images read on demand (`is_lazy`) are kept as they are: nothing is read to validate them.

    Raises:
        InvalidInputError: wrong dtype, wrong rank, wrong channel count, non-integer or negative
            labels, a label ``>= num_classes``, or a length mismatch.
    """
    images = images if is_lazy(images) else np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1):
        images = _grayscale_to_rgb(images, grayscale, where="images")
    validate_images(images)
    labels = _integer_labels(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 0
        if num_classes > MAX_INFERRED_CLASSES:
            i = int(np.argmax(labels))
            raise InvalidInputError(
                f"label at index {i} is {labels[i]}, which would mean {num_classes:,} classes; labels must be class "
                f"ids 0..N-1: if that many classes is meant, pass num_classes (--num-classes) explicitly")
    validate_labels(labels, len(images), num_classes)
    return LabelledImages(images if is_lazy(images) else np.ascontiguousarray(images), labels, int(num_classes))


def _grayscale_to_rgb(images: np.ndarray, policy: GrayscalePolicy, where: str) -> np.ndarray:
    if policy == "refuse":
        raise InvalidInputError(
            f"{where} are single-channel (shape {images.shape}); ECLIPSE works on RGB images. "
            "Pass grayscale='convert' to repeat the channel three times."
        )
    if policy != "convert":
        raise ValueError(f"grayscale must be 'refuse' or 'convert', got {policy!r}")
    if images.ndim == 4:
        images = images[..., 0]
    return np.repeat(images[..., None], 3, axis=-1)


def grayscale_policy_image(image: np.ndarray, policy: GrayscalePolicy, where: str) -> np.ndarray:
    """One HWC image made RGB under ``policy`` (used by per-sample sources); ``where`` names it in errors."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        return _grayscale_to_rgb(image[None], policy, where=where)[0]
    return image


def update_digest_with_images(digest: Any, images: Any) -> None:
    """Feed ``images`` to ``digest`` (a hashlib object): a numpy array's pixels, streamed ~64 MiB at a time
    (a memory-mapped source stays on disk), or a lazily decoded array's own identity (`is_lazy`)."""
    if is_lazy(images):  # e.g. a folder: its files, nothing decoded
        images.update_digest(digest)
        return
    for _, block in image_blocks(images):
        digest.update(block.data)


def image_blocks(images: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, pixels)`` for consecutive blocks of about 64 MiB of ``images`` (a numpy array, memory-mapped
    or not, or a `LazyImages`), each a C-contiguous numpy array: a streamed pass over the images."""
    block = max(1, (64 << 20) // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), block):
        yield start, np.ascontiguousarray(images[start:start + block])


class LazyImages:
    """Base of the uint8 NHWC arrays read on demand (`FolderImages`, `MappedImages`, `InflatedNpzImages`).

    Subclasses set ``shape`` and define ``__getitem__`` (an integer, a slice or a 1-D integer array, each
    returning numpy pixels) and ``update_digest`` (the source's identity, for the cache key). This gives them
    what the purification pass uses of a numpy array besides: ``dtype``, ``ndim``, ``nbytes``, ``len()``,
    and ``np.asarray`` (every image read).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __getitem__(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def _positions(self, key: Any) -> Union[int, np.ndarray]:
        """``key`` (an integer, a slice or a 1-D integer array) as the image position or the 1-D array of
        positions it selects, with numpy's semantics (negative counts from the end; out of range: IndexError)."""
        if isinstance(key, (int, np.integer)):
            position = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= position < len(self):
                raise IndexError(f"index {key} is out of range for {len(self)} images")
            return position
        positions = np.arange(*key.indices(len(self))) if isinstance(key, slice) else np.arange(len(self))[key]
        if positions.ndim != 1:
            raise TypeError(f"{type(self).__name__} takes an integer, a slice or a 1-D integer array, got {key!r}")
        return positions

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)

    def update_digest(self, digest: Any) -> None:
        raise NotImplementedError


def is_lazy(images: object) -> bool:
    """Whether ``images`` is read on demand (a `LazyImages`) rather than a numpy array."""
    return isinstance(images, LazyImages)


def validate_images(images: np.ndarray) -> None:
    """Check an image array is uint8 (N, H, W, 3) with N, H, W > 0."""
    if not isinstance(images, np.ndarray) and not is_lazy(images):
        raise InvalidInputError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        hint = " (float images in [0,1]? multiply by 255 and round first)" if images.dtype.kind == "f" else ""
        raise InvalidInputError(f"images must be uint8, got dtype {images.dtype}{hint}")
    if images.ndim != 4:
        raise InvalidInputError(
            f"images must have shape (N, H, W, 3) (NHWC), got {images.ndim} dimensions {images.shape}"
        )
    if images.shape[-1] != 3:
        chw = images.shape[1] == 3
        hint = "; it looks channels-first (NCHW): transpose to NHWC" if chw else ""
        raise InvalidInputError(f"images must have 3 channels last, got shape {images.shape}{hint}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InvalidInputError(f"images have an empty spatial size: {images.shape}")


def _integer_labels(labels: np.ndarray) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InvalidInputError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(labels != np.round(labels))
        if len(bad):
            raise InvalidInputError(f"label at index {bad[0]} is not an integer: {labels[bad[0]]}")
    elif labels.dtype.kind not in "iub":
        raise InvalidInputError(f"labels must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def validate_labels(labels: np.ndarray, num_images: int, num_classes: int) -> None:
    """Check labels are int64, one per image, each in ``[0, num_classes)``."""
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise InvalidInputError(f"labels must be int64 of shape (N,), got {labels.dtype} {labels.shape}")
    if len(labels) != num_images:
        raise InvalidInputError(f"{num_images} images but {len(labels)} labels: lengths must match")
    if num_classes < 1 and num_images > 0:
        raise InvalidInputError(f"num_classes must be at least 1, got {num_classes}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise InvalidInputError(
            f"label at index {i} is {labels[i]}, outside [0, {num_classes}) "
            f"({len(bad)} labels out of range in all)"
        )
