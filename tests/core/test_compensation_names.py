"""`CorruptionCompensation` keeps nn.Module's ``apply(fn)`` and torchvision v2's contract: the random
keys of the unindexed path are drawn once per call in ``make_params`` and shared by every input."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from eclipse_loader.compensation import functional as F
from eclipse_loader.compensation.transform import CorruptionCompensation


def batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_apply_fn_is_nn_modules_also_when_a_container_recurses():
    comp = CorruptionCompensation()
    seen: list[str] = []
    torch.nn.Sequential(v2.ToImage(), comp).apply(lambda m: seen.append(type(m).__name__))  # recurses into comp
    assert "CorruptionCompensation" in seen
    assert comp.apply(fn=lambda m: None) is comp


def test_the_old_indexed_apply_still_works_but_warns():
    comp = CorruptionCompensation(p_gray=0.5, sigma=0.05, seed=3)
    images, idx = batch(), torch.arange(10, 16)
    with pytest.warns(DeprecationWarning, match="use compensate"):
        old = comp.apply(images, idx, epoch=2)
    assert torch.equal(old, comp.compensate(images, idx, epoch=2))
    assert not torch.equal(old, images)


def test_make_params_draws_one_key_per_batch_position():
    comp = CorruptionCompensation()
    torch.manual_seed(5)
    params = comp.make_params([batch(4), batch(7)[0]])
    assert params["keys"].shape == (4,) and params["keys"].dtype == torch.int64
    assert len(comp.make_params([batch(1)[0]])["keys"]) == 1


def test_unindexed_call_uses_the_keys_of_make_params():
    comp = CorruptionCompensation(p_gray=0.5, sigma=0.05)
    images = batch()
    torch.manual_seed(11)
    out = comp(images)
    torch.manual_seed(11)
    keys = torch.randint(0, 2**32, (len(images),), dtype=torch.int64)  # the draw the transform made before
    assert torch.equal(out, F.compensate_with_keys(images, keys, p_gray=0.5, sigma=0.05))


def test_an_image_and_a_video_of_one_sample_share_the_draws():
    comp = CorruptionCompensation(p_gray=0.5, sigma=0.05)
    frames = batch(5)
    image, video = comp(tv_tensors.Image(frames), tv_tensors.Video(frames.clone()))
    assert isinstance(video, tv_tensors.Video) and torch.equal(image.as_subclass(torch.Tensor),
                                                               video.as_subclass(torch.Tensor))
    assert not torch.equal(image.as_subclass(torch.Tensor), frames)
