"""The airbench victim's data path: the whole training set on the device, augmented per batch there."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from ..compensation.functional import compensate_batch
from ..data.images import LabelledImages
from ..loading.config import AugmentConfig


BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``f(uint8 batch NCHW, dataset indices, epoch) -> uint8 batch``: a defence's extra online step."""


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images_uint8.float().div_(255.0)


def _reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad uint8 NCHW images by indexing (exact for any dtype)."""
    h, w = images.shape[-2:]
    rows = torch.arange(-pad, h + pad, device=images.device).abs()
    rows = torch.where(rows >= h, 2 * (h - 1) - rows, rows)
    cols = torch.arange(-pad, w + pad, device=images.device).abs()
    cols = torch.where(cols >= w, 2 * (w - 1) - cols, cols)
    return images[:, :, rows][:, :, :, cols]


def _crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Per-image crops ``padded[i, :, dy_i:dy_i+size, dx_i:dx_i+size]``."""
    b, c, hp, wp = padded.shape
    ar = torch.arange(size, device=padded.device)
    rows = (dy.view(b, 1) + ar).view(b, 1, size, 1).expand(b, c, size, wp)
    out = padded.gather(2, rows)
    cols = (dx.view(b, 1) + ar).view(b, 1, 1, size).expand(b, c, size, size)
    return out.gather(3, cols)


class GpuResidentLoader:
    """The training set resident on ``device``; `epoch` yields augmented [0, 1] float batches (channels-last).

    Per batch: a ``translate``-pixel reflect-padded random crop (when ``augment.translate_padding > 0``),
    airbench's alternating flip (each image's flip drawn once, inverted on odd epochs; when
    ``augment.flip``), then the corruption compensation (when ``augment.compensate``). ``augment=None``:
    no augmentation. ``augment.mean``/``std`` are refused: the airbench network normalises itself.
    """

    def __init__(self, data: LabelledImages, augment: Optional[AugmentConfig], batch_size: int, translate: int,
                 seed: int, device: torch.device, batch_transform: Optional[BatchTransform] = None) -> None:
        if augment is not None and augment.mean is not None:
            raise ValueError("the airbench victim normalises inside the network: give an AugmentConfig without mean/std")
        self.images = torch.from_numpy(data.images).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(data.labels.astype("int64")).to(device)
        self.augment, self.seed, self.device, self.batch_transform = augment, seed, device, batch_transform
        self.translate = translate if augment is not None and augment.translate_padding > 0 else 0
        self.padded = _reflect_pad(self.images, self.translate) if self.translate else self.images
        self.batch_size = min(batch_size, len(self.labels))
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.flip_bits = torch.rand(len(self.labels), generator=self.generator, device=device) < 0.5

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.labels), self.images.shape[-1]
        order = torch.randperm(n, generator=self.generator, device=self.device)
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            if self.batch_transform is not None:  # a defence's own per-batch step (e.g. RSK+FF), before crop/flip
                source = self.batch_transform(self.images[idx], idx, epoch).to(self.device)
                padded = _reflect_pad(source, self.translate) if self.translate else source
                picked = torch.arange(len(idx), device=self.device)
            else:
                padded, picked = self.padded, idx
            if self.translate:
                shifts = torch.randint(0, 2 * self.translate + 1, (2, len(idx)), generator=self.generator,
                                       device=self.device)
                x = _crop(padded[picked], shifts[0], shifts[1], size)
            else:
                x = padded[picked]
            if self.augment is not None and self.augment.flip:
                flip = (self.flip_bits[idx] ^ bool(epoch % 2)).view(-1, 1, 1, 1)  # alternating flip
                x = torch.where(flip, x.flip(-1), x)
            if self.augment is not None and self.augment.compensate:
                x = compensate_batch(x, idx, p_gray=self.augment.p_gray, sigma=self.augment.sigma, seed=self.seed,
                                     epoch=epoch)
            yield to_float(x).contiguous(memory_format=torch.channels_last), self.labels[idx]
