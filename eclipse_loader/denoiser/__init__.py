"""The ECLIPSE denoiser: U-Net/scheduler presets, training (Lightning) and safetensors I/O."""
from .io import denoiser_hash, load_denoiser, load_metadata, save_denoiser, weights_path
from .presets import PRESETS, build_scheduler, build_unet, get_preset

__all__ = [
    "PRESETS",
    "build_scheduler",
    "build_unet",
    "denoiser_hash",
    "get_preset",
    "load_denoiser",
    "load_metadata",
    "save_denoiser",
    "weights_path",
]
