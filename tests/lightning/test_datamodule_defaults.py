"""One meaning of "default": EclipseDataModule and the integrations take every compensation and
purification default from `eclipse_loader.recipes.DEFAULT_RECIPE`; the paper's only by name."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eclipse_loader import EclipseDataModule
from eclipse_loader.recipes import DEFAULT_RECIPE, PAPER_RECIPE

from ..conftest import requires_ffcv

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "integrations" / "lightning_cli"


@pytest.mark.parametrize("name, recipe", [("default", DEFAULT_RECIPE), ("paper", PAPER_RECIPE)])
def test_datamodule_settings_are_the_recipes(name, recipe):
    dm = EclipseDataModule(train="embedded:train", backend="torch") if name == "default" else \
        EclipseDataModule(train="embedded:train", backend="torch", recipe=name)
    assert (dm.augment.p_gray, dm.augment.sigma) == (recipe.p_gray, recipe.sigma)
    assert dm.purify_config() == recipe.purify_config(sampler="ddpm", seed=0)
    assert dm.purify_config().t_star == recipe.t_star


def test_explicit_values_override_the_recipe():
    dm = EclipseDataModule(train="embedded:train", backend="torch", recipe="paper", p_gray=0.1, t_star=50)
    assert (dm.augment.p_gray, dm.augment.sigma) == (0.1, PAPER_RECIPE.sigma)
    assert dm.purify_config().t_star == 50


def test_printed_lightning_cli_config_agrees_with_the_recipe():
    """`fit --config config.yaml --print_config` once printed `recipe: default` beside the paper's values."""
    proc = subprocess.run([sys.executable, str(CLI / "train_cifar.py"), "fit", "--config", str(CLI / "config.yaml"),
                           "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = yaml.safe_load(proc.stdout)["data"]
    assert data["recipe"] == "default"
    for key, value in [("p_gray", DEFAULT_RECIPE.p_gray), ("sigma", DEFAULT_RECIPE.sigma),
                       ("t_star", DEFAULT_RECIPE.t_star), ("purify_steps", DEFAULT_RECIPE.purify_steps),
                       ("repair_threshold", DEFAULT_RECIPE.repair_threshold)]:
        assert data[key] in (None, value), (key, data[key], value)


@requires_ffcv
def test_the_ffcv_script_takes_its_compensation_defaults_from_the_recipe():
    import importlib.util

    path = ROOT / "integrations" / "ffcv" / "train_cifar_ffcv.py"
    spec = importlib.util.spec_from_file_location("train_cifar_ffcv", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    base = ["--train-dataset", "a.beton", "--val-dataset", "b.beton"]
    default = script.parse_args(base)
    assert (default.p_gray, default.sigma) == (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma)
    paper = script.parse_args(base + ["--recipe", "paper"])
    assert (paper.p_gray, paper.sigma) == (PAPER_RECIPE.p_gray, PAPER_RECIPE.sigma)
    assert script.parse_args(base + ["--recipe", "paper", "--sigma", "0.01"]).sigma == 0.01


def test_a_recipe_file_sets_the_defaults_and_offline_steps_are_refused(tmp_path):
    from dataclasses import replace

    from eclipse_loader.recipes import save_recipe

    tuned = save_recipe(replace(DEFAULT_RECIPE, p_gray=0.1, sigma=0.02, t_star=300, denoiser_t_max=299),
                        tmp_path / "recipe.json")
    dm = EclipseDataModule(train="embedded:train", backend="torch", recipe=str(tuned))
    assert (dm.augment.p_gray, dm.augment.sigma, dm.purify_config().t_star) == (0.1, 0.02, 300)
    offline = save_recipe(replace(DEFAULT_RECIPE, grayscale=True, jpeg_quality=10), tmp_path / "offline.json")
    with pytest.raises(ValueError, match="sets grayscale, jpeg_quality, which EclipseDataModule does not apply"):
        EclipseDataModule(train="embedded:train", backend="torch", recipe=str(offline))
    with pytest.raises(ValueError, match="unknown recipe 'papr'"):
        EclipseDataModule(train="embedded:train", backend="torch", recipe="papr")
