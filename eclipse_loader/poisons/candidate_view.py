"""The adaptive attacker's view of one `auto` candidate: the defence as a differentiable random transform.

An attacker who knows `auto`'s candidate list (and which one it picks on the attacker's data) crafts EM
*through* that candidate (`error_minimizing(..., transform=candidate_view(...))`). Each component, in the
candidate's order (repair, grayscale, JPEG, purification, then RSK+FF and the compensation every epoch):

* grayscale, RSK+FF and the compensation are exact (float versions of the defence's own maps, fresh
  random draws per call);
* purification is `denoiser_eot` (one-shot noising to t* and one U-Net call, as in the adaptive EM rows);
* outlier repair and JPEG are not differentiable: BPDA (Athalye et al., ICML 2018) runs the real uint8
  step forward and passes the gradient through as the identity.

Crop + flip, which the victim always applies, are left to `error_minimizing`'s own augmentation.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..purify.outliers import DEFAULT_THRESHOLD, repair_isolated_pixels
from ..select.augment import KEEP_FRACTION, dct_low_pass, random_sharpen_kernels, sharpen
from ..select.candidates import Candidate
from ..evaluation.baselines import jpeg_pixels
from ..select.colour import chroma_low_pass, swap_chroma_float
from .crafted import Transform, compensation_eot, denoiser_eot, luma_float


def _bpda(uint8_step: Callable[[np.ndarray], np.ndarray]) -> Transform:
    """``uint8_step`` (NHWC uint8 -> NHWC uint8) forward, the identity backward."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        pixels = x.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = torch.from_numpy(np.ascontiguousarray(uint8_step(pixels))).to(x.device).permute(0, 3, 1, 2)
        return x + (out.to(x.dtype) / 255.0 - x).detach()

    return transform


def _rsk_ff(x: torch.Tensor) -> torch.Tensor:
    kernels = random_sharpen_kernels(x.shape[0]).to(x.device)
    return dct_low_pass(sharpen(x, kernels), KEEP_FRACTION)


def candidate_view(candidate: Candidate, unet: Optional[nn.Module] = None,
                   alphas_cumprod: Optional[torch.Tensor] = None,
                   repair_threshold: int = DEFAULT_THRESHOLD) -> Transform:
    """``candidate`` as the transform an adaptive EM optimises through (see the module docstring).

    Args:
        candidate: one `auto` candidate (``mix_trusted`` changes the victim's data, not the view: ignored).
        unet, alphas_cumprod: the denoiser the candidate purifies with (needed when ``candidate.t_star``).
        repair_threshold: the outlier-repair threshold of the defence.
    """
    if candidate.t_star is not None and (unet is None or alphas_cumprod is None):
        raise ValueError(f"candidate {candidate.name} purifies: pass its denoiser (unet and alphas_cumprod)")
    steps: list[Transform] = []
    if candidate.repair:
        steps.append(_bpda(lambda pixels: repair_isolated_pixels(pixels, repair_threshold)[0]))
    if candidate.grayscale:
        steps.append(luma_float)
    if candidate.chroma is not None:
        steps.append(lambda x, block=candidate.chroma: chroma_low_pass(x, block))
    if candidate.chroma_swap:  # the donors of a batch: the next image of the batch (a derangement, as offline)
        steps.append(lambda x: swap_chroma_float(x, x.roll(-1, 0)))
    if candidate.jpeg is not None:
        steps.append(_bpda(lambda pixels: jpeg_pixels(pixels, candidate.jpeg)))
    if candidate.t_star is not None:
        steps.append(denoiser_eot(unet, alphas_cumprod, candidate.t_star))  # type: ignore[arg-type]
    if candidate.augment is not None:
        steps.append(_rsk_ff)
    p_gray, sigma = candidate.p_gray_sigma
    if p_gray or sigma:
        steps.append(compensation_eot(p_gray, sigma))

    def transform(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return transform
