"""Baseline defences, the defence registry and the victims."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.compensation.functional import luma_uint8
from eclipse_loader.evaluation.baselines import grayscale, jpeg
from eclipse_loader.evaluation.defense_registry import DEFENSES, apply_offline, offline_steps
from eclipse_loader.evaluation.victim import paper_training, quick_cnn, resnet18_cifar


def test_jpeg_quality_orders_the_distortion(cifar_small):
    data = cifar_small.subset(np.arange(50))
    err = {q: np.abs(jpeg(data, q).images.astype(int) - data.images).mean() for q in (10, 95)}
    assert 0 < 3 * err[95] < err[10]
    with pytest.raises(ValueError, match="quality"):
        jpeg(data, 0)


def test_grayscale_is_the_pil_luma(cifar_small):
    data = cifar_small.subset(np.arange(10))
    gray = grayscale(data).images
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    expected = luma_uint8(torch.from_numpy(data.images).permute(0, 3, 1, 2))[:, 0].numpy()
    np.testing.assert_array_equal(gray[..., 0], expected)


def test_defense_registry_names_and_missing_step(cifar_small):
    assert set(DEFENSES) == {"none", "jpeg10", "grayscale", "jpeg10+grayscale", "gaussian-noise", "purification",
                             "compensation", "eclipse-paper", "eclipse"}
    assert DEFENSES["eclipse"].purifies and DEFENSES["eclipse"].augment.compensate
    assert DEFENSES["eclipse"].offline[0] == "repair-outliers" and DEFENSES["eclipse-paper"].purifies
    assert DEFENSES["gaussian-noise"].augment.p_gray == 0.0
    with pytest.raises(KeyError, match="purify"):
        apply_offline(DEFENSES["eclipse"], cifar_small, offline_steps(purify=None))
    both = apply_offline(DEFENSES["jpeg10+grayscale"], cifar_small.subset(np.arange(5)), offline_steps())
    assert (both.images[..., 0] == both.images[..., 2]).mean() > 0.9


def test_victims_shapes_and_paper_training():
    model = resnet18_cifar(10)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert quick_cnn(10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    training = paper_training()
    assert (training.epochs, training.batch_size, training.lr, training.schedule, training.weight_decay) == (80, 128, 0.1,
                                                                                                   "constant", 0.0)


def test_chroma_low_pass_keeps_luma_and_flattens_colour_within_blocks(cifar_small):
    from eclipse_loader.evaluation.baselines import chroma, chroma_low_pass, chroma_pixels

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


def test_any_candidate_combination_is_a_harness_defence(cifar_small):
    from eclipse_loader.evaluation.baselines import chroma_pixels, jpeg_pixels
    from eclipse_loader.evaluation.defense_registry import candidate_defense, named_candidate

    defense = candidate_defense(named_candidate("chroma8+jpeg10"), name="candidate:chroma8+jpeg10")
    assert defense.offline == ("chroma8", "jpeg10") and not defense.purifies
    data = cifar_small.subset(np.arange(4))
    np.testing.assert_array_equal(apply_offline(defense, data, offline_steps()).images,
                                  jpeg_pixels(chroma_pixels(data.images, 8), 10))
    assert candidate_defense(named_candidate("jpeg10+purify100")).offline == ("jpeg10", "purify")
    with pytest.raises(KeyError, match="no selection candidate 'blur3'"):
        named_candidate("blur3")
    with pytest.raises(ValueError, match="chroma blocks"):
        candidate_defense(named_candidate("chroma5"))
