"""EPIC (ICML 2022): drop training examples that are isolated in gradient space.

Core pieces (plain torch/numpy; the Lightning callback is in `epic_callback`):

* `gradient_proxy`: per-example last-layer gradient ``softmax(z) - onehot(y)`` from the full
  logits (bias included).
* `facility_location`: lazy-greedy maximisation of ``sum_i max_{j in M} S_ij`` (submodlib's dense
  objective), with ``S_ij = exp(-||g_i - g_j|| / C)`` (``metric="euclidean"``) or cosine.
* `select_isolated`: per-class medoids (proportional budget), assignment of every example to its
  most similar medoid, and the examples whose cluster has size ``<= cluster_thresh``.
* `EpicSchedule` (when to run), `EpicSampler` (active-example mask, shuffled per epoch) and
  `EpicSelector` (run the schedule against a live model and shrink the sampler's mask).

Differences from the released code, deliberately: medoids carry explicit global indices (the
original offsets cluster ids by ``class * num_per_class``, which mislabels clusters as soon as the
per-class budgets differ, i.e. on unbalanced classes); the budget overshoot is removed with a
seeded generator; the gradient uses the full logits in every mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional, Union

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from ..loading.torch_loader import TorchEpochLoader
from ..nn_utils import eval_mode

Metric = Literal["euclidean", "cosine"]


# ---------------------------------------------------------------------------------------------
# gradient proxy and facility location
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def gradient_proxy(
    model: nn.Module,
    data: LabelledImages,
    *,
    batch_size: int = 256,
    normalize: Optional[AugmentConfig] = None,
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


# ---------------------------------------------------------------------------------------------
# schedule, sampler, selector
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpicSchedule:
    """When EPIC runs and how hard it prunes (defaults: the paper's EPIC-0.1, K = 10, T = 10).

    A selection runs at the start of epoch ``e`` (0-based) when ``subset_size < 1``,
    ``e % period == 0``, ``e >= warmup``, ``e < stop_after`` and ``e <= last_milestone``.
    """

    subset_size: float = 0.1
    warmup: int = 10
    period: int = 10
    stop_after: Optional[int] = None
    last_milestone: Optional[int] = None
    cluster_thresh: float = 1.0
    metric: Metric = "euclidean"

    def __post_init__(self) -> None:
        if not 0.0 < self.subset_size <= 1.0:
            raise ValueError(f"subset_size must be in (0, 1], got {self.subset_size}")
        if self.period < 1 or self.warmup < 0:
            raise ValueError(f"period must be >= 1 and warmup >= 0, got {self.period}, {self.warmup}")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")

    def fires(self, epoch: int) -> bool:
        """Whether a selection runs at the start of ``epoch``."""
        return (self.subset_size < 1.0 and epoch % self.period == 0 and epoch >= self.warmup
                and (self.stop_after is None or epoch < self.stop_after)
                and (self.last_milestone is None or epoch <= self.last_milestone))


class EpicSampler(torch.utils.data.Sampler[int]):
    """Yields the active examples, shuffled with ``default_rng(seed + epoch)``; the mask only shrinks.

    Lives in the main process, so it works with persistent workers. Call ``set_epoch`` every epoch
    (Lightning does it for a loader's ``sampler``). Under data parallelism (``num_replicas`` > 1, or
    `set_distributed`), every rank draws the same permutation and takes every ``num_replicas``-th
    index from position ``rank``, the list wrapped around so that all ranks get
    ``ceil(active / num_replicas)`` indices (as ``DistributedSampler`` does); the ranks' masks must be
    kept equal (`EpicCallback` does).
    """

    def __init__(self, num_examples: int, *, shuffle: bool = True, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        self.active = np.ones(int(num_examples), dtype=bool)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0
        self.set_distributed(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_distributed(self, num_replicas: int, rank: int) -> None:
        """Shard the active examples over ``num_replicas`` ranks; this process is ``rank``."""
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas} and {rank}")
        self.num_replicas, self.rank = int(num_replicas), int(rank)

    def drop(self, keep: np.ndarray) -> int:
        """``active &= keep`` (drops are permanent); returns how many were newly dropped."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != self.active.shape:
            raise ValueError(f"keep has shape {keep.shape}, the sampler covers {self.active.shape}")
        before = int(self.active.sum())
        self.active &= keep
        return before - int(self.active.sum())

    def __iter__(self) -> Iterator[int]:
        idx = np.flatnonzero(self.active)
        if self.shuffle:
            idx = np.random.default_rng(self.seed + self.epoch).permutation(idx)
        if self.num_replicas > 1:
            idx = np.resize(idx, len(self) * self.num_replicas)[self.rank::self.num_replicas]
        return iter(idx.tolist())

    def __len__(self) -> int:
        return -(-int(self.active.sum()) // self.num_replicas)

    def state_dict(self) -> dict:
        return {"active": self.active.copy(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.active = np.asarray(state["active"], dtype=bool).copy()
        self.epoch = int(state["epoch"])


@dataclass
class EpicSelector:
    """Runs `EpicSchedule` against a live model and shrinks an `EpicSampler`'s mask.

    Args:
        data: the training set *without* augmentation, in sampler index order.
        sampler: the sampler the training loader draws from.
        schedule: when and how hard to prune.
        normalize: the normalisation the model expects (as in the training loader).
        poison_mask: optional ground truth, only used to log poison recall.
        seed: seeds the budget rounding.
    """

    data: LabelledImages
    sampler: EpicSampler
    schedule: EpicSchedule = field(default_factory=EpicSchedule)
    normalize: Optional[AugmentConfig] = None
    poison_mask: Optional[np.ndarray] = None
    batch_size: int = 256
    seed: int = 0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.sampler.active) != len(self.data):
            raise ValueError(f"sampler covers {len(self.sampler.active)} examples, data has {len(self.data)}")

    def maybe_select(self, epoch: int, model: nn.Module) -> Optional[Selection]:
        """Run a selection if the schedule fires at ``epoch``; returns it (None when it did not fire)."""
        if not self.schedule.fires(epoch):
            return None
        grads = gradient_proxy(model, self.data, batch_size=self.batch_size, normalize=self.normalize)
        selection = select_isolated(grads, self.data.labels, self.schedule.subset_size,
                                    cluster_thresh=self.schedule.cluster_thresh, metric=self.schedule.metric,
                                    generator=np.random.default_rng([self.seed, epoch]))
        newly = self.sampler.drop(selection.keep)
        record = {"epoch": int(epoch), "isolated": int((~selection.keep).sum()), "newly_dropped": newly,
                  "active": len(self.sampler)}
        if self.poison_mask is not None:
            dropped = ~self.sampler.active
            poison = np.asarray(self.poison_mask, dtype=bool)
            record["poisons_dropped"] = int((dropped & poison).sum())
            record["poison_recall"] = float((dropped & poison).sum() / max(int(poison.sum()), 1))
        self.history.append(record)
        return selection
