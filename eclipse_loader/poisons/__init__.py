"""Availability poisons ("unlearnable examples") to evaluate defences against.

Model-free (seconds on CPU): `autoregressive` (AR), `lsp`, `one_pixel_shortcut` (OPS),
`convolution_based` (CUDA-style), `classwise_noise`, `classwise_patches` (the demo's).
Model-based: `error_minimizing` (EM), `targeted_adversarial` (TAP), and the adaptive attack
`error_minimizing(..., transform=compensation_eot(...))` that optimises through the defence.
"""
from .crafted import compensation_eot, denoiser_eot, error_minimizing, random_flip, targeted_adversarial
from .model_free import (
    autoregressive,
    classwise_noise,
    classwise_patches,
    convolution_based,
    lsp,
    one_pixel_shortcut,
)

__all__ = [
    "autoregressive", "classwise_noise", "classwise_patches", "compensation_eot", "convolution_based",
    "denoiser_eot", "error_minimizing", "lsp", "one_pixel_shortcut", "random_flip", "targeted_adversarial",
]
