"""DataElixir (AAAI 2024): offline backdoor sanitisation with our diffusion `Purifier`.

1. Every image goes through ``rounds`` chained rounds of "noise in one shot, denoise back"
   (`Purifier.add_noise` / `Purifier.step` with our denoiser); the clean estimates of the last
   ``intermediaries`` reverse steps of each round are the intermediaries.
2. The suspicious classifier (trained on the poisoned data) labels the original and every
   intermediary; `elixir_analysis` sorts samples into no / clean / ambiguous transitions and finds
   the target class(es) by MAD.
3. Samples of a target class with a clean transition get a purified image (SSIM + feature distance,
   80th percentile, `similarity.select_candidate`) and the intermediaries' label; ambiguous ones are
   relabelled by a benign model trained on the sanitised rest (``train_fn``), or dropped. With
   ``finetune_fn`` (stage 2 of the original), the benign model is first fine-tuned on the sanitised
   rest plus the *consensus* ambiguous samples (benign label of the original = majority label), and
   the fine-tuned model relabels; it is returned as ``ElixirResult.model`` (the original's defended model).
4. `ElixirResult.write_beton` writes the sanitised set with a manifest.

Deviations from the released code, deliberately: intermediaries are the clean estimates x0_hat of the
last steps (with a strided CPU chain the intermediate *states* still carry visible noise; the last
one equals the round's output, as in the original); without ``finetune_fn`` the benign model of
stage 1 relabels the suspicious samples directly (stage 2 skipped); target detection is one-sided with empty pools
guarded; features are the classifier's penultimate layer (input of its last ``nn.Linear``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages
from ..data.pixels import to_model_range, to_uint8
from ..purify.purifier import Purifier, sample_seed
from .elixir_analysis import CASE_A, CASE_B, CASE_C, TargetDetection, classify_transitions, detect_targets
from .similarity import select_candidate

TrainFn = Callable[[LabelledImages], nn.Module]
FinetuneFn = Callable[[nn.Module, LabelledImages], nn.Module]


@dataclass(frozen=True)
class ElixirConfig:
    """DataElixir settings (defaults: the released CIFAR-10 config, except the CPU-sized chain).

    Args:
        rounds: chained noise-and-denoise rounds n (original 5).
        intermediaries: intermediaries kept per round, the last m reverse steps (original 10).
        tau: votes a second intermediary label needs to make a sample ambiguous (original 5).
        mad_threshold: robust z-score above which a class is a target (original 2).
        quantile: position of the chosen candidate in the ascending distances (original 0.8).
        ssim_weight: weight of the SSIM term in the distance (original 0.5).
        suspicious_policy: ambiguous target-class samples whose benign label disagrees with their
            majority label are ``"relabel"``-ed with the benign label (original) or ``"drop"``-ped.
        batch_size: images per diffusion batch.
    """

    rounds: int = 5
    intermediaries: int = 10
    tau: int = 5
    mad_threshold: float = 2.0
    quantile: float = 0.8
    ssim_weight: float = 0.5
    suspicious_policy: Literal["relabel", "drop"] = "relabel"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.intermediaries < 1 or self.tau < 1 or self.batch_size < 1:
            raise ValueError(f"rounds, intermediaries, tau and batch_size must be >= 1: {self}")
        if not 0.0 <= self.quantile < 1.0:
            raise ValueError(f"quantile must be in [0, 1), got {self.quantile}")
        if self.suspicious_policy not in ("relabel", "drop"):
            raise ValueError(f"suspicious_policy must be 'relabel' or 'drop', got {self.suspicious_policy!r}")

    @property
    def num_candidates(self) -> int:
        return 1 + self.rounds * self.intermediaries


def diffusion_candidates(purifier: Purifier, images: np.ndarray, indices: np.ndarray, rounds: int,
                         intermediaries: int) -> np.ndarray:
    """uint8 ``(B, 1 + rounds * intermediaries, H, W, 3)``: the originals, then each round's intermediaries.

    Round ``r`` of sample ``i`` draws its noise from ``sample_seed(sample_seed(seed, r), i)``.
    """
    if intermediaries > len(purifier.timesteps):
        raise ValueError(f"intermediaries ({intermediaries}) exceeds the {len(purifier.timesteps)} reverse steps per round")
    device = purifier.device
    x_prev = to_model_range(images).to(device)
    out = [np.asarray(images)[:, None]]
    shape = tuple(x_prev.shape[1:])
    steps = purifier.timesteps
    with torch.no_grad():
        for r in range(rounds):
            gens = [torch.Generator().manual_seed(sample_seed(sample_seed(purifier.config.seed, r), int(i)))
                    for i in indices]

            def draw() -> torch.Tensor:
                return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)

            x = purifier.add_noise(x_prev, draw())
            for k, t in enumerate(steps):
                t_prev = steps[k + 1] if k + 1 < len(steps) else -1
                eps = purifier.unet(x, torch.full((len(x),), t, device=device, dtype=torch.long)).sample.float()
                if k >= len(steps) - intermediaries:
                    abar = float(purifier.alphas_cumprod[t])
                    x0 = ((x - (1 - abar) ** 0.5 * eps) / abar**0.5).clamp(-1, 1)
                    out.append(to_uint8(x0)[:, None])
                z = draw() if purifier.config.sampler == "ddpm" and t_prev >= 0 else None
                x = purifier.step(x, eps, t, t_prev, z)
            x_prev = x.clamp(-1, 1)
    return np.concatenate(out, axis=1)


class _Penultimate:
    """Captures the input of the model's last ``nn.Linear`` (its penultimate features)."""

    def __init__(self, model: nn.Module) -> None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the classifier has no nn.Linear layer to take penultimate features from")
        self.features: Optional[torch.Tensor] = None
        self.handle = linears[-1].register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.features = inputs[0].detach().flatten(1)


@torch.no_grad()
def classify(model: nn.Module, images: np.ndarray, batch_size: int = 500,
             features: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Labels (and penultimate features) of uint8 NHWC ``images``; inputs scaled to [0, 1]."""
    device = next(model.parameters()).device
    model.eval()
    hook = _Penultimate(model) if features else None
    labels, feats = [], []
    try:
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).permute(0, 3, 1, 2).float() / 255
            labels.append(model(x.to(device)).argmax(1).cpu())
            if hook is not None:
                feats.append(hook.features.cpu())
    finally:
        if hook is not None:
            hook.handle.remove()
    return torch.cat(labels).numpy(), (torch.cat(feats).numpy() if features else None)


@dataclass
class ElixirResult:
    """The sanitised dataset and what DataElixir found (indices refer to the input dataset)."""

    data: LabelledImages
    source_indices: np.ndarray
    detection: TargetDetection
    cases: np.ndarray
    replaced: np.ndarray
    relabelled: np.ndarray
    dropped: np.ndarray
    config: ElixirConfig = field(default_factory=ElixirConfig)
    model: Optional[nn.Module] = field(default=None, repr=False, compare=False)
    consensus: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def summary(self, poison_mask: Optional[np.ndarray] = None) -> dict[str, Any]:
        """Counts, targets, and (given the ground truth) TPR/FPR of "label changed or dropped"."""
        out: dict[str, Any] = {
            "targets": self.detection.targets.tolist(), "discrepancy": np.round(self.detection.discrepancy, 4).tolist(),
            "mad_score": np.round(self.detection.score, 3).tolist(),
            "cases": {"A": int((self.cases == CASE_A).sum()), "B": int((self.cases == CASE_B).sum()),
                      "C": int((self.cases == CASE_C).sum())},
            "replaced": len(self.replaced), "relabelled": len(self.relabelled), "dropped": len(self.dropped),
            "consensus": len(self.consensus), "kept": len(self.data)}
        if poison_mask is not None:
            poison = np.asarray(poison_mask, dtype=bool)
            flagged = np.zeros_like(poison)
            flagged[np.concatenate([self.relabelled, self.dropped]).astype(np.int64)] = True
            out["tpr"] = float((flagged & poison).sum() / max(int(poison.sum()), 1))
            out["fpr"] = float((flagged & ~poison).sum() / max(int((~poison).sum()), 1))
        return out

    def write_beton(self, path: Union[str, os.PathLike], **kwargs: Any) -> Path:
        """Write the sanitised set with `storage.beton.write_beton`; the manifest records the run."""
        from ..storage.beton import write_beton

        meta = {"defense": "dataelixir", "config": asdict(self.config), **self.summary(),
                "source_indices": self.source_indices.tolist()}
        return write_beton(path, self.data, metadata={**meta, **kwargs.pop("metadata", {})}, **kwargs)


def sanitize(
    data: LabelledImages,
    purifier: Purifier,
    suspicious_model: nn.Module,
    config: ElixirConfig = ElixirConfig(),
    *,
    train_fn: Optional[TrainFn] = None,
    finetune_fn: Optional[FinetuneFn] = None,
    log: Optional[Callable[[str], None]] = None,
) -> ElixirResult:
    """Run DataElixir on ``data`` (see the module docstring).

    Args:
        data: the (possibly poisoned) training set.
        purifier: our `Purifier` (its ``t_star``/``steps``/``seed`` set the noise level and chain).
        suspicious_model: a classifier trained on ``data``; takes float NCHW in [0, 1].
        config: `ElixirConfig`.
        train_fn: trains a benign model on a `LabelledImages`; without it, ambiguous target-class
            samples are dropped.
        finetune_fn: stage 2: ``finetune_fn(benign_model, data)`` fine-tunes the stage-1 benign model on
            the sanitised rest plus the consensus samples and returns it (original: lr 0.002, cosine,
            100 epochs); needs ``train_fn``. That model then relabels and is returned as ``result.model``.
        log: optional progress callback.
    """
    n, k = len(data), config.num_candidates
    labels = np.zeros((n, k), dtype=np.int64)
    stored: dict[int, np.ndarray] = {}
    for s in range(0, n, config.batch_size):
        idx = np.arange(s, min(s + config.batch_size, n))
        cands = diffusion_candidates(purifier, data.images[idx], idx, config.rounds, config.intermediaries)
        pred, _ = classify(suspicious_model, cands.reshape(-1, *cands.shape[2:]))
        labels[idx] = pred.reshape(len(idx), k)
        for j, i in enumerate(idx):
            if (labels[i] != labels[i, 0]).any():
                stored[int(i)] = cands[j]  # only samples with a transition can be needed later
        if log is not None:
            log(f"dataelixir: candidates for {idx[-1] + 1}/{n} images")
    trans = classify_transitions(labels, config.tau)
    detection = detect_targets(labels, data.labels, trans, data.num_classes, config.mad_threshold)
    images, new_labels = data.images.copy(), data.labels.copy()
    drop = np.zeros(n, dtype=bool)
    in_target = np.isin(data.labels, detection.targets)

    def pick(i: int, mask: np.ndarray) -> np.ndarray:
        cands = stored[i][mask]
        _, feats = classify(suspicious_model, cands, features=True)
        return cands[select_candidate(cands, feats, config.quantile, config.ssim_weight)]

    for i in np.flatnonzero(in_target & (trans.cases == CASE_B)):
        images[i] = pick(int(i), trans.kept[i])
        new_labels[i] = trans.majority[i]
    ambiguous = np.flatnonzero(in_target & (trans.cases == CASE_C))
    drop[ambiguous] = True
    if finetune_fn is not None and train_fn is None:
        raise ValueError("finetune_fn (stage 2) fine-tunes the benign model of train_fn: give train_fn too")
    benign: Optional[nn.Module] = None
    consensus = np.zeros(0, dtype=np.int64)
    if train_fn is not None and len(ambiguous):
        rest = np.flatnonzero(~drop)
        benign = train_fn(LabelledImages(images[rest], new_labels[rest], data.num_classes))
        if finetune_fn is not None:
            benign, consensus = _stage2(benign, finetune_fn, ambiguous, stored, trans.majority, pick,
                                        LabelledImages(images[rest], new_labels[rest], data.num_classes))
        for i in ambiguous:
            cand_labels, _ = classify(benign, stored[int(i)])
            label = int(cand_labels[0])
            if label != trans.majority[i] and config.suspicious_policy == "drop":
                continue
            mask = cand_labels == label
            mask[0] = True
            images[i], new_labels[i], drop[i] = pick(int(i), mask), label, False
    keep = np.flatnonzero(~drop)
    replaced = np.flatnonzero((images != data.images).any((1, 2, 3)) & ~drop)
    relabelled = np.flatnonzero((new_labels != data.labels) & ~drop)
    result = ElixirResult(LabelledImages(images[keep], new_labels[keep], data.num_classes), keep, detection,
                          trans.cases, replaced, relabelled, np.flatnonzero(drop), config, benign, consensus)
    if log is not None:
        log(f"dataelixir: {result.summary()}")
    return result


def _stage2(benign: nn.Module, finetune_fn: FinetuneFn, ambiguous: np.ndarray, stored: dict[int, np.ndarray],
            majority: np.ndarray, pick: Callable[[int, np.ndarray], np.ndarray],
            rest: LabelledImages) -> tuple[nn.Module, np.ndarray]:
    """Fine-tune ``benign`` on ``rest`` plus the consensus samples; returns the model and their indices."""
    chosen, labels, consensus = [], [], []
    for i in ambiguous:
        cand_labels, _ = classify(benign, stored[int(i)])
        if cand_labels[0] != majority[i]:
            continue
        mask = cand_labels == majority[i]  # the original and the intermediaries the benign model agrees on
        chosen.append(pick(int(i), mask))
        labels.append(int(majority[i]))
        consensus.append(int(i))
    if consensus:
        rest = LabelledImages(np.concatenate([rest.images, np.stack(chosen)]),
                              np.concatenate([rest.labels, np.asarray(labels, dtype=rest.labels.dtype)]),
                              rest.num_classes)
    return finetune_fn(benign, rest), np.asarray(consensus, dtype=np.int64)
