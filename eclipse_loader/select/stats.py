"""Confidence intervals and the choice rule.

Every candidate is scored on the same validation images, so candidates are compared *paired*: the
uncertainty of a difference comes from a bootstrap over validation images of the per-image
correctness vectors (seeded, so the choice is deterministic). The rule:

1. a candidate *beats none* when the lower end of the 95% interval of (its accuracy - none's)
   exceeds ``min_gain``; if none does, the choice is ``none``;
2. among those, the best accuracy wins, except that with ``tie_break="lighter"`` (the default) a lighter
   candidate whose accuracy is not distinguishable from the best (the 95% interval of best - it includes 0,
   and the gap is at most ``tie_points``) wins the tie: the lightest such candidate is chosen.
   ``tie_break="best"`` keeps the best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

Z95 = 1.959963984540054
TieBreak = Literal["lighter", "best"]
TIE_BREAKS: tuple[str, ...] = ("lighter", "best")


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``correct`` of ``total``)."""
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    p = correct / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(a: np.ndarray, b: np.ndarray, seed: int = 0, rounds: int = 2000,
                               level: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): bootstrap interval over images of paired correctness vectors."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal-length 1-D correctness vectors, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(rounds)
    for start in range(0, rounds, 250):  # chunks keep memory at 250 x N
        stop = min(start + 250, rounds)
        means[start:stop] = diff[rng.integers(0, len(diff), (stop - start, len(diff)))].mean(1)
    tail = (1.0 - level) / 2.0
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


@dataclass(frozen=True)
class Choice:
    """The outcome of `choose`: the chosen name and why."""

    name: str
    reason: str
    beats_none: tuple[str, ...]


def choose(names: Sequence[str], weights: Sequence[float], correct: Sequence[np.ndarray], *, baseline: str = "none",
           min_gain: float = 0.0, tie_points: float = 0.01, tie_break: TieBreak = "lighter", seed: int = 0) -> Choice:
    """Apply the rule above to candidates ``names`` with ``weights`` and per-image ``correct`` vectors."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    if baseline not in names:
        raise ValueError(f"the baseline {baseline!r} must be among the candidates")
    vectors = {n: np.asarray(c, dtype=bool) for n, c in zip(names, correct)}
    weight = dict(zip(names, weights))
    base = vectors[baseline]
    winners = []
    for name in names:
        if name == baseline:
            continue
        _, low, _ = paired_difference_interval(vectors[name], base, seed=seed)
        if low > min_gain:
            winners.append(name)
    if not winners:
        return Choice(baseline, f"no candidate beats {baseline!r} by more than the noise (95% paired interval)", ())
    best = max(winners, key=lambda n: (vectors[n].mean(), -weight[n]))
    if tie_break == "best":
        return Choice(best, f"best validation accuracy of the {len(winners)} candidates that beat {baseline!r}",
                      tuple(winners))
    ties = []
    for name in winners:
        gap, low, _ = paired_difference_interval(vectors[best], vectors[name], seed=seed)
        if name == best or (low <= 0.0 and gap <= tie_points):
            ties.append(name)
    chosen = min(ties, key=lambda n: (weight[n], -vectors[n].mean(), n))
    if chosen == best:
        reason = f"best validation accuracy of the {len(winners)} candidates that beat {baseline!r}"
    else:
        reason = (f"lightest candidate within the noise of the best ({best}, "
                  f"{100 * (vectors[best].mean() - vectors[chosen].mean()):.1f} points higher)")
    return Choice(chosen, reason, tuple(winners))
