"""One sample, as a file or as a decoded object, turned into an HWC uint8 RGB array (the per-file sources' step)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .images import GrayscalePolicy, InvalidInputError, grayscale_policy_image


def open_image(path: str) -> Any:
    """The file as decoded by PIL, in its own mode (torchvision's loader would convert it to RGB)."""
    import PIL.Image

    with open(path, "rb") as handle:
        image = PIL.Image.open(handle)
        image.load()
    return image


def to_hwc_uint8(raw: Any, where: str, grayscale: GrayscalePolicy, resize: Optional[tuple[int, int]]) -> np.ndarray:
    """One decoded sample (a PIL image, an HWC/CHW array or tensor) as HWC uint8 RGB; ``where`` names it in errors."""
    import PIL.Image

    if isinstance(raw, PIL.Image.Image):
        if raw.mode == "P":
            raw = raw.convert("RGBA" if "transparency" in raw.info else "RGB")
        if raw.mode in ("RGBA", "LA", "PA", "RGBa", "La") and raw.getchannel("A").getextrema() != (255, 255):
            raise InvalidInputError(f"{where} has transparent pixels (mode {raw.mode}); flatten it onto a "
                                    "background first (ECLIPSE works on opaque RGB images)")
        if raw.mode in ("L", "LA", "I", "I;16", "F", "1"):
            if grayscale == "refuse":
                raise InvalidInputError(f"{where} is a grayscale image (mode {raw.mode}); pass grayscale='convert'")
            raw = raw.convert("L")
        raw = raw.convert("RGB")
        if resize is not None:
            raw = raw.resize((resize[1], resize[0]), PIL.Image.BICUBIC)
        return np.asarray(raw, dtype=np.uint8)
    array = raw.numpy() if hasattr(raw, "numpy") else np.asarray(raw)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        raise InvalidInputError(f"{where} has dtype {array.dtype}; expected uint8 pixels (drop ToTensor from the dataset)")
    array = grayscale_policy_image(array, grayscale, where)
    if resize is not None and array.shape[:2] != tuple(resize):
        array = np.asarray(PIL.Image.fromarray(array).resize((resize[1], resize[0]), PIL.Image.BICUBIC))
    return array
