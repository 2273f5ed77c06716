"""Denoiser presets: a diffusers `UNet2DModel` plus a `DDPMScheduler`, composed from plain dicts.

Every preset uses the paper's process: T = 4000 steps, cosine schedule (``squaredcos_cap_v2``),
epsilon prediction, x0 clipped to [-1, 1]. What differs between presets is the U-Net size.

Deviations from the paper shared by all presets (stated once here, repeated per preset):

* **Loss / variance.** The paper (improved-diffusion) learns the reverse variance
  (``LEARNED_RANGE``, 6 output channels) with the hybrid loss L_hybrid = eps-MSE + λ·VLB. These
  presets train plain eps-MSE and use the **fixed** posterior variance β̃_t (diffusers
  ``variance_type="fixed_small"``) at sampling time. Near t* = 100 of 4000, β_t and β̃_t differ
  very little, so the ancestral chain changes little; the learned variance is not reproduced.
* **Timestep input.** improved-diffusion feeds the network t·1000/T; diffusers' positional
  embedding is fed the raw index t in [0, T).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diffusers import DDPMScheduler, UNet2DModel

NUM_TRAIN_TIMESTEPS = 4000
BETA_SCHEDULE = "squaredcos_cap_v2"


def scheduler_config() -> dict[str, Any]:
    """The paper's diffusion process as `DDPMScheduler` kwargs (cosine, T=4000, eps, fixed variance)."""
    return dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def _paper() -> dict[str, Any]:
    """Paper architecture (improved-diffusion CIFAR-10 recipe) in diffusers form.

    32 px, base 128 channels, multipliers (1, 2, 2, 2), 3 res blocks per level, self-attention at
    16 and 8 px with 4 heads, scale-shift norm, dropout 0. Deviations: eps-MSE with fixed variance
    instead of learned-range L_hybrid (3 output channels, not 6). Built with diffusers' blocks it has
    52.54 M parameters (paper model: 52.55 M, the difference being the 3 variance output channels).
    """
    return dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=64,  # 256 channels / 4 heads
        resnet_time_scale_shift="scale_shift",
        dropout=0.0,
        norm_num_groups=32,
    )


def _small() -> dict[str, Any]:
    """CPU-trainable preset: channels (32, 64, 64), 1 res block per level, no attention anywhere.

    Roughly 1/50 of the paper model's compute per image. Deviations: much smaller U-Net without
    attention; eps-MSE with fixed variance instead of learned-range L_hybrid.
    """
    return dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        add_attention=False,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=16,
    )


def _tiny() -> dict[str, Any]:
    """Test-only preset (a few thousand parameters, trains in seconds); useless as a real denoiser.

    Channels (8, 16), 1 res block, no attention; eps-MSE with fixed variance.
    """
    return dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,
        norm_num_groups=4,
    )


@dataclass(frozen=True)
class Preset:
    """A named U-Net configuration; ``unet_kwargs()`` returns a fresh dict for `UNet2DModel`."""

    name: str
    unet_kwargs: Callable[[], dict[str, Any]]
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("paper", _paper, _paper.__doc__ or ""),
        Preset("small", _small, _small.__doc__ or ""),
        Preset("tiny", _tiny, _tiny.__doc__ or ""),
    )
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name (``paper``, ``small``, ``tiny``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown denoiser preset {name!r}; choose one of {sorted(PRESETS)}") from None


def build_unet(preset: str, image_size: int = 32) -> UNet2DModel:
    """A freshly initialised `UNet2DModel` for ``preset`` (weights from torch's global RNG)."""
    kwargs = get_preset(preset).unet_kwargs()
    kwargs["sample_size"] = int(image_size)
    return UNet2DModel(**kwargs)


def build_scheduler() -> DDPMScheduler:
    """The paper's diffusion process as a `DDPMScheduler` (see `scheduler_config`)."""
    return DDPMScheduler(**scheduler_config())
