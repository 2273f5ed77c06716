"""The purifier's counter-based noise: exact hash, golden values, independence of batching, and
its distribution (moments, Kolmogorov-Smirnov against N(0, 1))."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eclipse_loader.purify.noise import counter_keys, counter_normal, mix64


def _reference_mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser in numpy uint64 (an independent implementation of the hash)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def test_hash_equals_an_unsigned_reference():
    values = np.array([0, 1, 2, 2**31, 2**62 + 17, 2**63 - 1, -1, -(2**63)], dtype=np.int64)
    ours = mix64(torch.from_numpy(values)).numpy().view(np.uint64)
    np.testing.assert_array_equal(ours, _reference_mix(values.view(np.uint64)))
    assert _reference_mix(np.array([0], np.uint64))[0] == 0  # splitmix's finaliser fixes 0 (keys never are 0)


def test_golden_values():
    # a change in the hash, the key derivation or Box-Muller moves these
    z = counter_normal(0, torch.tensor([0, 1, 49999]), 0, (4,))
    expected = [[0.0793660, 0.4917900, -1.1222236, 0.6491993], [-0.7417015, 1.4751039, -1.9755704, 0.9749930],
                [0.6951077, -0.9195698, -1.3353379, 2.4586458]]
    torch.testing.assert_close(z, torch.tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(counter_normal(7, torch.tensor([3]), 2, (3,)),
                               torch.tensor([[-0.8683337, -0.9549752, -0.0137183]]), atol=1e-6, rtol=0)


def test_a_sample_draw_depends_only_on_seed_index_and_draw():
    full = counter_normal(3, torch.arange(40), 1, (3, 4, 4))
    part = counter_normal(3, torch.tensor([37, 2, 11]), 1, (3, 4, 4))
    torch.testing.assert_close(part, full[[37, 2, 11]], atol=0, rtol=0)
    assert not torch.equal(full, counter_normal(3, torch.arange(40), 2, (3, 4, 4)))
    assert not torch.equal(full, counter_normal(4, torch.arange(40), 1, (3, 4, 4)))
    assert len(set(counter_keys(0, torch.arange(100000), 0).tolist())) == 100000


def test_moments_and_ks_against_the_standard_normal():
    z = counter_normal(0, torch.arange(1000), 0, (3, 32, 32)).double().flatten()  # 3,072,000 draws
    n = len(z)
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15 / n)
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)
    assert float(z.abs().max()) <= math.sqrt(-2 * math.log(0.5 / 2**24)) + 1e-5
    sample = np.sort(z[:: 31].numpy())  # 99,097 draws
    cdf = 0.5 * (1 + np.vectorize(math.erf)(sample / math.sqrt(2)))
    grid = np.arange(1, len(sample) + 1) / len(sample)
    ks = max(np.max(grid - cdf), np.max(cdf - (grid - 1 / len(sample))))
    assert ks < 1.63 / math.sqrt(len(sample)), ks  # the 1% critical value
    # neighbouring elements and neighbouring samples are uncorrelated
    per_sample = counter_normal(0, torch.arange(2000), 0, (64,)).double()
    assert abs(float((per_sample[:, :-1] * per_sample[:, 1:]).mean())) < 5 / math.sqrt(per_sample.numel())
    assert abs(float((per_sample[:-1] * per_sample[1:]).mean())) < 5 / math.sqrt(per_sample.numel())


def test_bad_indices_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        counter_normal(0, torch.zeros(2, 2, dtype=torch.int64), 0, (3,))
