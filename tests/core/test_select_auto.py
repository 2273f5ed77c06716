"""`auto` in the evaluation harness: selection on the cell's training set and the sparse set only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.evaluation.defense_registry import (AUTO, apply_offline, batch_transform, candidate_defense,
                                                offline_steps, resolve_auto, split_sparse)
from eclipse_loader.recipes import DEFAULT_RECIPE
from eclipse_loader.select.candidates import Candidate, default_candidates
from eclipse_loader.select.proxy import ProxySettings

from .select_data import chroma_poison, stripes


def test_candidate_defense_maps_every_component():
    d = candidate_defense(Candidate(repair=True, grayscale=True, jpeg=30, t_star=200, compensation="mid",
                                    augment="rsk-ff"), steps=2)
    assert d.name == AUTO and d.offline == ("repair-outliers", "grayscale", "jpeg30", "purify")
    assert (d.purify.t_star, d.purify.steps) == (200, 2)
    assert d.augment.compensate and (d.augment.p_gray, d.augment.sigma) == (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma)
    assert d.extra_augment == "rsk-ff" and "rsk-ff" in d.description
    none = candidate_defense(Candidate())
    assert none.offline == () and not none.augment.compensate and batch_transform(none, 0) is None
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert batch_transform(d, 0)(images, torch.arange(4), 0).shape == images.shape
    with pytest.raises(ValueError, match="JPEG qualities"):
        candidate_defense(Candidate(jpeg=50))
    with pytest.raises(ValueError, match="mix trusted"):
        candidate_defense(Candidate(mix_trusted=True))
    data = stripes(8, seed=0, size=32)
    out = apply_offline(candidate_defense(Candidate(grayscale=True, jpeg=30)), data, offline_steps())
    assert out.images.shape == data.images.shape and not np.array_equal(out.images, data.images)


def test_split_sparse_is_class_balanced_and_disjoint():
    sparse = stripes(200, seed=3)
    validation, denoiser_part = split_sparse(sparse, seed=0)
    assert len(validation) == len(denoiser_part) == 100
    assert np.bincount(validation.labels).tolist() == [25] * 4
    hashes = {img.tobytes() for img in validation.images}
    assert not any(img.tobytes() in hashes for img in denoiser_part.images)
    with pytest.raises(ValueError, match="validation_fraction"):
        split_sparse(sparse, validation_fraction=1.0)


def test_resolve_auto_uses_only_the_sparse_set():
    train = chroma_poison(stripes(400, seed=1))
    sparse = stripes(400, seed=2)
    _, denoiser_part = split_sparse(sparse, seed=0)
    defense, selection = resolve_auto(train, sparse, None, denoiser_images=denoiser_part.images, seed=0,
                                      proxy=ProxySettings(images=400, epochs=8, width=8, batch_size=32))
    assert selection.sizes["validation"] == 200 and selection.sizes["trusted"] == 400
    assert len(selection.results) == len(default_candidates(purification=False)) == 13  # all without purification
    # the chroma swap, random grayscale (the compensation) and grayscale all defeat the colour shortcut; the
    # lightest at the top accuracy is the chroma swap (weight 2.0, tied with the mid compensation, first by name)
    assert selection.result("none").accuracy < 0.4 and selection.result("grayscale").accuracy > 0.9
    assert selection.result("comp-mid").accuracy > 0.9
    assert selection.chosen.name == "chroma-swap" and selection.result("chroma-swap").accuracy > 0.9
    assert defense.name == AUTO and defense.offline == ("chroma-swap",) and not defense.augment.compensate
