"""DataElixir's label analysis (pure numpy): sporadic-label filter, transition cases, target detection by MAD.

Given the suspicious model's labels for each sample's candidates (column 0: the original image,
columns 1..K-1: the intermediaries of the noise-and-denoise rounds):

* `classify_transitions` filters sporadic intermediary labels (threshold tau) and sorts every sample
  into case A (no transition), B (clean transition: the intermediaries agree on a label other than
  the original's) or C (ambiguous: a second intermediary label has at least tau votes);
* `detect_targets` pools the kept labels of the B/C samples of each dataset class k, measures
  ``m_k = KL(onehot_k || q_k) = -log q_k[k]`` and flags the classes whose robust z-score
  ``(m_k - median) / (1.4826 (MAD + 1e-6))`` exceeds the threshold (one-sided, empty pools count as
  no discrepancy; the original is two-sided and turns an empty pool into NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CASE_A, CASE_B, CASE_C = 0, 1, 2


@dataclass(frozen=True)
class Transitions:
    """Per-sample outcome of `classify_transitions`.

    Attributes:
        cases: (N,) CASE_A / CASE_B / CASE_C.
        kept: (N, K) bool, the candidates that survive the sporadic-label filter (column 0 always).
        majority: (N,) most common intermediary label (ties: the smaller label).
    """

    cases: np.ndarray
    kept: np.ndarray
    majority: np.ndarray


def classify_transitions(labels: np.ndarray, tau: int = 5) -> Transitions:
    """Filter sporadic intermediary labels and classify each sample (see the module docstring)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise ValueError(f"labels must be (N, K) with K >= 2 (original + intermediaries), got {labels.shape}")
    if tau < 1:
        raise ValueError(f"tau must be >= 1, got {tau}")
    n, k = labels.shape
    num_labels = int(labels.max()) + 1 if labels.size else 1
    inter = labels[:, 1:]
    counts = np.zeros((n, num_labels), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k - 1), inter.ravel()), 1)
    majority = counts.argmax(1)
    second = np.sort(counts, axis=1)[:, -2] if num_labels > 1 else np.zeros(n, np.int64)
    ambiguous = second >= tau
    uniform = counts.max(1) == k - 1
    kept = np.ones_like(labels, dtype=bool)
    filtered = ~uniform & ~ambiguous
    kept[filtered, 1:] = inter[filtered] == majority[filtered, None]
    cases = np.full(n, CASE_A, dtype=np.int64)
    cases[ambiguous] = CASE_C
    cases[~ambiguous & (majority != labels[:, 0])] = CASE_B
    return Transitions(cases, kept, majority)


@dataclass(frozen=True)
class TargetDetection:
    """Per-class discrepancy ``m_k``, robust score, and the flagged target classes."""

    discrepancy: np.ndarray
    score: np.ndarray
    targets: np.ndarray


def detect_targets(
    labels: np.ndarray,
    dataset_labels: np.ndarray,
    transitions: Transitions,
    num_classes: int,
    threshold: float = 2.0,
) -> TargetDetection:
    """Target classes as one-sided MAD outliers of ``m_k = -log q_k[k]`` (see the module docstring)."""
    labels, dataset_labels = np.asarray(labels), np.asarray(dataset_labels)
    if len(labels) != len(dataset_labels):
        raise ValueError(f"{len(labels)} label rows but {len(dataset_labels)} dataset labels")
    moved = transitions.cases != CASE_A
    m = np.zeros(num_classes)
    for k in range(num_classes):
        rows = moved & (dataset_labels == k)
        pool = labels[rows][transitions.kept[rows]]
        if len(pool) == 0:
            continue  # no sample of class k moved: no discrepancy
        q = np.bincount(pool, minlength=num_classes) / len(pool)
        m[k] = -np.log(max(q[k], 1e-12))
    med = np.median(m)
    mad = np.median(np.abs(m - med))
    score = (m - med) / (1.4826 * (mad + 1e-6))
    return TargetDetection(m, score, np.flatnonzero(score > threshold))
