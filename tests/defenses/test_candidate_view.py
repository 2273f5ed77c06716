"""`poisons.candidate_view`: each auto candidate as the transform an adaptive EM optimises through."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.baselines import jpeg
from eclipse_loader.poisons import candidate_view
from eclipse_loader.purify.outliers import repair_isolated_pixels
from eclipse_loader.select.candidates import Candidate


def _batch(seed: int = 0) -> torch.Tensor:
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    return torch.from_numpy(pixels).float().div(255).requires_grad_(True)


def _uint8(x: torch.Tensor) -> np.ndarray:
    return x.detach().mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_grayscale_view_is_the_luma_and_passes_gradients():
    x = _batch()
    out = candidate_view(Candidate(grayscale=True))(x)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(out, luma[:, None].expand_as(x))
    out.sum().backward()
    # the luma feeds all 3 output channels: d(sum)/d(red) = 3 * 0.299, and so on
    torch.testing.assert_close(x.grad[:, :, 0, 0], 3 * torch.tensor([0.299, 0.587, 0.114]).expand(4, 3))


@pytest.mark.parametrize("candidate", [Candidate(jpeg=10), Candidate(repair=True)], ids=["jpeg10", "repair"])
def test_jpeg_and_repair_views_run_the_real_uint8_step_forward_and_the_identity_backward(candidate):
    x = _batch()
    out = candidate_view(candidate)(x)
    pixels = _uint8(x)
    data = LabelledImages(pixels, np.zeros(4, np.int64), 10)
    expected = jpeg(data, 10).images if candidate.jpeg else repair_isolated_pixels(pixels)[0]
    np.testing.assert_array_equal(_uint8(out), expected)
    assert not np.array_equal(expected, pixels), "the step changed the images (the test can fail)"
    weights = torch.randn_like(x)
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights)


def test_rsk_ff_and_compensation_views_draw_afresh_and_stay_in_range():
    x = _batch()
    for candidate in (Candidate(augment="rsk-ff"), Candidate(compensation="paper")):
        view = candidate_view(candidate)
        first, second = view(x), view(x)
        assert first.shape == x.shape and not torch.equal(first, second)
        assert 0 <= float(first.detach().min()) and float(first.detach().max()) <= 1
        first.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        x.grad = None


def test_none_is_the_identity_and_a_purifying_candidate_needs_its_denoiser():
    x = _batch()
    assert torch.equal(candidate_view(Candidate())(x), x)
    with pytest.raises(ValueError, match="purify100 purifies: pass its denoiser"):
        candidate_view(Candidate(t_star=100))


def test_purifying_view_calls_the_denoiser_once_per_batch():
    from eclipse_loader.denoiser import build_scheduler, build_unet

    torch.manual_seed(0)
    unet, scheduler = build_unet("tiny"), build_scheduler()
    calls = []
    unet.register_forward_hook(lambda module, args, output: calls.append(args[1].tolist()))
    x = _batch()
    out = candidate_view(Candidate(t_star=100, compensation="mild"), unet, scheduler.alphas_cumprod)(x)
    assert out.shape == x.shape and calls == [[99] * 4]
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_chroma_view_is_the_differentiable_low_pass_of_the_offline_step():
    from eclipse_loader.select.colour import chroma_low_pass, chroma_pixels

    x = _batch(3)
    out = candidate_view(Candidate(chroma=8))(x)
    torch.testing.assert_close(out, chroma_low_pass(x, 8))
    offline = chroma_pixels(_uint8(x), 8).astype(int)
    assert np.abs(_uint8(out.clamp(0, 1)).astype(int) - offline).max() <= 1  # the uint8 step, up to rounding
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_chroma_swap_view_gives_each_image_the_next_ones_chroma():
    from eclipse_loader.select.colour import swap_chroma_float

    x = _batch(4)
    out = candidate_view(Candidate(chroma_swap=True))(x)
    torch.testing.assert_close(out, swap_chroma_float(x, x.roll(-1, 0)))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
