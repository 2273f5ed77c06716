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


def test_any_candidate_combination_is_a_harness_defence(cifar_small):
    from eclipse_loader.evaluation.baselines import jpeg_pixels
    from eclipse_loader.select.colour import chroma_pixels
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
