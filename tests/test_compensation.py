"""CorruptionCompensation (torch) and CompensateFFCV (numba): semantics, statistics and exact agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from eclipse_loader import CorruptionCompensation
from eclipse_loader.compensation.functional import luma_uint8

from .conftest import requires_ffcv


def _chw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()


def test_zero_strength_is_exactly_the_identity(cifar):
    batch = _chw(cifar["train_x"][:64])
    comp = CorruptionCompensation(p_gray=0, sigma=0)
    assert torch.equal(comp.apply(batch, torch.arange(64)), batch)
    assert torch.equal(comp(batch), batch)
    assert torch.equal(comp(batch[0]), batch[0])


def test_luma_matches_pil_convert_L(cifar):
    import PIL.Image

    images = cifar["train_x"][:32]
    ours = luma_uint8(_chw(images))[:, 0].numpy()
    pil = np.stack([np.asarray(PIL.Image.fromarray(im).convert("L")) for im in images])
    assert np.array_equal(ours, pil)


def test_grayscale_fraction_and_noise_statistics():
    n = 4000
    flat = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    flat[:, 0] = 200  # coloured, so grayscale is visible
    gray_only = CorruptionCompensation(p_gray=0.4, sigma=0, seed=1).apply(flat, torch.arange(n))
    is_gray = (gray_only[:, 0] == gray_only[:, 1]).flatten(1).all(1)
    assert abs(is_gray.float().mean().item() - 0.4) < 0.03  # 4000 Bernoulli(0.4): std 0.008

    mid = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    noisy = CorruptionCompensation(p_gray=0, sigma=0.05, seed=2).apply(mid, torch.arange(n)).double() - 128
    assert abs(noisy.mean().item()) < 0.05
    assert abs(noisy.std().item() - np.sqrt(12.75**2 + 1 / 12)) < 0.05  # noise plus rounding
    channels = noisy.flatten(2)
    corr = torch.corrcoef(torch.stack([channels[:, 0].flatten(), channels[:, 1].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.01  # independent per channel, even on grayscale samples


def test_draws_are_keyed_by_seed_epoch_and_index_not_by_batch(cifar):
    batch = _chw(cifar["train_x"][:50])
    idx = torch.arange(100, 150)
    comp = CorruptionCompensation(seed=5)
    whole = comp.apply(batch, idx)
    pieces = torch.cat([comp.apply(batch[i : i + 7], idx[i : i + 7]) for i in range(0, 50, 7)])
    assert torch.equal(whole, pieces)
    assert torch.equal(comp.apply(batch[3], 103), whole[3])
    reversed_order = comp.apply(batch.flip(0), idx.flip(0)).flip(0)
    assert torch.equal(reversed_order, whole)
    comp.set_epoch(1)
    assert (comp.apply(batch, idx) != whole).float().mean() > 0.5  # redrawn next epoch
    assert not torch.equal(CorruptionCompensation(seed=6).apply(batch, idx), whole)


def test_v2_compose_and_per_sample_grayscale_without_indices(cifar):
    pipeline = v2.Compose([v2.RandomHorizontalFlip(), CorruptionCompensation(p_gray=0.5, sigma=0), v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(0)
    out = pipeline(_chw(cifar["train_x"][:200]))
    assert out.dtype == torch.float32 and out.shape == (200, 3, 32, 32)
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1).float().mean().item()
    assert 0.3 < gray < 0.7  # per sample, not all-or-nothing per batch
    torch.manual_seed(0)
    assert torch.equal(pipeline(_chw(cifar["train_x"][:200])), out)


def test_after_to_image_in_a_per_sample_pipeline(cifar):
    # what a torchvision user writes: uint8 HWC numpy -> ToImage (a tv_tensors.Image) -> ... -> ToDtype
    from torchvision import tv_tensors

    pipeline = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), CorruptionCompensation(), v2.ToDtype(torch.float32, scale=True)])
    out = pipeline(cifar["train_x"][0])
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.float32 and out.shape == (3, 32, 32)
    plain = CorruptionCompensation(p_gray=0, sigma=0)(torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert type(plain) is torch.Tensor


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="p_gray"):
        CorruptionCompensation(p_gray=1.5)
    with pytest.raises(ValueError, match="sigma"):
        CorruptionCompensation(sigma=-0.1)
    with pytest.raises(TypeError, match="uint8"):
        CorruptionCompensation()(torch.rand(3, 8, 8))


@requires_ffcv
@pytest.mark.parametrize("compiled", [True, False])
def test_ffcv_operation_equals_torch_transform_exactly(cifar, compiled):
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    images = cifar["train_x"][:64]
    indices = np.arange(5000, 5064, dtype=np.uint64)
    was_enabled = Compiler.is_enabled
    try:
        Compiler.set_enabled(compiled)
        Compiler.set_num_threads(2)
        op = CompensateFFCV(p_gray=0.4, sigma=0.05, seed=11)
        state = State(jit_mode=True, device=torch.device("cpu"), shape=(32, 32, 3), dtype=np.dtype("u1"))
        _, query = op.declare_state_and_memory(state)
        fn = Compiler.compile(op.generate_code())
        for epoch in (0, 3):
            op.set_epoch(epoch)
            out = fn(images, np.empty((64, *query.shape), np.uint8), indices)
            ref = CorruptionCompensation(0.4, 0.05, seed=11)
            ref.set_epoch(epoch)
            expected = ref.apply(_chw(images), torch.from_numpy(indices.astype(np.int64))).permute(0, 2, 3, 1).numpy()
            assert np.array_equal(out, expected), f"epoch {epoch}: {(out != expected).sum()} values differ"
        assert not np.array_equal(out, images)
    finally:
        Compiler.set_enabled(was_enabled)


@requires_ffcv
def test_fast_kernel_equals_reference_kernel_bit_for_bit(cifar):
    from eclipse_loader.adapters.ffcv_compensation import compensate_one, compensate_one_fast, guard_band
    from eclipse_loader.compensation import counter_rng as rng

    images = np.concatenate([cifar["train_x"][:600], np.zeros((20, 32, 32, 3), np.uint8), np.full((20, 32, 32, 3), 255, np.uint8)])
    j = np.arange(32 * 32 * 3, dtype=np.int64)
    salt1, salt2 = rng.element_salt(2 * j), rng.element_salt(2 * j + 1)
    for p_gray, sigma in ((0.4, 0.05), (0.0, 0.05), (1.0, 0.05), (0.4, 0.0), (1.0, 0.0), (0.4, 1.0)):
        scale = 255.0 * sigma
        # guard 0: never falls back (the fast arithmetic alone); 0.5: always falls back; the certified band
        for guard in (0.0, 0.5, guard_band(scale)):
            for i, image in enumerate(images):
                key = rng.sample_key(7, 3, i)
                ref, fast = np.empty_like(image), np.full_like(image, 17)
                compensate_one(image, ref, key, p_gray, scale, salt1, salt2)
                compensate_one_fast(image, fast, key, p_gray, scale, salt1, salt2, guard)
                assert np.array_equal(fast, ref), f"p_gray={p_gray} sigma={sigma} guard={guard} image {i}"
    strided = np.asfortranarray(images[0])  # any source layout
    ref, fast = np.empty_like(images[0]), np.empty_like(images[0])
    compensate_one(images[0], ref, 5, 0.4, 12.75, salt1, salt2)
    compensate_one_fast(strided, fast, 5, 0.4, 12.75, salt1, salt2, guard_band(12.75))
    assert np.array_equal(fast, ref)


@requires_ffcv
def test_fast_log_and_cos_agree_with_extended_precision():
    import numba

    from eclipse_loader.adapters.ffcv_compensation import _cos_2pi_unit, _log_unit

    @numba.njit
    def both(words, logs, coss):
        for i in range(words.shape[0]):
            logs[i] = _log_unit(np.uint64(words[i]))
            coss[i] = _cos_2pi_unit(np.uint64(words[i]))

    edges = [np.arange(0, 4096), np.arange(2**32 - 4096, 2**32)]
    edges += [np.arange(q * 2**29 - 256, q * 2**29 + 256) for q in range(1, 8)]  # cos octant edges
    edges += [np.arange(int(2**k * 2**0.5) - 64, int(2**k * 2**0.5) + 64) for k in range(7, 32)]  # log m = sqrt(2)
    words = np.concatenate([*edges, np.random.default_rng(0).integers(0, 2**32, 200_000)]).astype(np.int64)
    logs, coss = np.empty(len(words)), np.empty(len(words))
    both(words, logs, coss)
    u = (words.astype(np.longdouble) + np.longdouble(0.5)) / np.longdouble(2**32)
    true_log = np.log(u)
    true_cos = np.cos(2 * np.longdouble("3.14159265358979323846264338327950288") * u)
    assert float(np.max(np.abs((logs - true_log) / true_log))) < 4e-15
    assert float(np.max(np.abs(coss - true_cos))) < 4e-15
