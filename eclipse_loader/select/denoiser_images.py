"""Which trusted images a saved denoiser was trained on, from its ``denoiser.json`` (kept out of validation)."""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np


def denoiser_training_images(denoiser_dir: Union[str, os.PathLike]) -> tuple[Optional[np.ndarray], str]:
    """(images the denoiser trained on or None, a sentence saying how that was found out).

    ``eclipse-loader train-denoiser`` records its ``source`` and ``sparse_indices``; those are reloaded.
    """
    from ..storage.sources import load_source
    from ..denoiser.io import load_metadata

    meta = load_metadata(denoiser_dir)
    source, indices = meta.get("source"), meta.get("sparse_indices")
    if source is None or indices is None:
        return None, (f"{denoiser_dir} records no training images (denoiser.json has no source/sparse_indices): if it "
                      "was trained on trusted images, name them with --denoiser-trained-on")
    try:
        images = load_source(str(source)).images[np.asarray(indices, dtype=np.int64)]
    except (FileNotFoundError, ValueError, IndexError) as error:
        raise ValueError(f"the denoiser's recorded training source {source!r} cannot be read back ({error}); "
                         "name its images with --denoiser-trained-on") from None
    return images, f"{len(images)} denoiser training images read back from {source!r} (denoiser.json)"
