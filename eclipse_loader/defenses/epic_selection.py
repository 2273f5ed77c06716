"""EPIC's selection (plain torch/numpy): gradient proxies, facility-location medoids per class, and
the examples isolated in small clusters (see `eclipse_loader.defenses.epic` for the schedule)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages
from ..loading.config import Normalization
from ..loading.torch_loader import TorchEpochLoader
from ..nn_utils import eval_mode

Metric = Literal["euclidean", "cosine"]


@torch.no_grad()
def gradient_proxy(
    model: nn.Module,
    data: LabelledImages,
    *,
    batch_size: int = 256,
    normalize: Optional[Normalization] = None,
    device: Union[str, torch.device, None] = None,
) -> np.ndarray:
    """``softmax(logits) - onehot(label)`` for every example of ``data`` (eval mode, no augmentation).

    Returns float32 ``(N, C)``. The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    with eval_mode(model):
        for x, y in TorchEpochLoader(data, batch_size, normalize=normalize):
            logits = model(x.to(device)).float()
            g = torch.softmax(logits, dim=1)
            g[torch.arange(len(y)), y.to(device)] -= 1.0
            out.append(g.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, data.num_classes), np.float32)


def similarity(features: np.ndarray, metric: Metric = "euclidean") -> np.ndarray:
    """Dense similarity kernel of submodlib: ``exp(-||a-b|| / d)`` (d = feature dim) or cosine."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {f.shape}")
    if metric == "euclidean":
        sq = (f * f).sum(1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0))
        np.fill_diagonal(dist, 0.0)
        return np.exp(-dist / f.shape[1])
    if metric == "cosine":
        unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return unit @ unit.T
    raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


def facility_location(sim: np.ndarray, k: int, refresh: int = 64) -> list[int]:
    """Greedy maximisation of ``F(M) = sum_i max_{j in M} sim[i, j]`` (lazy greedy, exact gains).

    Marginal gains only shrink as the set grows (submodularity), so stale gains are upper bounds:
    each round re-evaluates the ``refresh`` candidates with the largest bounds in one vectorised
    step and accepts the best of them once its gain is at least every other candidate's bound.
    Returns ``k`` column indices in the order they were picked (ties: the lower index).
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square matrix, got shape {sim.shape}")
    n = sim.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    best = np.zeros(n)  # current max similarity of each point to the chosen set (F(empty) = 0)
    bounds = np.maximum(sim, 0.0).sum(0)
    fresh = np.ones(n, dtype=bool)  # bounds[j] is j's exact gain
    chosen: list[int] = []
    while len(chosen) < k:
        order = np.lexsort((np.arange(n), -bounds))  # bound descending, then index ascending
        top = order[:refresh]
        stale = top[~fresh[top]]
        if len(stale):
            bounds[stale] = np.maximum(sim[:, stale] - best[:, None], 0.0).sum(0)
            fresh[stale] = True
            order = np.lexsort((np.arange(n), -bounds))
        j = int(order[0])
        if not fresh[j]:
            continue
        chosen.append(j)
        best = np.maximum(best, sim[:, j])
        bounds[j] = -np.inf
        fresh[:] = False
        fresh[j] = True
    return chosen


def class_budgets(counts: np.ndarray, subset_size: float, generator: Optional[np.random.Generator] = None) -> np.ndarray:
    """Medoids per class: ``ceil(n_c / N * B)`` with ``B = floor(subset_size * N)``, overshoot removed
    by decrementing randomly chosen classes (each keeps at least one medoid when it has examples)."""
    counts = np.asarray(counts, dtype=np.int64)
    if not 0.0 < subset_size <= 1.0:
        raise ValueError(f"subset_size must be in (0, 1], got {subset_size}")
    total = int(counts.sum())
    budget = int(math.floor(subset_size * total))
    k = np.minimum(np.ceil(counts / max(total, 1) * budget).astype(np.int64), counts)
    rng = generator or np.random.default_rng(0)
    while k.sum() > budget:
        reducible = np.flatnonzero(k > np.minimum(counts, 1))
        if len(reducible) == 0:
            break
        k[rng.choice(reducible)] -= 1
    return k


@dataclass(frozen=True)
class Selection:
    """Result of one EPIC selection over the whole training set.

    Attributes:
        medoids: global indices of the medoids, class by class, in greedy order.
        assignment: for every example, the global index of its medoid.
        cluster_size: for every example, the size of its medoid's cluster.
        keep: boolean mask, True where the cluster has more than ``cluster_thresh`` members.
    """

    medoids: np.ndarray
    assignment: np.ndarray
    cluster_size: np.ndarray
    keep: np.ndarray

    @property
    def isolated(self) -> np.ndarray:
        """Indices of the examples the selection drops."""
        return np.flatnonzero(~self.keep)


def select_isolated(
    grads: np.ndarray,
    labels: np.ndarray,
    subset_size: float,
    *,
    cluster_thresh: float = 1.0,
    metric: Metric = "euclidean",
    generator: Optional[np.random.Generator] = None,
) -> Selection:
    """Per-class facility-location medoids of ``grads`` and the examples in small clusters.

    Args:
        grads: ``(N, C)`` gradient proxies (see `gradient_proxy`).
        labels: ``(N,)`` class of each example (medoids are chosen within a class).
        subset_size: medoid fraction ``B / N`` (paper: 0.1, 0.2, 0.3; larger drops more).
        cluster_thresh: examples whose cluster size is ``<= cluster_thresh`` are dropped.
        metric: similarity kernel (see `similarity`).
        generator: decides which classes lose a medoid when the rounded budgets overshoot.
    """
    grads = np.asarray(grads)
    labels = np.asarray(labels)
    if grads.ndim != 2 or labels.shape != (len(grads),):
        raise ValueError(f"grads must be (N, C) and labels (N,), got {grads.shape} and {labels.shape}")
    classes, counts = np.unique(labels, return_counts=True)
    budgets = class_budgets(counts, subset_size, generator)
    assignment = np.full(len(labels), -1, dtype=np.int64)
    medoids = []
    for cls, k in zip(classes, budgets):
        members = np.flatnonzero(labels == cls)
        if k == 0:
            continue
        sim = similarity(grads[members], metric)
        local = np.asarray(facility_location(sim, int(k)), dtype=np.int64)
        medoids.append(members[local])
        assignment[members] = members[local[np.argmax(sim[:, local], axis=1)]]  # global ids, not offsets
    sizes = np.bincount(assignment[assignment >= 0], minlength=len(labels))
    cluster_size = np.where(assignment >= 0, sizes[np.maximum(assignment, 0)], 0)
    keep = (cluster_size > cluster_thresh) | (assignment < 0)
    all_medoids = np.concatenate(medoids) if medoids else np.zeros(0, np.int64)
    return Selection(all_medoids, assignment, cluster_size, keep)
