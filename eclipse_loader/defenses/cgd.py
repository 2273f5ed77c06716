"""CGD (ACM MM 2025): guide-model scores, then guided fine-tuning of the backdoored model.

Stage 1 (`score_dataset`): two per-sample NLLs of the *given* label, rank-normalised to (0, 1] over the
whole set: ``s_guide`` from a guide model that never saw the poisoned data (high when image and label
disagree), ``s_susp`` from the mean logits of 3 suspicious models trained briefly on the poisoned data
(backdoored samples are learned fastest: low NLL). The guide is CLIP zero-shot when open_clip weights
are given as a local path (`clip_zero_shot_logits`); otherwise a classifier trained on the trusted
sparse clean set stands in (a deviation from the paper, which relies on CLIP being independent of the
poisoned data; the stand-in keeps that independence, but is weaker).

Stage 2 (`cgd_loss`, `cgd_finetune`): cross-entropy on clean-flagged samples (s_guide <= 1 - sigma1
and s_susp >= sigma1), and on poison-flagged ones (s_guide > 1 - sigma2 or s_susp < sigma2) the
distillation ``alpha T^2 KL(softmax(g/T) || softmax(f/T))`` toward the guide plus the repel term
``beta mean log(softmax(f)[y] + 1e-6)``; at most ``iters_per_epoch`` batches per epoch, and a roll-back
to the previous epoch's weights when the clean validation accuracy drops ``tolerance`` points below
the best so far. The Lightning glue is `cgd_module`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import LabelledImages
from ..evaluation.victim import evaluate
from ..loading import torch_loader


def rank_normalize(values: np.ndarray) -> np.ndarray:
    """``rank / N`` in (0, 1] (smallest value -> 1/N; ties broken by position)."""
    values = np.asarray(values)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(1, len(values) + 1)
    return ranks / max(len(values), 1)


def label_nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log softmax(logits)[label]`` per row."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return (-torch.log_softmax(t, 1)[torch.arange(len(t)), torch.as_tensor(labels)]).numpy()


@torch.no_grad()
def model_logits(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of uint8 NHWC ``images`` (inputs scaled to [0, 1])."""
    device = next(model.parameters()).device
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).permute(0, 3, 1, 2).float()
                 .div(255).to(device)).float().cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def clip_zero_shot_logits(images: np.ndarray, class_names: Sequence[str], weights: Union[str, Path], *,
                          architecture: str = "ViT-B-32", template: str = "a photo of a {}",
                          batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Raw cosine similarities (no logit scale, as in CGD's code) between images and class prompts.

    Args:
        weights: local path of the open_clip checkpoint (paper: ViT-B-32 ``laion2b_s34b_b79k``).
    Raises:
        ImportError: open_clip is not installed (``pip install open-clip-torch``).
        FileNotFoundError: ``weights`` does not exist (nothing is downloaded).
    """
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("CLIP guidance needs open_clip: pip install open-clip-torch (the [clip] extra) "
                          "(or leave the CLIP weights out to use the sparse-set guide model)") from err
    if not Path(weights).is_file():
        raise FileNotFoundError(f"CLIP weights not found at {weights}; they must be placed locally")
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=str(weights), device=device)
    tokenizer = open_clip.get_tokenizer(architecture)
    model.eval()
    with torch.no_grad():
        text = model.encode_text(tokenizer([template.format(c) for c in class_names]).to(device)).float()
        text = F.normalize(text, dim=-1)
        out = []
        for s in range(0, len(images), batch_size):
            x = torch.stack([preprocess(Image.fromarray(im)) for im in images[s:s + batch_size]]).to(device)
            out.append((F.normalize(model.encode_image(x).float(), dim=-1) @ text.T).cpu())
    return torch.cat(out).numpy()


def train_suspicious(data: LabelledImages, factory: Callable[[int], nn.Module], *, epochs: int = 5,
                     lr: float = 3e-4, weight_decay: float = 5e-4, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """A suspicious model: Adam, no augmentation, a few epochs on the (poisoned) data."""
    torch.manual_seed(seed)
    model = factory(data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = torch_loader.TorchEpochLoader(data, batch_size, shuffle=True, seed=seed)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@dataclass(frozen=True)
class CGDScores:
    """Per-sample CGD scores (save with `save`, reload with `load`)."""

    guide_logits: np.ndarray
    s_guide: np.ndarray
    s_susp: np.ndarray

    def clean_flag(self, sigma1: float = 0.2) -> np.ndarray:
        return (self.s_guide <= 1 - sigma1) & (self.s_susp >= sigma1)

    def poison_flag_at(self, sigma2: float = 0.1) -> np.ndarray:
        return (self.s_guide > 1 - sigma2) | (self.s_susp < sigma2)

    @property
    def poison_flag(self) -> np.ndarray:
        return self.poison_flag_at()

    def clean_pool(self) -> np.ndarray:
        """Stage-1 clean pool (s_guide <= 0.8 and s_susp >= 0.2): a pseudo-clean subset for other defences."""
        return (self.s_guide <= 0.8) & (self.s_susp >= 0.2)

    def save(self, path: Union[str, Path]) -> None:
        np.savez(path, guide_logits=self.guide_logits, s_guide=self.s_guide, s_susp=self.s_susp)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "CGDScores":
        with np.load(path) as z:
            return cls(z["guide_logits"], z["s_guide"], z["s_susp"])


def score_dataset(data: LabelledImages, guide: Union[nn.Module, np.ndarray], *,
                  suspicious_factory: Callable[[int], nn.Module], num_suspicious: int = 3, epochs: int = 5,
                  seed: int = 0, log: Optional[Callable[[str], None]] = None) -> CGDScores:
    """Stage 1: guide logits (a model, or precomputed e.g. by `clip_zero_shot_logits`) and suspicious logits."""
    guide_logits = model_logits(guide, data.images) if isinstance(guide, nn.Module) else np.asarray(guide, np.float32)
    if guide_logits.shape != (len(data), data.num_classes):
        raise ValueError(f"guide logits must be {(len(data), data.num_classes)}, got {guide_logits.shape}")
    susp = np.zeros_like(guide_logits, dtype=np.float64)
    for m in range(num_suspicious):
        if log is not None:
            log(f"cgd: suspicious model {m + 1}/{num_suspicious}")
        susp += model_logits(train_suspicious(data, suspicious_factory, epochs=epochs, seed=seed + m), data.images)
    susp /= num_suspicious
    return CGDScores(guide_logits, rank_normalize(label_nll(guide_logits, data.labels)),
                     rank_normalize(label_nll(susp, data.labels)))


def oversampled_indices(scores: CGDScores, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every index outside the clean pool once, plus the clean pool oversampled per class (with
    replacement) up to the largest per-class pool count."""
    labels = np.asarray(labels)
    pool = scores.clean_pool()
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(pool & (labels == c)) for c in np.unique(labels)]
    target = max(len(p) for p in per_class)
    extra = [rng.choice(p, target - len(p), replace=True) for p in per_class if 0 < len(p) < target]
    return np.sort(np.concatenate([np.arange(len(labels)), *extra]).astype(np.int64))


@dataclass(frozen=True)
class CGDConfig:
    """Stage-2 hyperparameters (defaults: the released CIFAR-10 config)."""

    alpha: float = 5e-4
    beta: float = 0.025
    temperature: float = 3.0
    sigma1: float = 0.2
    sigma2: float = 0.1
    tolerance: float = 1.0
    epochs: int = 10
    iters_per_epoch: int = 200
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if not (0 < self.sigma2 <= self.sigma1 < 0.5):
            raise ValueError(f"need 0 < sigma2 <= sigma1 < 0.5, got {self.sigma1}, {self.sigma2}")
        if self.temperature <= 0 or self.epochs < 1 or self.iters_per_epoch < 1 or self.batch_size < 1:
            raise ValueError(f"temperature, epochs, iters_per_epoch and batch_size must be positive: {self}")


def cgd_loss(logits: torch.Tensor, labels: torch.Tensor, guide_logits: torch.Tensor, s_guide: torch.Tensor,
             s_susp: torch.Tensor, config: CGDConfig = CGDConfig()) -> torch.Tensor:
    """The three-way masked CGD loss of one batch (samples in neither set contribute nothing)."""
    clean = (s_guide <= 1 - config.sigma1) & (s_susp >= config.sigma1)
    poison = (s_guide > 1 - config.sigma2) | (s_susp < config.sigma2)
    loss = logits.sum() * 0.0
    if clean.any():
        loss = loss + F.cross_entropy(logits[clean], labels[clean])
    if poison.any():
        t = config.temperature
        kd = F.kl_div(F.log_softmax(logits[poison] / t, 1), F.softmax(guide_logits[poison] / t, 1),
                      reduction="batchmean") * t * t
        p_label = F.softmax(logits[poison], 1).gather(1, labels[poison, None]).squeeze(1)
        loss = loss + config.alpha * kd + config.beta * torch.log(p_label + 1e-6).mean()
    return loss


def cgd_finetune(model: nn.Module, data: LabelledImages, scores: CGDScores, val: LabelledImages,
                 config: CGDConfig = CGDConfig(), *, seed: int = 0, augment: bool = True,
                 log: Optional[Callable[[str], None]] = None) -> tuple[nn.Module, list[dict]]:
    """Stage 2 in plain torch on a copy of ``model``; returns the defended model and per-epoch records."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order = oversampled_indices(scores, data.labels, seed)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    labels = torch.from_numpy(data.labels)
    guide = torch.as_tensor(scores.guide_logits, dtype=torch.float32)
    sg, ss = torch.as_tensor(scores.s_guide), torch.as_tensor(scores.s_susp)
    best = evaluate(model, val)
    history = [{"epoch": 0, "val_accuracy": best}]
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, config.epochs + 1):
        previous = copy.deepcopy(model.state_dict())
        model.train()
        perm = torch.as_tensor(order)[torch.randperm(len(order), generator=gen)]
        # full batches only: a tiny last batch (6 of 5,382 samples in the CPU benchmark) gave a
        # BatchNorm-normalised gradient step that cut validation accuracy by 24 points on its own
        for it, s in enumerate(range(0, max(len(perm) - config.batch_size + 1, 1), config.batch_size)):
            if it == config.iters_per_epoch:
                break
            idx = perm[s:s + config.batch_size]
            x = images[idx]
            if augment:
                keys = torch.randint(0, 2**31, (len(idx),), generator=gen)
                x = torch_loader.flip_and_translate(x, keys, True, 4)
            loss = cgd_loss(model(x.float() / 255), labels[idx], guide[idx], sg[idx], ss[idx], config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = evaluate(model, val)
        history.append({"epoch": epoch, "val_accuracy": acc})
        if log is not None:
            log(f"cgd: epoch {epoch} val accuracy {acc:.4f} (best {best:.4f})")
        if acc <= best - config.tolerance / 100:
            model.load_state_dict(previous)
            history[-1]["rolled_back"] = True
            break
        best = max(best, acc)
    return model.eval(), history


class ScoredDataset(torch.utils.data.Dataset):
    """Items ``(image float CHW in [0, 1], label, index, guide_logits, s_guide, s_susp)`` for the CGD loss.

    Sample it with ``oversampled_indices(scores, data.labels)`` (e.g. a ``SubsetRandomSampler``).
    """

    def __init__(self, data: LabelledImages, scores: CGDScores) -> None:
        if len(scores.s_guide) != len(data):
            raise ValueError(f"{len(scores.s_guide)} scores for {len(data)} samples")
        self.data, self.scores = data, scores

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, torch.Tensor, float, float]:
        image = torch.from_numpy(self.data.images[i]).permute(2, 0, 1).float() / 255
        return (image, int(self.data.labels[i]), int(i), torch.as_tensor(self.scores.guide_logits[i], dtype=torch.float32),
                float(self.scores.s_guide[i]), float(self.scores.s_susp[i]))
