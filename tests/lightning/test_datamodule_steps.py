"""``purify_steps`` of EclipseDataModule means what ``eclipse-loader purify --steps`` means:
a positive number, ``"full"`` or None (the recipe's); 0 is refused with a line naming the argument."""
from __future__ import annotations

import pytest

from eclipse_loader import EclipseDataModule
from eclipse_loader.recipes import DEFAULT_RECIPE


def datamodule(**kwargs) -> EclipseDataModule:
    return EclipseDataModule(train="embedded:train", backend="torch", **kwargs)


@pytest.mark.parametrize("steps, expected", [(None, DEFAULT_RECIPE.purify_steps), ("full", None), (3, 3)])
def test_purify_steps_reach_the_purify_config(steps, expected):
    assert datamodule(purify_steps=steps).purify_config().steps == expected


def test_full_is_the_whole_chain_of_t_star_calls_as_on_the_command_line():
    assert datamodule(purify_steps="full").purify_config() == DEFAULT_RECIPE.purify_config(steps="full", sampler="ddpm",
                                                                                            seed=0)


def test_zero_no_longer_means_the_full_chain():
    with pytest.raises(ValueError, match=r"purify_steps must be .*got 0 \(the full chain is purify_steps='full'\)"):
        datamodule(purify_steps=0)


@pytest.mark.parametrize("steps", [-1, True, "ful", 2.0])
def test_other_values_are_refused_naming_the_argument(steps):
    with pytest.raises(ValueError, match="purify_steps must be a positive integer, 'full' or None"):
        datamodule(purify_steps=steps)


@pytest.mark.parametrize("threshold, expected", [(None, DEFAULT_RECIPE.repair_threshold), ("off", None), (30, 30),
                                                 (0, 0)])
def test_repair_threshold_reaches_the_purify_config(threshold, expected):
    assert datamodule(repair_threshold=threshold).purify_config().repair_threshold == expected


@pytest.mark.parametrize("threshold", [-1, True, "none", 4.0])
def test_repair_has_no_negative_sentinel(threshold):
    hint = r" \(no repair is repair_threshold='off'\)" if threshold == -1 and threshold is not True else ""
    with pytest.raises(ValueError, match=r"repair_threshold must be a non-negative integer, 'off' or None .*" + hint):
        datamodule(repair_threshold=threshold)
