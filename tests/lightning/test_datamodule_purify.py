"""EclipseDataModule(purify=True): purification in prepare_data, cached by content hash, reused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader import EclipseDataModule
from eclipse_loader.denoiser.io import save_denoiser
from eclipse_loader.denoiser.presets import build_scheduler, build_unet
from eclipse_loader.purify import run as purify_run

from ..conftest import requires_ffcv


@pytest.fixture(scope="module")
def tiny_denoiser(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet("tiny")
    return str(save_denoiser(unet, build_scheduler(), tmp_path_factory.mktemp("den") / "tiny"))


@pytest.mark.parametrize("backend", [pytest.param("ffcv", marks=requires_ffcv), "torch"])
def test_purify_in_prepare_data_is_cached_and_reused(tmp_path, cifar, tiny_denoiser, backend, monkeypatch):
    npz = tmp_path / "poisoned.npz"
    np.savez(npz, images=cifar["train_x"][:40], labels=cifar["train_y"][:40])
    kwargs = dict(train=f"npz:{npz}", batch_size=40, backend=backend, cache_dir=str(tmp_path / "cache"), purify=True,
                  denoiser=tiny_denoiser, t_star=20, purify_steps=2, compensate=False, flip=False, translate_padding=0)
    dm = EclipseDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    suffix = "beton" if backend == "ffcv" else "npz"  # the torch backend caches an npz (no ffcv needed)
    assert len(list((tmp_path / "cache" / "purified").glob(f"*.{suffix}"))) == 1
    (x, y), = list(dm.train_dataloader())
    original = torch.from_numpy(cifar["train_x"][:40]).permute(0, 3, 1, 2).float() / 255
    order = torch.as_tensor(np.random.default_rng(0).permutation(40))
    assert torch.equal(y, torch.from_numpy(cifar["train_y"][:40].astype(np.int64))[order])
    changed = (x - original[order]).abs().mean().item()
    assert 0 < changed < 0.2  # purified: altered, but still the same pictures

    def must_not_run(*args, **kwargs):
        raise AssertionError("purification re-ran although its result is cached")

    monkeypatch.setattr(purify_run, "purify_dataset", must_not_run)
    again = EclipseDataModule(**kwargs)
    again.prepare_data()
    again.setup("fit")
    (x2, _), = list(again.train_dataloader())
    assert torch.equal(x, x2)
