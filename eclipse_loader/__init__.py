"""eclipse-loader: train on possibly-poisoned image data without changing the training code.

Public API (adapters are imported lazily, so ``import eclipse_loader`` stays light)::

    from eclipse_loader import EclipseDataModule, CorruptionCompensation
"""
from __future__ import annotations

from ._lazy import lazy_exports


__version__ = "0.1.0"

_LAZY = {
    "CorruptionCompensation": "eclipse_loader.compensation.transform",
    "EclipseDataModule": "eclipse_loader.adapters.lightning_datamodule",
    "CompensateFFCV": "eclipse_loader.adapters.ffcv_compensation",
    "make_ffcv_loader": "eclipse_loader.adapters.ffcv_loaders",
    "TorchEpochLoader": "eclipse_loader.loading.torch_loader",
    "AugmentConfig": "eclipse_loader.loading.config",
    "Normalization": "eclipse_loader.loading.config",
    "LabelledImages": "eclipse_loader.data.images",
    "InvalidInputError": "eclipse_loader.data.images",
    "as_labelled_images": "eclipse_loader.data.images",
    "load_source": "eclipse_loader.storage.sources",  # data.sources' reader with betons registered
    "from_npz": "eclipse_loader.data.sources",
    "from_torchvision": "eclipse_loader.data.sources",
    "from_image_folder": "eclipse_loader.data.sources",
    "write_beton": "eclipse_loader.storage.beton",
    "read_beton": "eclipse_loader.storage.beton",
    "train_denoiser": "eclipse_loader.adapters.lightning_denoiser",
    "purify_dataset": "eclipse_loader.purify.run",
    "purify_distributed": "eclipse_loader.adapters.lightning_purify",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
