"""`CorruptionCompensation`: the torch/torchvision-v2 form of ECLIPSE's compensation augmentation."""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Union

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import is_pure_tensor

from ..recipes import DEFAULT_RECIPE
from . import functional as F
from .params import check_compensation_args

IndexLike = Union[int, Sequence[int], torch.Tensor]


__all__ = ["CorruptionCompensation", "check_compensation_args"]


class CorruptionCompensation(v2.Transform):
    """Random grayscale (probability ``p_gray``) then Gaussian noise (std ``sigma``), on uint8 images.

    Works on one image ``(3, H, W)`` or a batch ``(B, 3, H, W)`` of uint8 tensors, on CPU or GPU,
    inside ``v2.Compose`` (place it before ``v2.ToDtype``). Grayscale is decided per sample, never
    once per batch. The output is rounded and clamped back to uint8; ``p_gray=0, sigma=0`` is the
    identity.

    Two ways to draw randomness:

    * ``comp(images, indices=idx)`` (or `compensate`): draws are a pure function of
      ``(seed, epoch, dataset index)``, bit-identical to the FFCV Operation `CompensateFFCV`.
      Call `set_epoch` each epoch so the corruption is redrawn.
    * ``comp(images)`` (plain torchvision usage, no index): per-sample keys come from torch's
      global RNG, so they follow ``torch.manual_seed`` / DataLoader worker seeding. As the v2
      contract asks, they are drawn once per call in `make_params` (one key per batch position),
      so every image or video of one sample gets the same draws.

    Args:
        p_gray: probability of turning a sample grayscale (default: the ``default`` recipe's 0.2;
            the paper's 0.4 via ``recipes.get_recipe("paper").p_gray``).
        sigma: noise std in [0, 1] pixel units (default: the ``default`` recipe's 0.03, i.e. 7.65
            grey levels; the paper's 0.05 via recipe ``"paper"``).
        seed: base seed of the indexed draws.
    """

    # as torchvision's photometric transforms: images, videos (frames as a batch) and plain tensors;
    # masks, bounding boxes, keypoints and non-tensor entries pass through unchanged
    _transformed_types = (tv_tensors.Image, tv_tensors.Video, PIL.Image.Image, is_pure_tensor)

    def __init__(self, p_gray: float = DEFAULT_RECIPE.p_gray, sigma: float = DEFAULT_RECIPE.sigma, seed: int = 0) -> None:
        super().__init__()
        check_compensation_args(p_gray, sigma, seed)
        self.p_gray = float(p_gray)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws the indexed path uses."""
        self.epoch = int(epoch)

    def forward(self, *inputs: Any, indices: Optional[IndexLike] = None) -> Any:
        if indices is None:
            return super().forward(*inputs)
        if len(inputs) != 1:
            raise TypeError("with indices=..., pass exactly one image tensor or batch")
        return self.compensate(inputs[0], indices)

    def compensate(self, images: torch.Tensor, indices: IndexLike, epoch: Optional[int] = None) -> torch.Tensor:
        """Deterministic compensation keyed by dataset ``indices`` (an int for a single image)."""
        epoch = self.epoch if epoch is None else int(epoch)
        batch, single = _as_batch(images)
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        out = F.compensate_batch(batch, idx, p_gray=self.p_gray, sigma=self.sigma, seed=self.seed, epoch=epoch)
        return out[0] if single else out

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.apply(fn)``; the old ``apply(images, indices)`` still works, deprecated: use `compensate`."""
        fn = kwargs.get("fn", args[0] if len(args) == 1 and not kwargs else None)
        if callable(fn):
            return super().apply(fn)
        warnings.warn("CorruptionCompensation.apply(images, indices) is deprecated: use compensate(images, indices)",
                      DeprecationWarning, stacklevel=2)
        return self.compensate(*args, **kwargs)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """One random key per batch position (the longest batch among the inputs), shared by all of them."""
        size = max((x.shape[0] if getattr(x, "ndim", 3) == 4 else 1 for x in flat_inputs), default=1)
        return {"keys": torch.randint(0, 2**32, (size,), dtype=torch.int64)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            raise TypeError("CorruptionCompensation needs a uint8 tensor: put v2.PILToTensor() or v2.ToImage() before it")
        batch, single = _as_batch(inpt)
        keys = params["keys"][:batch.shape[0]].to(batch.device)
        out = F.compensate_with_keys(batch, keys, p_gray=self.p_gray, sigma=self.sigma)
        out = out[0] if single else out
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    def extra_repr(self) -> str:
        return f"p_gray={self.p_gray}, sigma={self.sigma}, seed={self.seed}, epoch={self.epoch}"


def _as_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a uint8 torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"CorruptionCompensation expects uint8 images, got {images.dtype}; place it before v2.ToDtype"
        )
    if images.ndim == 3:
        return images.unsqueeze(0), True
    if images.ndim == 4:
        return images, False
    raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}")
