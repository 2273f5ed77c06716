"""Isolated-outlier repair: removes the one-pixel shortcut, leaves clean images almost untouched."""
from __future__ import annotations

import numpy as np
import pytest

from eclipse_loader.poisons import one_pixel_shortcut
from eclipse_loader.purify.outliers import isolated_outliers, repair_isolated_pixels


def test_a_planted_pixel_is_found_and_replaced_by_the_neighbour_median():
    images = np.full((1, 5, 5, 3), 100, np.uint8)
    images[0, :, :, 1] = 120
    images[0, 2, 2] = (255, 0, 255)
    repaired, count = repair_isolated_pixels(images, threshold=48)
    assert count == 1
    assert tuple(repaired[0, 2, 2]) == (100, 120, 100)
    assert (repaired[0][np.arange(5) != 2] == images[0][np.arange(5) != 2]).all()


def test_ops_pixels_are_mostly_repaired_and_clean_pixels_kept(cifar_small):
    poisoned = one_pixel_shortcut(cifar_small)
    planted = (poisoned.images != cifar_small.images).any(-1)
    found = isolated_outliers(poisoned.images)
    assert found[planted].mean() > 0.75
    clean_flags = isolated_outliers(cifar_small.images)
    assert clean_flags.mean() < 0.001
    repaired, _ = repair_isolated_pixels(poisoned.images)
    still_planted = planted & (repaired == poisoned.images).all(-1)
    assert still_planted.sum() < 0.25 * planted.sum()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        isolated_outliers(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        isolated_outliers(np.zeros((1, 4, 4, 3), np.uint8), threshold=300)
