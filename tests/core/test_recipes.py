"""Named recipes: one source of defaults for the CLI, the data module, the demo and the harness."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from eclipse_loader.denoiser.io import check_serves_t_star, save_denoiser
from eclipse_loader.denoiser.presets import build_scheduler, build_unet
from eclipse_loader.evaluation.defense_registry import DEFENSES
from eclipse_loader.purify.outliers import repair_isolated_pixels
from eclipse_loader.purify.purifier import Purifier, PurifyConfig
from eclipse_loader.recipes import RECIPES, get_recipe


def test_default_and_paper_recipes():
    default, paper = RECIPES["default"], RECIPES["paper"]
    assert (paper.t_star, paper.purify_steps, paper.repair_threshold, paper.p_gray, paper.sigma) == (100, None, None, 0.4, 0.05)
    assert default.repair_threshold is not None and default.t_star > paper.t_star
    assert default.denoiser_t_max >= default.t_star - 1
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        get_recipe("fast")
    assert default.with_overrides(t_star=800).denoiser_t_max == 799  # the denoiser range follows t*
    assert default.with_overrides(p_gray=None) == default
    with pytest.raises(ValueError, match="cannot serve"):
        default.with_overrides(t_star=800, denoiser_t_max=99)


def test_harness_defences_follow_the_recipes():
    eclipse, paper = DEFENSES["eclipse"], DEFENSES["eclipse-paper"]
    d = RECIPES["default"]
    assert eclipse.offline == ("repair-outliers", "purify")
    assert (eclipse.purify.t_star, eclipse.purify.steps, eclipse.purify.denoiser_t_max) == (d.t_star, d.purify_steps,
                                                                                             d.denoiser_t_max)
    assert (eclipse.augment.p_gray, eclipse.augment.sigma) == (d.p_gray, d.sigma)
    assert paper.offline == ("purify",) and (paper.augment.p_gray, paper.augment.sigma) == (0.4, 0.05)


@pytest.fixture(scope="module")
def purifier_parts():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet("tiny")
    return unet, build_scheduler()


def test_repair_runs_inside_the_purifier(purifier_parts, cifar_small):
    unet, scheduler = purifier_parts
    images = cifar_small.images[:6].copy()
    images[:, 10, 10] = (255, 0, 255)  # an isolated outlier in every image
    indices = range(6)
    plain = Purifier(unet, scheduler, PurifyConfig(t_star=5, steps=1, repair_threshold=None), device="cpu")
    with_repair = Purifier(unet, scheduler, PurifyConfig(t_star=5, steps=1, repair_threshold=48), device="cpu")
    repaired, count = repair_isolated_pixels(images, 48)
    assert count >= 6
    np.testing.assert_array_equal(with_repair.purify(images, indices), plain.purify(repaired, indices))
    assert not np.array_equal(with_repair.purify(images, indices), plain.purify(images, indices))


def test_repair_threshold_validated_and_left_out_of_old_cache_keys():
    assert "repair_threshold" not in PurifyConfig(t_star=100, repair_threshold=None).to_dict()
    assert PurifyConfig(t_star=100, repair_threshold=48).to_dict()["repair_threshold"] == 48
    with pytest.raises(ValueError, match="repair_threshold"):
        PurifyConfig(repair_threshold=300)


def test_a_denoiser_trained_on_low_noise_refuses_a_higher_t_star(tmp_path, purifier_parts):
    unet, scheduler = purifier_parts
    path = save_denoiser(unet, scheduler, tmp_path / "d", metadata={"t_max": 99})
    check_serves_t_star(path, 100)
    with pytest.raises(ValueError, match=r"t <= 99.*t\*=400.*--t-max 399"):
        check_serves_t_star(path, 400)


def _purify_args(*argv: str) -> argparse.Namespace:
    from eclipse_loader.cli import build_parser

    return build_parser().parse_args(["purify", "src", "den", "out.beton", *argv])


def test_purify_command_takes_the_recipe_and_explicit_flags():
    from eclipse_loader.commands.purify import purify_config_from_args as config_from_args

    default = config_from_args(_purify_args())
    assert (default.t_star, default.steps, default.repair_threshold) == (400, 2, 48)
    paper = config_from_args(_purify_args("--recipe", "paper"))
    assert (paper.t_star, paper.steps, paper.repair_threshold) == (100, None, None)
    custom = config_from_args(_purify_args("--t-star", "200", "--steps", "full", "--no-repair"))
    assert (custom.t_star, custom.steps, custom.repair_threshold) == (200, None, None)
    by_noise = config_from_args(_purify_args("--noise-std", "0.1"))
    assert by_noise.t_star is None and by_noise.noise_std == 0.1
    with pytest.raises(ValueError, match="not both"):
        config_from_args(_purify_args("--t-star", "200", "--noise-std", "0.1"))
    with pytest.raises(ValueError, match="not both"):
        config_from_args(_purify_args("--repair-threshold", "30", "--no-repair"))
    with pytest.raises(ValueError, match="exceeds t"):
        config_from_args(_purify_args("--t-star", "10", "--steps", "11"))


def test_datamodule_defaults_come_from_the_recipe():
    from eclipse_loader import EclipseDataModule

    dm = EclipseDataModule(train="embedded:train", backend="torch")
    assert (dm.augment.p_gray, dm.augment.sigma) == (RECIPES["default"].p_gray, RECIPES["default"].sigma)
    assert dm.purify_config().repair_threshold == RECIPES["default"].repair_threshold
    paper = EclipseDataModule(train="embedded:train", backend="torch", recipe="paper", p_gray=0.3)
    assert (paper.augment.p_gray, paper.augment.sigma) == (0.3, 0.05)
    assert paper.purify_config().t_star == 100 and paper.purify_config().steps is None
    assert paper.purify_config().repair_threshold is None
