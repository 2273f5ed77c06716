"""Read image-classification data from arrays, ``.npz`` files and torchvision datasets.

Every reader returns a validated `LabelledImages`; problems are reported before any work starts,
naming the offending sample. `load_source` parses the source strings used by the CLI and the
`EclipseDataModule` (``npz:PATH``, ``cifar10:ROOT``, ``imagefolder:PATH``, ``embedded:train`` ...).
"""
from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .decode import open_image, to_hwc_uint8
from .disk_array import disk_backed_array
from .folder_images import FolderImages
from .folder_index import FolderIndex
from .inflated_npz_images import InflatedNpzImages
from .images import GrayscalePolicy, InvalidInputError, LabelledImages, as_labelled_images
from .npz_mmap import mmap_npz_member, unpack_npz_member

PathLike = Union[str, os.PathLike]
SOURCE_SPEC_HELP = (
    "data source: embedded:train|trusted|test, npz:PATH[:IMAGES_KEY:LABELS_KEY], cifar10:ROOT[:train|test], "
    "cifar100:ROOT[:split], svhn:ROOT[:split], imagefolder:PATH, or a .npz/.beton path"
)
NPZ_KEY_PAIRS = (("images", "labels"), ("x", "y"), ("train_x", "train_y"), ("data", "targets"))
SPLITS = ("train", "test")
SourceReader = Callable[[str, Optional[int]], LabelledImages]
"""``reader(path, num_classes)``: reads one file kind that a higher layer owns (``beton``: storage)."""
_READERS: dict[str, SourceReader] = {}


def register_source_reader(kind: str, reader: SourceReader) -> None:
    """Let `load_source` read ``KIND:PATH`` and ``PATH.KIND`` with ``reader`` (how the storage layer
    provides ``.beton`` sources without this layer importing it)."""
    if not kind.isidentifier() or kind in ("embedded", "npz", "cifar10", "cifar100", "svhn", "imagefolder"):
        raise ValueError(f"kind must be a new source name (letters, digits, _), got {kind!r}")
    _READERS[kind] = reader


def from_npz(
    path: PathLike,
    images_key: Optional[str] = None,
    labels_key: Optional[str] = None,
    grayscale: GrayscalePolicy = "refuse",
    num_classes: Optional[int] = None,
    mmap: bool = True,
    lazy: bool = False,
) -> LabelledImages:
    """Load NHWC uint8 images and labels from an ``.npz`` (keys guessed from `NPZ_KEY_PAIRS` if not given).

    With ``mmap`` (default) images stored uncompressed (``np.savez``) are memory-mapped read-only
    instead of read, so purifying a large source holds only the batches in flight; compressed
    archives (``np.savez_compressed``) are inflated as a stream into an array mapped from an unnamed
    temporary file (page cache, not process memory). With ``lazy`` as well, compressed images stay in the
    archive and are inflated where they are read (`InflatedNpzImages`: what purification uses, reading its
    blocks in order, so each DDP rank keeps only its own blocks and nothing is copied to disk).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such .npz file: {path}")
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory, not an .npz file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path} is empty (0 bytes), not an .npz file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):  # a bare .npy
                raise InvalidInputError(f"{path} holds a single array, not an .npz archive of images and labels")
            keys = set(archive.files)
            if images_key is None or labels_key is None:
                pair = next(((x, y) for x, y in NPZ_KEY_PAIRS if x in keys and y in keys), None)
                if pair is None:
                    raise InvalidInputError(
                        f"{path} has keys {sorted(keys)}; name the image and label arrays, e.g. npz:{path}:IMAGES:LABELS"
                    )
                images_key, labels_key = pair
            for key in (images_key, labels_key):
                if key not in keys:
                    raise InvalidInputError(f"{path} has no array {key!r} (it has {sorted(keys)})")
            labels = archive[labels_key]
            # uncompressed members are mapped, not read: a 200k-image source costs no memory up front
            images = mmap_npz_member(path, images_key) if mmap else None
            if images is None and mmap and lazy:
                images = InflatedNpzImages.open(path, images_key)
            if images is None and mmap:  # compressed: inflated into page cache, not process memory
                images = unpack_npz_member(path, images_key)
            if images is None:
                images = archive[images_key]
    except InvalidInputError:
        raise
    except ValueError as error:  # pickled objects or random bytes: never suggest allow_pickle
        reason = "it holds pickled objects, which are never loaded" if "pickle" in str(error) else str(error)
        raise InvalidInputError(f"{path} is not a usable .npz of numpy arrays ({reason})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as error:
        raise InvalidInputError(f"{path} is not a readable .npz (damaged or truncated: "
                                f"{type(error).__name__}: {error})") from None
    return as_labelled_images(images, labels, num_classes, grayscale)


def resize_images(data: LabelledImages, size: tuple[int, int]) -> LabelledImages:
    """Every image resized to ``size = (H, W)`` (PIL bicubic, as the per-file sources do)."""
    import PIL.Image

    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"resize must be two positive sizes (H, W), got {size}")
    if data.image_shape[:2] == (height, width):
        return data
    resized = np.stack([np.asarray(PIL.Image.fromarray(image).resize((width, height), PIL.Image.BICUBIC))
                        for image in data.images])
    return LabelledImages(resized, data.labels, data.num_classes)


def from_torchvision(
    dataset: Any,
    grayscale: GrayscalePolicy = "refuse",
    resize: Optional[tuple[int, int]] = None,
    num_classes: Optional[int] = None,
) -> LabelledImages:
    """Convert a torchvision classification dataset (CIFAR10/100, SVHN, ImageFolder, or any map-style
    dataset yielding ``(PIL image | HWC array | CHW tensor, int)``) into `LabelledImages`.

    CIFAR and SVHN are read from their in-memory arrays (no per-sample decoding). ImageFolder-style
    datasets decode every file into an array mapped from an unnamed temporary file under ``$TMPDIR``
    (`disk_array`), so a large folder costs page cache, not process memory; a file that cannot be decoded
    raises `InvalidInputError` naming its index and path. Images of different sizes are refused unless ``resize=(H, W)`` is given.
    """
    if num_classes is None and hasattr(dataset, "classes"):
        num_classes = len(dataset.classes)
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", getattr(dataset, "labels", None))
    if isinstance(data, np.ndarray) and targets is not None and resize is None and getattr(dataset, "transform", None) is None:
        images = data.transpose(0, 2, 3, 1) if data.ndim == 4 and data.shape[1] == 3 and data.shape[-1] != 3 else data
        return as_labelled_images(images, np.asarray(targets), num_classes, grayscale)
    return _decode_each(dataset, grayscale, resize, num_classes)


def _decode_each(dataset: Any, grayscale: GrayscalePolicy, resize: Optional[tuple[int, int]], num_classes: Optional[int]) -> LabelledImages:
    samples = getattr(dataset, "samples", None) if getattr(dataset, "loader", None) is not None else None

    def read(index: int) -> tuple[Any, int]:
        if samples is not None:  # an ImageFolder: decode the file ourselves, in its own mode
            path, label = samples[index]
            return open_image(path), label
        return dataset[index]

    def describe(index: int) -> str:
        return f"sample {index}" + (f" ({samples[index][0]})" if samples is not None else "")

    return _decode(len(dataset), read, describe, grayscale, resize, num_classes)


def from_image_folder(
    root: PathLike,
    grayscale: GrayscalePolicy = "refuse",
    resize: Optional[tuple[int, int]] = None,
    num_classes: Optional[int] = None,
    lazy: bool = False,
) -> LabelledImages:
    """The images of a folder in torchvision's ``ImageFolder`` layout (one sub-folder per class).

    Same files, order, labels and pixels as ``from_torchvision(ImageFolder(root))``, but the file list is a
    compact `FolderIndex` (two numpy arrays) rather than one Python tuple per file. The pixels are decoded
    into an array mapped from an unnamed temporary file (`disk_array`), or with ``lazy`` left in the files
    and decoded when indexed (`FolderImages`: what purification uses, so that each DDP rank decodes only
    its own blocks; its cache key hashes the files, not the pixels).
    """
    if not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    index = FolderIndex.scan(root)
    num_classes = len(index.classes) if num_classes is None else num_classes
    if lazy:
        return LabelledImages(FolderImages(index, grayscale, resize), index.labels, num_classes)
    return _decode(len(index), lambda i: (open_image(index.path(i)), int(index.labels[i])),
                   lambda i: f"sample {i} ({index.path(i)})", grayscale, resize, num_classes)


def _decode(count: int, read: Callable[[int], tuple[Any, int]], describe: Callable[[int], str],
            grayscale: GrayscalePolicy, resize: Optional[tuple[int, int]], num_classes: Optional[int]) -> LabelledImages:
    """Decode samples ``0..count-1``: ``read(i)`` gives the raw image and its label, ``describe(i)`` names it."""
    images: Optional[np.ndarray] = None  # filled in place; allocated once sample 0 gives the size
    labels = np.empty(count, dtype=np.int64)
    for index in range(count):
        where = describe(index)
        try:
            raw, label = read(index)
        except Exception as error:  # a corrupt or unreadable file: name it, stop before writing anything
            raise InvalidInputError(f"cannot read {where}: {type(error).__name__}: {error}") from error
        image = to_hwc_uint8(raw, where, grayscale, resize)
        if images is None:
            images = disk_backed_array((count,) + image.shape)
        elif image.shape != images.shape[1:]:
            raise InvalidInputError(
                f"{where} has size {image.shape[:2]} but sample 0 has {images.shape[1:3]}: "
                "a raw beton needs equal sizes; pass resize=(H, W)"
            )
        images[index] = image
        labels[index] = int(label)
    if images is None:
        raise InvalidInputError("the dataset is empty")
    return as_labelled_images(images, labels, num_classes, grayscale)


def load_source(
    spec: str,
    grayscale: GrayscalePolicy = "refuse",
    resize: Optional[tuple[int, int]] = None,
    num_classes: Optional[int] = None,
    lazy: bool = False,
) -> LabelledImages:
    """Load data named by a source string.

    Forms:
        ``embedded:train|trusted|test``     the small CIFAR-10 sample shipped with the package
        ``npz:PATH[:IMAGES_KEY:LABELS_KEY]`` NHWC uint8 arrays in an .npz
        ``cifar10:ROOT[:train|test]``, ``cifar100:ROOT[:split]``, ``svhn:ROOT[:split]``
                                             torchvision datasets already downloaded under ROOT
        ``imagefolder:PATH``                 one sub-folder per class, as torchvision's ImageFolder lists it
                                             (`from_image_folder`)
        ``PATH.npz`` / ``PATH.beton``        shorthand for npz: / an existing beton

    ``num_classes`` bounds the labels (default: the dataset's class list, else ``max(label) + 1``).
    With ``lazy`` an image folder is decoded on demand (`FolderImages`) and a compressed ``.npz`` inflated
    where read (`InflatedNpzImages`); other sources are unaffected (an uncompressed ``.npz`` is memory-mapped anyway). A path may start with ``~`` (``npz:~/data.npz``): the shell expands it only at the start of a word.
    """
    kind, _, rest = spec.partition(":")
    if not rest and spec.endswith(".npz"):
        kind, rest = "npz", spec
    suffix = spec.rpartition(".")[2]
    if not rest and (suffix in _READERS or suffix == "beton"):
        kind, rest = suffix, spec
    if kind != "embedded":
        rest = os.path.expanduser(rest)
    if kind in ("embedded", "npz", "beton") or kind in _READERS:
        data = _load_arrays(kind, rest, grayscale, num_classes, lazy)
        return data if resize is None else resize_images(data, resize)
    if kind in ("cifar10", "cifar100", "svhn"):
        return from_torchvision(_torchvision_dataset(kind, rest), grayscale, resize, num_classes)
    if kind == "imagefolder":
        return from_image_folder(rest, grayscale, resize, num_classes, lazy=lazy)
    raise ValueError(
        f"unknown data source {spec!r}: use embedded:SPLIT, npz:PATH, cifar10:ROOT, cifar100:ROOT, svhn:ROOT, "
        "imagefolder:PATH or a .npz/.beton path"
    )


def _load_arrays(kind: str, rest: str, grayscale: GrayscalePolicy, num_classes: Optional[int],
                 lazy: bool = False) -> LabelledImages:
    if kind == "embedded":
        from .embedded import load_embedded

        return load_embedded(rest or "train")
    if kind == "npz":
        parts = rest.split(":")
        keys = parts[1:3] if len(parts) >= 3 else [None, None]
        return from_npz(parts[0], keys[0], keys[1], grayscale, num_classes, lazy=lazy)
    if kind not in _READERS:  # the storage layer registers "beton" when it is imported
        raise ValueError(f"{kind} sources are read by eclipse_loader.storage: use eclipse_loader.load_source "
                         "(or import eclipse_loader.storage first)")
    return _READERS[kind](rest, num_classes)


def _torchvision_dataset(kind: str, rest: str) -> Any:
    from torchvision import datasets

    root, _, split = rest.partition(":")
    split = split or "train"
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        if kind == "svhn":
            return datasets.SVHN(root, split=split, download=False)
        cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
        return cls(root, train=split == "train", download=False)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{kind} not found under {root!r} ({error}); download it first, e.g. "
            f"torchvision.datasets.{kind.upper()}({root!r}, download=True)"
        ) from error
