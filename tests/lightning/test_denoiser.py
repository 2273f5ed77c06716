"""Denoiser presets, training (t restriction, EMA) and pickle-free safetensors loading."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser import build_scheduler, build_unet, denoiser_hash, get_preset, load_denoiser, save_denoiser
from eclipse_loader.denoiser.io import DenoiserNotFoundError, weights_path
from eclipse_loader.adapters.lightning_denoiser import DenoiserModule, train_denoiser



def test_paper_preset_matches_paper_architecture():
    unet = build_unet("paper")
    cfg = unet.config
    assert tuple(cfg.block_out_channels) == (128, 256, 256, 256)
    assert cfg.layers_per_block == 3
    # attention at 16 px and 8 px: down blocks 1 and 2 of a 32 px input
    assert [("Attn" in b) for b in cfg.down_block_types] == [False, True, True, False]
    n_params = sum(p.numel() for p in unet.parameters())
    assert abs(n_params / 1e6 - 52.55) < 0.1, n_params  # paper's model: 52.55 M
    sched = build_scheduler()
    assert sched.config.num_train_timesteps == 4000 and sched.config.beta_schedule == "squaredcos_cap_v2"
    assert "L_hybrid" in get_preset("small").description and "L_hybrid" in get_preset("paper").description
    with pytest.raises(ValueError, match="unknown denoiser preset"):
        get_preset("huge")


def test_timesteps_restricted_to_t_max():
    module = DenoiserModule(dict(build_unet("tiny").config), t_max=7, seed=0)
    seen = []
    forward = module.unet.forward
    module.unet.forward = lambda x, t, **kw: (seen.append(t.clone()), forward(x, t, **kw))[1]
    batch = [torch.rand(64, 3, 32, 32) * 2 - 1]
    for _ in range(3):
        module.training_step(batch, 0)
    t = torch.cat(seen)
    assert int(t.max()) <= 7 and int(t.min()) >= 0 and len(t.unique()) == 8
    full = DenoiserModule(dict(build_unet("tiny").config), seed=0)
    assert full.t_high == 4000
    with pytest.raises(ValueError, match="t_max"):
        DenoiserModule(dict(build_unet("tiny").config), t_max=4000)


def test_train_save_and_load_without_unpickling(tmp_path, monkeypatch):
    data = load_embedded("trusted").subset(np.arange(64))
    out = train_denoiser(data, "tiny", tmp_path / "den", max_steps=4, batch_size=16, t_max=120, seed=1,
                         accelerator="cpu", progress=False)
    assert weights_path(out).is_file() and (out / "unet" / "config.json").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")) and not list(out.rglob("*.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["den"]  # no work dir unless asked for (checkpoints)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a denoiser must never unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    unet, scheduler = load_denoiser(out)
    assert not unet.training and scheduler.config.num_train_timesteps == 4000
    # the EMA weights moved away from the (seeded) initialisation during training
    with torch.random.fork_rng():
        torch.manual_seed(1)
        init = build_unet("tiny")
    moved = [not torch.equal(a, b) for a, b in zip(unet.parameters(), init.parameters())]
    assert any(moved)
    # the hash covers the weights: changing one weight changes it
    before = denoiser_hash(out)
    with torch.no_grad():
        next(unet.parameters())[0].add_(1.0)
    save_denoiser(unet, scheduler, tmp_path / "den2")
    assert denoiser_hash(tmp_path / "den2") != before


def test_missing_denoiser_is_reported(tmp_path):
    with pytest.raises(DenoiserNotFoundError, match="not a saved denoiser"):
        load_denoiser(tmp_path)
