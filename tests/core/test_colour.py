"""`eclipse_loader.select.colour`: the chroma low-pass and the chroma swap, eager and read lazily."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from eclipse_loader.data.donor_images import DonorMappedImages
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.recipes import DEFAULT_RECIPE, Recipe
from eclipse_loader.select.candidates import Candidate
from eclipse_loader.select.colour import (chroma, chroma_donors, chroma_low_pass, chroma_pixels, swap_chroma,
                                          swap_chroma_float, swap_chroma_pixels, to_ycbcr)


def test_chroma_low_pass_keeps_luma_and_flattens_colour_within_blocks(cifar_small):
    data = cifar_small.subset(np.arange(20))
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float()
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    out = chroma_low_pass(x, 8)
    torch.testing.assert_close(luma(out), luma(x), atol=1e-3, rtol=0)
    torch.testing.assert_close(chroma_low_pass(x, 1), x, atol=1e-3, rtol=0)  # block 1: every pixel its own colour
    # a colour pattern finer than the block is gone, its mean colour stays
    checker = torch.zeros(1, 3, 32, 32)
    checker[0, 0, ::2, ::2] = checker[0, 0, 1::2, 1::2] = 200.0
    flat = chroma_low_pass(checker, 4)
    assert (flat[0, 0] - flat[0, 1]).std() < 1.0 < (checker[0, 0] - checker[0, 1]).std()
    # whole-image block on 32 px: one chroma for the whole image
    single = chroma_low_pass(x[:2], 32)
    cb = -0.168736 * single[:, 0] - 0.331264 * single[:, 1] + 0.5 * single[:, 2]
    assert float(cb.flatten(1).std(1).max()) < 1e-3
    pixels = chroma_pixels(data.images, 8)
    assert pixels.dtype == np.uint8 and pixels.shape == data.images.shape
    np.testing.assert_array_equal(pixels[3:5], chroma_pixels(data.images[3:5], 8))  # each image on its own
    np.testing.assert_array_equal(chroma(data, 8).images, pixels)
    assert 0 < np.abs(pixels.astype(int) - data.images).mean() < np.abs(chroma_pixels(data.images, 16).astype(int)
                                                                         - data.images).mean()
    with pytest.raises(ValueError, match="block"):
        chroma_low_pass(x, 0)


def _cifar_like(count: int, seed: int = 0) -> LabelledImages:
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 166, (count, 1, 1, 3))  # one (in-gamut after a swap) colour per image, plus texture
    images = np.clip(base + rng.integers(-20, 21, (count, 16, 16, 3)), 0, 255).astype(np.uint8)
    return LabelledImages(images, rng.integers(0, 10, count), 10)


def test_chroma_donors_are_a_seeded_derangement():
    donors = chroma_donors(50)
    assert sorted(donors) == list(range(50)) and not (donors == np.arange(50)).any()
    np.testing.assert_array_equal(donors, chroma_donors(50))
    assert not np.array_equal(donors, chroma_donors(50, seed=1))
    np.testing.assert_array_equal(chroma_donors(1), [0])
    with pytest.raises(ValueError, match="count"):
        chroma_donors(0)


def test_swap_keeps_the_luma_and_takes_the_donors_chroma():
    data = _cifar_like(8)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float()
    donors = x.roll(1, 0)
    out = swap_chroma_float(x, donors)
    torch.testing.assert_close(to_ycbcr(out)[:, 0], to_ycbcr(x)[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(to_ycbcr(out)[:, 1:], to_ycbcr(donors)[:, 1:], atol=1e-3, rtol=0)
    swapped = swap_chroma(data)
    order = chroma_donors(8)
    np.testing.assert_array_equal(swapped.images, swap_chroma_pixels(data.images, data.images[order]))
    np.testing.assert_array_equal(swapped.labels, data.labels)
    # the mean colour (chroma) of each image is now its donor's
    mean_cb = lambda imgs: to_ycbcr(torch.from_numpy(imgs).permute(0, 3, 1, 2).float())[:, 1].mean((1, 2))  # noqa: E731
    torch.testing.assert_close(mean_cb(swapped.images), mean_cb(data.images)[order], atol=1.5, rtol=0)
    with pytest.raises(ValueError, match="differ in shape"):
        swap_chroma_float(x, x[:3])


def test_donor_mapped_images_read_block_by_block_as_the_whole_set():
    data = _cifar_like(12, seed=2)
    donors = chroma_donors(12)
    whole = swap_chroma_pixels(data.images, data.images[donors])
    lazy = DonorMappedImages(data.images, donors, swap_chroma_pixels, "swap")
    np.testing.assert_array_equal(np.concatenate([lazy[a:a + 5] for a in range(0, 12, 5)]), whole)
    np.testing.assert_array_equal(lazy[np.array([9, 2, 2])], whole[[9, 2, 2]])
    np.testing.assert_array_equal(lazy[-1], whole[-1])
    np.testing.assert_array_equal(np.asarray(lazy), whole)
    with pytest.raises(ValueError, match="donors"):
        DonorMappedImages(data.images, donors[:5], swap_chroma_pixels, "swap")
    with pytest.raises(IndexError):
        lazy[12]


def test_recipe_with_the_chroma_swap_lazily_equals_up_front_and_its_candidate():
    from eclipse_loader.select.offline import (apply_offline, offline_steps_lazily, recipe_before_purification)

    data = _cifar_like(10, seed=3)
    data.images[:, 5, 5] = (255, 0, 255)  # an outlier for the repair to find, before the swap
    recipe = replace(DEFAULT_RECIPE, chroma_swap=True, jpeg_quality=30, purification=False)
    whole = recipe_before_purification(recipe, data).images
    lazy = offline_steps_lazily(recipe, data)
    np.testing.assert_array_equal(np.concatenate([lazy.images[a:a + 4] for a in range(0, 10, 4)]), whole)
    np.testing.assert_array_equal(lazy.images[np.array([7, 1])], whole[[7, 1]])
    cand = Candidate(repair=True, chroma_swap=True, jpeg=30)
    assert Candidate.from_name("repair+chroma-swap+jpeg30") == cand and cand.to_recipe().chroma_swap
    np.testing.assert_array_equal(apply_offline(cand, data).images, whole)
    plain = offline_steps_lazily(replace(recipe, chroma_swap=False), data)
    assert plain.fingerprint() != lazy.fingerprint() and not np.array_equal(plain.images[:], whole)
    with pytest.raises(ValueError, match="each replace the chroma"):
        Recipe(**{**DEFAULT_RECIPE.to_dict(), "chroma_swap": True, "grayscale": True})
    with pytest.raises(ValueError, match="give one of them"):
        Candidate(chroma_swap=True, chroma=8)
