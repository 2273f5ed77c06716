"""Availability poisons ("unlearnable examples") to evaluate defences against.

Model-free (seconds on CPU): `autoregressive` (AR), `lsp`, `one_pixel_shortcut` (OPS),
`convolution_based` (CUDA-style), `classwise_noise`, `classwise_patches` (the demo's).
Model-based: `error_minimizing` (EM), `targeted_adversarial` (TAP), `robust_error_minimizing`
(REM: EM robust to adversarial training), `hypocritical` (loss-minimising PGD against a slightly
trained model from `hypocritical_crafting_model`), and the adaptive attack
`error_minimizing(..., transform=compensation_eot(...))` that optimises through the defence;
`candidate_view` is any `auto` candidate as such a transform (EM crafted through the defence auto chose).
"""
from .candidate_view import candidate_view
from .crafted import compensation_eot, denoiser_eot, error_minimizing, random_flip, targeted_adversarial
from .hypocritical import hypocritical, hypocritical_crafting_model
from .model_free import (
    autoregressive,
    classwise_noise,
    classwise_patches,
    convolution_based,
    lsp,
    one_pixel_shortcut,
)
from .rem import random_crop_flip, robust_error_minimizing

__all__ = [
    "autoregressive", "candidate_view", "classwise_noise", "classwise_patches", "compensation_eot", "convolution_based",
    "denoiser_eot", "error_minimizing", "hypocritical", "hypocritical_crafting_model", "lsp", "one_pixel_shortcut",
    "random_crop_flip", "random_flip", "robust_error_minimizing", "targeted_adversarial",
]
