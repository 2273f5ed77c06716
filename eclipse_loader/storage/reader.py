"""Check and read (image, label) betons: a damaged file is one error naming it, a dead FFCV worker
thread an exception instead of a hang."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..data.images import LabelledImages
from .format import DamagedBetonError, PathLike, read_manifest, require_ffcv


def check_beton(path: PathLike) -> Path:
    """Check that ``path`` is a complete beton (header, field table, sample metadata, allocation table
    and every sample's bytes inside the file); returns it.

    Raises:
        FileNotFoundError: no file at ``path``.
        DamagedBetonError: the file is truncated, damaged or not a beton; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no beton at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    require_ffcv()
    from ffcv.reader import Reader
    from ffcv.types import HeaderType

    size = path.stat().st_size
    if size < HeaderType.itemsize:
        raise DamagedBetonError(f"{path} is damaged or not a beton: {size} bytes, shorter than a beton header")
    try:
        reader = Reader(str(path))
    except Exception as error:  # FFCV raises AssertionError/ValueError/IndexError/... on a bad file
        raise DamagedBetonError(f"{path} is damaged or not a beton ({type(error).__name__}: {error})") from None
    table = reader.alloc_table
    problem = None
    if len(reader.metadata) != reader.num_samples or reader.num_samples < 1:
        problem = f"{len(reader.metadata)} sample records for {reader.num_samples} samples"
    elif len(table) and int((table["ptr"].astype(np.int64) + table["size"].astype(np.int64)).max()) > size:
        problem = "sample data extends past the end of the file (truncated)"
    elif int(reader.header["alloc_table_ptr"]) > size:
        problem = "its allocation table lies past the end of the file (truncated)"
    if problem:
        raise DamagedBetonError(f"{path} is damaged: {problem}; write it again")
    return path


def read_beton(path: PathLike, num_classes: Optional[int] = None) -> LabelledImages:
    """Read a whole (image, label) beton into memory, in stored order (for checks and small data).

    Raises:
        FileNotFoundError: no file at ``path``.
        DamagedBetonError: the file is truncated or damaged (checked by `check_beton` before reading).
    """
    path = check_beton(path)
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    images, labels = [], []
    try:
        loader = Loader(
            str(path), batch_size=512, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
            pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]},
        )
        from .ffcv_epochs import start_epoch  # a dead worker thread raises instead of hanging

        for batch_images, batch_labels in start_epoch(loader):
            images.append(np.array(batch_images))
            labels.append(np.array(batch_labels).reshape(-1))
    except (KeyError, ValueError, IndexError, AssertionError) as error:
        raise DamagedBetonError(f"{path} cannot be read as an (image, label) beton "
                                f"({type(error).__name__}: {error})") from None
    label_array = np.concatenate(labels).astype(np.int64)
    classes = num_classes or read_manifest(path).get("num_classes") or int(label_array.max()) + 1
    return LabelledImages(np.concatenate(images), label_array, int(classes))
