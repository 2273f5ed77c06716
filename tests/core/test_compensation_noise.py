"""The compensation's noise generator (a fixed table of N(0, 1) quantiles read in hashed runs):
statistical quality of the table and of the drawn noise, determinism, and golden values that catch any
change of the counter RNG or the table, even one that moves the torch and the numba kernels together."""
from __future__ import annotations

import hashlib
import math
import statistics

import numpy as np
import pytest
import torch

from eclipse_loader import CorruptionCompensation
from eclipse_loader.compensation import counter_rng as rng
from eclipse_loader.compensation import noise_table
from eclipse_loader.compensation.functional import noise_levels, sample_keys

from ..conftest import requires_ffcv


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _ks_distance(sample: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic of ``sample`` against N(0, 1)."""
    x = np.sort(np.asarray(sample, dtype=np.float64))
    cdf, n = _normal_cdf(x), len(x)
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def _moments(x: np.ndarray) -> tuple[float, float, float, float]:
    x = np.asarray(x, dtype=np.float64)
    m, v = x.mean(), x.var()
    return m, v, float(((x - m) ** 3).mean() / v**1.5), float(((x - m) ** 4).mean() / v**2)


def _drawn_z(keys: torch.Tensor, shape=(3, 32, 32)) -> np.ndarray:
    """The N(0, 1) values the compensation draws for ``keys`` (noise_levels with the unrounded table)."""
    salts = torch.from_numpy(noise_table.run_salts(int(np.prod(shape))))
    offsets = rng.run_offset(keys.view(-1, 1), salts.view(1, -1), noise_table.TABLE_BITS)
    table = np.concatenate([noise_table.standard_normal_table(), noise_table.standard_normal_table()[:63]])
    runs = table[offsets.numpy()[..., None] + np.arange(noise_table.RUN_LENGTH)]
    return runs.reshape(len(keys), -1)[:, : int(np.prod(shape))]


def test_table_is_a_standard_normal_sample_of_quantiles():
    z = noise_table.standard_normal_table()
    assert z.dtype == np.float32 and z.shape == (noise_table.TABLE_SIZE,) and not z.flags.writeable
    mean, var, skew, kurt = _moments(z)
    assert abs(mean) < 1e-9 and abs(var - 1) < 2e-5 and abs(skew) < 1e-9 and abs(kurt - 3) < 1e-3
    assert _ks_distance(z) < 0.5 / noise_table.TABLE_SIZE + 1e-7  # quantiles: the least possible distance
    assert 4.85 < float(np.abs(z).max()) < 4.95
    # the order is shuffled: neighbours (read together in a run) are uncorrelated, also in magnitude
    z64 = z.astype(np.float64)
    bound = 4 / math.sqrt(len(z))
    for lag in (1, 2, 3, 63, 64):
        assert abs(np.corrcoef(z64[:-lag], z64[lag:])[0, 1]) < bound
    assert abs(np.corrcoef(z64[:-1] ** 2, z64[1:] ** 2)[0, 1]) < bound


def test_quantile_function_matches_the_standard_library():
    p = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 2001), [1e-300, 1e-30, 0.075, 0.425 + 0.5, 0.5]])
    ours = noise_table.normal_quantile(p)
    ref = np.array([statistics.NormalDist().inv_cdf(v) for v in p])
    assert np.allclose(ours, ref, rtol=1e-15, atol=1e-15)


def test_table_order_is_a_bijection_and_hash_variants_agree():
    order = noise_table.table_position_order()
    assert np.array_equal(np.sort(order), np.arange(noise_table.TABLE_SIZE))
    x = np.random.default_rng(0).integers(0, 2**40, 10_000)
    assert np.array_equal(rng.hash32_numpy(x).astype(np.int64), rng.hash32(x))
    assert np.array_equal(rng.hash32(torch.from_numpy(x)).numpy(), rng.hash32(x))


def test_drawn_noise_is_standard_normal_and_independent():
    """Noise values of 2,000 samples (6.1 M draws): N(0, 1) marginal, no correlation between neighbouring
    values, channels of a pixel, two samples, or one sample in two epochs."""
    n = 2000
    z = _drawn_z(sample_keys(0, 0, torch.arange(n)))
    mean, var, skew, kurt = _moments(z)
    sd = 1 / math.sqrt(z.size)
    assert abs(mean) < 5 * sd and abs(var - 1) < 5 * math.sqrt(2) * sd and abs(skew) < 0.01 and abs(kurt - 3) < 0.02
    assert _ks_distance(z[:, ::7].ravel()) < 1.63 / math.sqrt(z[:, ::7].size)  # 1% level
    per_pixel = z.reshape(n, 32 * 32, 3)
    bound = 5 / math.sqrt(n * 1024)
    assert abs(np.corrcoef(per_pixel[..., 0].ravel(), per_pixel[..., 1].ravel())[0, 1]) < bound
    assert abs(np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]) < bound
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < bound  # consecutive samples
    later = _drawn_z(sample_keys(0, 1, torch.arange(n)))
    assert abs(np.corrcoef(z.ravel(), later.ravel())[0, 1]) < bound  # the same samples, next epoch
    assert abs(np.corrcoef(z.ravel(), _drawn_z(sample_keys(1, 0, torch.arange(n))).ravel())[0, 1]) < bound


def test_noise_levels_are_the_rounded_table_values():
    keys = sample_keys(5, 2, torch.arange(50))
    levels = noise_levels(keys, (3, 32, 32), 12.75).permute(0, 2, 3, 1).reshape(50, -1).numpy()
    expected = np.floor(12.75 * _drawn_z(keys).astype(np.float64) + 0.5)
    assert levels.dtype == np.int16 and np.array_equal(levels, expected)
    big = noise_table.rounded_noise_table(1e6)
    assert big.min() == -noise_table.LEVEL_CLIP and big.max() == noise_table.LEVEL_CLIP  # clipped, no overflow


# ---- golden values: a change of the hash, the key derivation, the table or the run layout fails here ------

def test_golden_table():
    z = noise_table.standard_normal_table()
    assert hashlib.sha256(z.tobytes()).hexdigest()[:16] == "1b4a38859df387e7"
    assert z[:4].tolist() == [0.673420250415802, 1.9365360736846924, 1.4792433977127075, 0.8875629305839539]
    levels = noise_table.rounded_noise_table(12.75)
    assert levels[:8].tolist() == [9, 25, 19, 11, -6, 1, -14, -7] and int(levels.astype(np.int64).sum()) == -36


def test_golden_counter_rng():
    assert [rng.hash32(v) for v in (0, 1, 2**32 - 1)] == [0, 1753845952, 1734902346]
    assert rng.sample_key(7, 3, 1000) == 2554717656
    assert rng.run_offset(rng.sample_key(7, 3, 1000), rng.run_salt(5), noise_table.TABLE_BITS) == 705316


GOLDEN_IMAGE = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 4, 4).contiguous()
GOLDEN_INDICES = [0, 1, 2, 1000]
GOLDEN_FIRST_PIXEL = [[203, 92, 58], [229, 108, 66], [119, 132, 112], [211, 89, 66]]
GOLDEN_SUMS = [5660, 5684, 5906, 5831]


def test_golden_torch_outputs():
    comp = CorruptionCompensation(p_gray=0.5, sigma=0.05, seed=7)
    out = comp.compensate(GOLDEN_IMAGE, torch.tensor(GOLDEN_INDICES), epoch=3)
    assert out[:, :, 0, 0].tolist() == GOLDEN_FIRST_PIXEL
    assert out.view(4, -1).sum(1).tolist() == GOLDEN_SUMS
    gray = CorruptionCompensation(p_gray=0.5, sigma=0.0, seed=7).compensate(GOLDEN_IMAGE, torch.tensor(GOLDEN_INDICES), epoch=3)
    assert [bool(torch.equal(g[0], g[1])) for g in gray] == [False, False, True, False]


@requires_ffcv
def test_golden_ffcv_outputs():
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    op = CompensateFFCV(p_gray=0.5, sigma=0.05, seed=7)
    op.declare_state_and_memory(State(True, torch.device("cpu"), (4, 4, 3), np.dtype("u1")))
    op.set_epoch(3)
    images = GOLDEN_IMAGE.permute(0, 2, 3, 1).contiguous().numpy()
    out = Compiler.compile(op.generate_code())(images, np.empty_like(images), np.array(GOLDEN_INDICES, np.uint64))
    assert out[:, 0, 0].tolist() == GOLDEN_FIRST_PIXEL
    assert out.reshape(4, -1).astype(np.int64).sum(1).tolist() == GOLDEN_SUMS


@pytest.mark.parametrize("sigma", [0.03, 0.05])
def test_rounded_noise_has_the_intended_spread(sigma):
    mid = torch.full((3000, 3, 8, 8), 128, dtype=torch.uint8)
    noisy = CorruptionCompensation(p_gray=0, sigma=sigma, seed=2).compensate(mid, torch.arange(3000)).double() - 128
    scale = 255 * sigma
    assert abs(noisy.mean().item()) < 0.05
    assert abs(noisy.std().item() - math.sqrt(scale**2 + 1 / 12)) < 0.05  # noise plus rounding
