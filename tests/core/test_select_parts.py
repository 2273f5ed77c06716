"""Parts of the defence selection: RSK+FF, candidates, intervals and the choice rule, the budget plan, recipes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eclipse_loader.recipes import DEFAULT_RECIPE, PAPER_RECIPE, Recipe, load_recipe, save_recipe
from eclipse_loader.select.augment import (RandomSharpenFrequencyFilter, dct_low_pass, dct_matrix, rsk_ff_keyed,
                                           random_sharpen_kernels, rsk_ff, sharpen)
from eclipse_loader.select.budget import plan
from eclipse_loader.select.candidates import COMPENSATION_LEVELS, Candidate, default_candidates
from eclipse_loader.select.proxy import ProxySettings
from eclipse_loader.select.stats import choose, paired_difference_interval, wilson_interval


def test_dct_matrix_is_orthonormal_and_full_keep_is_identity():
    d = dct_matrix(16)
    torch.testing.assert_close(d @ d.T, torch.eye(16, dtype=torch.float64))
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(dct_low_pass(x, keep=1.0), x)


def test_low_pass_removes_a_checkerboard_and_keeps_a_flat_image():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = (0.5 + 0.4 * (-1.0) ** (yy + xx)).to(torch.float64).expand(1, 3, 32, 32)
    # the checkerboard's +-0.4 leaves at most a small leak (it is not exactly one DCT-II basis vector)
    assert (dct_low_pass(checker, 0.3) - 0.5).abs().max() < 0.05
    flat = torch.full((1, 3, 32, 32), 0.7, dtype=torch.float64)
    torch.testing.assert_close(dct_low_pass(flat, 0.3), flat)


def test_sharpening_kernels_follow_the_paper():
    kernels = random_sharpen_kernels(4000, torch.Generator().manual_seed(0))
    centre = kernels[:, 1, 1]
    assert abs(centre.mean().item() - 2.5) < 0.01 and abs(centre.std().item() - 0.1) < 0.01
    assert torch.all(kernels[:, [0, 0, 2, 2], [0, 2, 0, 2]] == 0)  # corners are zero
    assert abs(kernels.sum((1, 2)).mean().item() - 1.0) < 0.02  # the mean kernel sums to 1
    identity = torch.zeros(1, 3, 3, dtype=torch.float64)
    identity[0, 1, 1] = 1.0
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(sharpen(x, identity), x)


def test_rsk_ff_on_uint8_batches_is_seeded_and_keeps_shape():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a = rsk_ff(images, torch.Generator().manual_seed(1))
    b = rsk_ff(images, torch.Generator().manual_seed(1))
    c = rsk_ff(images, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert RandomSharpenFrequencyFilter()(images[0]).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="uint8 batch"):
        rsk_ff(images.float())
    with pytest.raises(ValueError, match="keep"):
        RandomSharpenFrequencyFilter(keep=0.0)


def test_default_candidates_cover_the_issue_list():
    names = [c.name for c in default_candidates()]
    assert len(names) == len(set(names)) == 24
    for required in ("none", "repair", "jpeg10", "jpeg30", "grayscale", "chroma-swap", "chroma4", "comp-mild", "comp-mid",
                     "comp-paper", "rsk-ff", "grayscale+jpeg10", "purify100+comp-paper", "repair+purify400+comp-mid"):
        assert required in names
    for t in (100, 200, 400, 600):
        assert f"purify{t}" in names and f"repair+purify{t}" in names
    assert names[0] == "none"
    weights = [c.weight for c in default_candidates()]
    assert weights == sorted(weights)
    assert len(default_candidates(purification=False)) == 13
    assert COMPENSATION_LEVELS["mid"] == (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma)
    assert COMPENSATION_LEVELS["paper"] == (PAPER_RECIPE.p_gray, PAPER_RECIPE.sigma)
    with pytest.raises(ValueError, match="compensation"):
        Candidate(compensation="strong")


def test_candidate_recipes_round_trip_through_a_file(tmp_path):
    default_like = Candidate(repair=True, t_star=400, compensation="mid").to_recipe()
    assert default_like == DEFAULT_RECIPE  # the product default is one of the candidates, exactly
    recipe = Candidate(grayscale=True, jpeg=10, augment="rsk-ff", mix_trusted=True).to_recipe()
    assert (recipe.purification, recipe.grayscale, recipe.jpeg_quality, recipe.augment, recipe.mix_trusted) == (
        False, True, 10, "rsk-ff", True)
    assert (recipe.p_gray, recipe.sigma, recipe.repair_threshold) == (0.0, 0.0, None)
    path = save_recipe(recipe, tmp_path / "r.json", chosen="x")
    assert load_recipe(path) == recipe and load_recipe(str(path)) == recipe
    assert load_recipe("paper") == PAPER_RECIPE


def test_load_recipe_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        load_recipe("fast")
    with pytest.raises(FileNotFoundError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_recipe(bad)
    bad.write_text(json.dumps({"recipe": {**DEFAULT_RECIPE.to_dict(), "colour": 1}}))
    with pytest.raises(ValueError, match="unknown recipe field"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="augment"):
        Recipe(**{**DEFAULT_RECIPE.to_dict(), "augment": "warp"})


def test_wilson_interval_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_paired_interval_and_choice_rule():
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.5
    same = base.copy()
    same[:5] = ~same[:5]  # 5 images of 1000 differ: noise
    better = base.copy()
    better[np.flatnonzero(~base)[:150]] = True  # +15 points
    nearly = better.copy()
    nearly[np.flatnonzero(better)[:3]] = False  # 0.3 points below `better`
    diff, low, high = paired_difference_interval(better, base)
    assert diff == pytest.approx(0.15) and 0 < low < diff < high
    assert choose(["none", "a"], [0, 1], [base, same]).name == "none"
    assert choose(["none", "a"], [0, 1], [base, better]).name == "a"
    # the heavier `better` and the lighter `nearly` are within the noise of each other: the lighter wins
    choice = choose(["none", "heavy", "light"], [0, 5, 2], [base, better, nearly])
    assert choice.name == "light" and "lightest" in choice.reason
    # ... unless the gap exceeds tie_points
    assert choose(["none", "heavy", "light"], [0, 5, 2], [base, better, nearly], tie_points=0.001).name == "heavy"
    # a required gain above what `better` shows keeps "none"
    assert choose(["none", "a"], [0, 1], [base, better], min_gain=0.2).name == "none"
    # tie_break="best": the best wins the same tie; "none" still needs a candidate beyond the noise
    best = choose(["none", "heavy", "light"], [0, 5, 2], [base, better, nearly], tie_break="best")
    assert best.name == "heavy" and "best validation accuracy" in best.reason
    assert choose(["none", "a"], [0, 1], [base, same], tie_break="best").name == "none"
    with pytest.raises(ValueError, match="tie_break"):
        choose(["none", "a"], [0, 1], [base, better], tie_break="heaviest")


def test_budget_plan_shrinks_images_then_epochs():
    req = ProxySettings(images=2000, epochs=30)
    # 20 trainings at 1 ms per image-epoch: 2000 x 30 x 20 ms = 20 min
    full = plan(req, None, 10, 20, 0, 1e-3, 0.0)
    assert full.proxy == req and full.estimated_minutes == pytest.approx(20.0) and full.within_budget
    images_only = plan(req, 10.0, 10, 20, 0, 1e-3, 0.0)
    assert images_only.proxy.epochs == 30 and images_only.proxy.images == 1000 and images_only.within_budget
    epochs_too = plan(req, 2.0, 10, 20, 0, 1e-3, 0.0)
    assert epochs_too.proxy.images == 500 and epochs_too.proxy.epochs == 12 and epochs_too.within_budget
    floor = plan(req, 0.1, 10, 20, 0, 1e-3, 0.0)
    assert (floor.proxy.images, floor.proxy.epochs, floor.within_budget) == (500, 10, False)
    assert floor.to_dict()["shrunk"] is True
    with pytest.raises(ValueError, match="budget_minutes"):
        plan(req, 0.0, 10, 20, 0, 1e-3, 0.0)


def test_keyed_rsk_ff_depends_on_the_sample_not_the_batch():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    idx = torch.arange(10, 16)
    whole = rsk_ff_keyed(images, idx, seed=3, epoch=1)
    parts = torch.cat([rsk_ff_keyed(images[:2], idx[:2], 3, 1), rsk_ff_keyed(images[2:], idx[2:], 3, 1)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, rsk_ff_keyed(images, idx, seed=3, epoch=2))


def test_recipe_offline_steps_match_the_candidate_path():
    from eclipse_loader.select.offline import apply_offline, apply_recipe_offline

    from .select_data import stripes

    data = stripes(12, seed=0, size=32)
    data.images[:, 5, 5] = (255, 0, 255)  # an outlier for the repair to find
    fake = lambda images, t_star: (images // 2 + t_star // 100).astype(np.uint8)  # noqa: E731
    for cand in (Candidate(repair=True, jpeg=10), Candidate(grayscale=True, jpeg=30, t_star=200),
                 Candidate(repair=True, t_star=400)):
        expected = apply_offline(cand, data, fake)
        np.testing.assert_array_equal(apply_recipe_offline(cand.to_recipe(), data, fake).images, expected.images)
    with pytest.raises(ValueError, match="purify_fn"):
        apply_recipe_offline(DEFAULT_RECIPE, data)


def test_offline_steps_run_lazily_block_by_block_give_the_same_pixels():
    """`offline_steps_lazily` (what `purify` hands the purification pass) equals running the recipe's
    steps up front, by any indexing; its cache key names the steps and the source's pixels."""
    from dataclasses import replace

    from eclipse_loader.data.mapped_images import MappedImages
    from eclipse_loader.select.offline import offline_steps_lazily, recipe_before_purification

    from .select_data import stripes

    data = stripes(12, seed=0, size=32)
    data.images[:, 5, 5] = (255, 0, 255)  # an outlier for the repair to find
    recipe = replace(DEFAULT_RECIPE, grayscale=True, jpeg_quality=30)
    whole = recipe_before_purification(recipe, data).images
    lazy = offline_steps_lazily(recipe, data)
    assert isinstance(lazy.images, MappedImages) and lazy.images.shape == whole.shape
    np.testing.assert_array_equal(np.concatenate([lazy.images[a:a + 5] for a in range(0, 12, 5)]), whole)
    np.testing.assert_array_equal(lazy.images[np.array([7, 2])], whole[[7, 2]])
    np.testing.assert_array_equal(lazy.images[3], whole[3])
    np.testing.assert_array_equal(lazy.materialised().images, whole)
    assert not np.array_equal(whole, data.images)
    keys = {lazy.fingerprint(), data.fingerprint(), offline_steps_lazily(replace(recipe, jpeg_quality=31), data).fingerprint()}
    assert len(keys) == 3 and lazy.fingerprint() == offline_steps_lazily(recipe, data).fingerprint()


def test_denoiser_purify_never_repairs_and_refuses_t_star_beyond_training(tmp_path):
    from eclipse_loader.denoiser.io import save_denoiser
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig
    from eclipse_loader.select.offline import DenoiserPurify, unservable_reason

    torch.manual_seed(0)
    unet, scheduler = build_unet("tiny"), build_scheduler()
    save_denoiser(unet, scheduler, tmp_path / "dn", {"t_max": 9})
    purify = DenoiserPurify(tmp_path / "dn", steps=1, seed=3)
    images = np.full((2, 32, 32, 3), 120, dtype=np.uint8)
    images[:, 7, 7] = 255  # an isolated outlier: a repairing purifier would remove it first
    expected = Purifier(unet, scheduler, PurifyConfig(t_star=5, steps=1, seed=3, repair_threshold=None),
                        device="cpu").purify(images, range(2))
    np.testing.assert_array_equal(purify(images, 5), expected)
    assert purify.t_max == 9 and unservable_reason(Candidate(t_star=10), purify) is None
    assert "t <= 9" in unservable_reason(Candidate(t_star=11), purify)
    with pytest.raises(ValueError, match="t <= 9"):
        purify(images, 11)


def test_candidate_names_read_back_and_bad_names_are_refused():
    for cand in default_candidates():
        assert Candidate.from_name(cand.name) == cand
    combo = Candidate.from_name("repair+chroma8+jpeg10+purify100+rsk-ff+comp-mid+trusted")
    assert combo == Candidate(repair=True, chroma=8, jpeg=10, t_star=100, augment="rsk-ff", compensation="mid",
                              mix_trusted=True)
    assert Candidate.from_name("none") == Candidate()
    for bad, message in (("jpeg10+purify", "cannot read 'purify'"), ("purify100+jpeg10", "must be in the order"),
                         ("jpeg10+jpeg30", "cannot read 'jpeg30'"), ("grayscale+chroma8", "give one of them"),
                         ("comp-strong", "candidate name 'comp-strong': compensation")):
        with pytest.raises(ValueError, match=message):
            Candidate.from_name(bad)


def test_chroma_candidate_is_lighter_than_grayscale_and_runs_through_its_recipe():
    from eclipse_loader.select.colour import chroma_pixels
    from eclipse_loader.select.offline import apply_offline, apply_recipe_offline, offline_steps_lazily

    from .select_data import stripes

    cand = Candidate(chroma=8, jpeg=30)
    assert Candidate(chroma=8).weight < Candidate(grayscale=True).weight and cand.offline
    recipe = cand.to_recipe()
    assert (recipe.chroma_block, recipe.jpeg_quality, recipe.purification) == (8, 30, False)
    data = stripes(6, seed=1, size=32)
    expected = apply_offline(cand, data).images
    np.testing.assert_array_equal(apply_recipe_offline(recipe, data).images, expected)
    np.testing.assert_array_equal(offline_steps_lazily(recipe, data).images[0:6], expected)
    np.testing.assert_array_equal(apply_offline(Candidate(chroma=8), data).images, chroma_pixels(data.images, 8))
    with pytest.raises(ValueError, match="chroma_block"):
        Recipe(**{**DEFAULT_RECIPE.to_dict(), "chroma_block": 0})
    with pytest.raises(ValueError, match="give one of them"):
        Candidate(grayscale=True, chroma=4)
