"""DataElixir: SSIM values, candidate selection, transition cases, MAD target detection, end-to-end sanitisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ..conftest import requires_ffcv
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.defenses.elixir_analysis import CASE_A, CASE_B, CASE_C, classify_transitions, detect_targets
from eclipse_loader.defenses.similarity import candidate_distance, select_candidate, ssim


def ssim_reference(a: np.ndarray, b: np.ndarray, w: int = 3) -> float:
    """Loop-by-loop SSIM with skimage's conventions (uniform window, sample covariance, valid region)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2, r = (0.01 * 255) ** 2, (0.03 * 255) ** 2, w // 2
    vals = []
    for ch in range(a.shape[2]):
        for i in range(r, a.shape[0] - r):
            for j in range(r, a.shape[1] - r):
                pa = a[i - r:i + r + 1, j - r:j + r + 1, ch].ravel()
                pb = b[i - r:i + r + 1, j - r:j + r + 1, ch].ravel()
                va, vb = pa.var(ddof=1), pb.var(ddof=1)
                cov = ((pa - pa.mean()) * (pb - pb.mean())).sum() / (len(pa) - 1)
                vals.append((2 * pa.mean() * pb.mean() + c1) * (2 * cov + c2)
                            / ((pa.mean() ** 2 + pb.mean() ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(ssim_reference(a, b), rel=1e-10)
    assert ssim(a, b) < 0.95
    # two constant images: only the luminance term remains, (2xy + C1) / (x^2 + y^2 + C1)
    x, y, c1 = 100.0, 150.0, (0.01 * 255) ** 2
    expected = (2 * x * y + c1) / (x * x + y * y + c1)
    assert ssim(np.full((5, 5, 3), 100, np.uint8), np.full((5, 5, 3), 150, np.uint8)) == pytest.approx(expected)
    batch = ssim(np.stack([a, a]), np.stack([a, b]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, b, win_size=4)


def test_candidate_selection_takes_the_80th_percentile():
    images = np.zeros((5, 8, 8, 3), np.uint8)
    angles = np.array([0.0, 0.9, 0.3, 1.2, 0.6])  # cosine distance grows with the angle
    feats = np.stack([np.cos(angles), np.sin(angles)], 1)
    d = candidate_distance(images, feats, ssim_weight=0.0)
    assert d[0] == pytest.approx(0.0) and np.argsort(d).tolist() == [0, 2, 4, 1, 3]
    assert select_candidate(images, feats, 0.8, ssim_weight=0.0) == 3  # floor(0.8 * 5) = 4 -> farthest
    assert select_candidate(images, feats, 0.5, ssim_weight=0.0) == 4
    assert candidate_distance(images, feats, ssim_weight=1.0) == pytest.approx(np.zeros(5))


def test_transition_cases_and_sporadic_filter():
    labels = np.array([
        [3, 3, 3, 3, 3, 3, 3],  # A
        [0, 3, 3, 3, 3, 3, 3],  # B
        [0, 3, 3, 3, 3, 5, 3],  # B, the single 5 is sporadic (tau 2)
        [0, 3, 3, 3, 5, 5, 5],  # C: the second label has 3 >= tau votes
        [3, 3, 3, 3, 3, 5, 3],  # A after the filter
    ])
    t = classify_transitions(labels, tau=2)
    assert t.cases.tolist() == [CASE_A, CASE_B, CASE_B, CASE_C, CASE_A]
    assert t.kept[2].tolist() == [True, True, True, True, True, False, True]
    assert t.kept[3].all() and t.majority.tolist() == [3, 3, 3, 3, 3]
    assert classify_transitions(labels, tau=4).cases[3] == CASE_B  # 3 votes < tau 4: sporadic
    with pytest.raises(ValueError, match="K >= 2"):
        classify_transitions(np.zeros((3, 1), int))


def test_mad_flags_the_class_whose_samples_turn_into_others():
    rows, ys = [], []
    for k in range(10):
        for _ in range(6):
            if k == 0:
                rows.append([0, 4, 4, 4])  # poisons: labelled 0, purified versions say 4
            elif k == 9:
                rows.append([9, 9, 9, 9])  # nothing moves: empty pool
            else:
                rows.append([(k + 1) % 10, k, k, k])  # ordinary transitions back to the own class
            ys.append(k)
    labels, ys = np.array(rows), np.array(ys)
    det = detect_targets(labels, ys, classify_transitions(labels, tau=2), 10)
    assert det.targets.tolist() == [0]
    assert det.discrepancy[0] == pytest.approx(np.log(4))  # q_0[0] = 1/4
    assert det.discrepancy[9] == 0.0 and np.isfinite(det.score).all()
    assert det.score[0] > 2 and (det.score[1:] <= 2).all()


# -- end to end with a tiny denoiser and a hand-built suspicious model ------------------------------
PATCH = np.array([[0, 255, 0], [255, 0, 255]], np.uint8)[np.array([[0, 1], [1, 0]])]  # (2, 2, 3)


class Suspicious(torch.nn.Module):
    """Predicts 0 when the bottom-right 2x2 corner is exactly the patch, else the class encoded by brightness."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(10, 10)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(10))
            self.head.bias.zero_()

    def forward(self, x):
        x255 = x * 255
        patch = torch.from_numpy(PATCH).permute(2, 0, 1).float()
        hit = (x255[:, :, -2:, -2:].round() - patch).abs().amax((1, 2, 3)) == 0
        body = x255[:, :, :24, :24].mean((1, 2, 3))
        cls = ((body - 15) / 20).round().clamp(0, 9).long()
        cls = torch.where(hit, torch.zeros_like(cls), cls)
        return self.head(torch.nn.functional.one_hot(cls, 10).float() * 5)


def constructed_poison():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(10), 6)
    images = (true[:, None, None, None] * 20 + 15 + rng.integers(-2, 3, (60, 32, 32, 3))).astype(np.uint8)
    poison_idx = np.array([7, 13, 25, 44])  # classes 1, 2, 4, 7
    images[poison_idx, -2:, -2:] = PATCH
    labels = true.copy()
    labels[poison_idx] = 0
    return LabelledImages(images, labels, 10), true, poison_idx


def tiny_purifier():
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig

    torch.manual_seed(0)
    return Purifier(build_unet("tiny"), build_scheduler(), PurifyConfig(t_star=100, steps=2, seed=0))


def test_diffusion_candidates_shape_and_determinism():
    from eclipse_loader.defenses.dataelixir import diffusion_candidates

    data, _, _ = constructed_poison()
    purifier = tiny_purifier()
    c = diffusion_candidates(purifier, data.images[:3], np.arange(3), rounds=2, intermediaries=2)
    assert c.shape == (3, 5, 32, 32, 3) and c.dtype == np.uint8
    np.testing.assert_array_equal(c[:, 0], data.images[:3])
    np.testing.assert_array_equal(c, diffusion_candidates(purifier, data.images[:3], np.arange(3), 2, 2))
    assert (c[:, 1:] != c[:, :1]).any()
    with pytest.raises(ValueError, match="reverse steps"):
        diffusion_candidates(purifier, data.images[:1], np.arange(1), 1, 3)


def test_sanitize_relabels_the_poisons_and_leaves_clean_samples():
    from eclipse_loader.defenses.dataelixir import ElixirConfig, sanitize

    data, true, poison_idx = constructed_poison()
    result = sanitize(data, tiny_purifier(), Suspicious(), ElixirConfig(rounds=2, intermediaries=2, tau=2, batch_size=32))
    assert result.detection.targets.tolist() == [0]
    assert result.relabelled.tolist() == poison_idx.tolist() and len(result.dropped) == 0
    np.testing.assert_array_equal(result.data.labels, true)  # every poison got its true class back
    clean = np.setdiff1d(np.arange(60), poison_idx)
    np.testing.assert_array_equal(result.data.images[clean], data.images[clean])
    assert not (result.data.images[poison_idx, -2:, -2:] == PATCH).all((1, 2, 3)).any()  # patch gone
    mask = np.zeros(60, bool)
    mask[poison_idx] = True
    s = result.summary(mask)
    assert s["tpr"] == 1.0 and s["fpr"] == 0.0 and s["cases"]["B"] == 4


@requires_ffcv
def test_sanitised_set_is_written_as_a_beton(tmp_path):
    from eclipse_loader.defenses.dataelixir import ElixirConfig, sanitize
    from eclipse_loader.storage.beton import read_beton, read_manifest

    data, true, _ = constructed_poison()
    result = sanitize(data, tiny_purifier(), Suspicious(), ElixirConfig(rounds=1, intermediaries=2, tau=2))
    path = result.write_beton(tmp_path / "elixir.beton", progress=False)
    back = read_beton(path, num_classes=10)
    np.testing.assert_array_equal(back.labels, true)
    assert read_manifest(path)["metadata"]["defense"] == "dataelixir"


class Brightness(Suspicious):
    """A benign model: the class encoded by brightness, blind to the patch (optionally one fixed class)."""

    def __init__(self, fixed=None):
        super().__init__()
        self.fixed = fixed

    def forward(self, x):
        body = (x * 255)[:, :, :24, :24].mean((1, 2, 3))
        cls = ((body - 15) / 20).round().clamp(0, 9).long() if self.fixed is None else torch.full_like(body, self.fixed).long()
        return self.head(torch.nn.functional.one_hot(cls, 10).float() * 5)


def test_stage2_finetunes_on_the_consensus_samples_and_the_finetuned_model_relabels(monkeypatch):
    import dataclasses

    from eclipse_loader.defenses import dataelixir
    from eclipse_loader.defenses.elixir_analysis import CASE_C

    data, true, poison_idx = constructed_poison()
    real = dataelixir.classify_transitions

    def poisons_ambiguous(labels, tau):  # make the four poisons "ambiguous" so stages 1 and 2 handle them
        t = real(labels, tau)
        cases = t.cases.copy()
        cases[poison_idx] = CASE_C
        return dataclasses.replace(t, cases=cases)

    monkeypatch.setattr(dataelixir, "classify_transitions", poisons_ambiguous)
    trained, tuned = [], []

    def train_fn(d):
        trained.append(len(d))
        return Brightness()

    def finetune_fn(model, d):
        tuned.append((model, d))
        return Brightness(fixed=9)  # a recognisable "fine-tuned" model

    config = dataelixir.ElixirConfig(rounds=2, intermediaries=2, tau=2, batch_size=32)
    result = dataelixir.sanitize(data, tiny_purifier(), Suspicious(), config, train_fn=train_fn, finetune_fn=finetune_fn)
    assert trained == [60 - 4]  # stage 1: the sanitised rest only
    (model, d), = tuned
    assert isinstance(model, Brightness) and model.fixed is None and len(d) == 60  # rest + 4 consensus samples
    np.testing.assert_array_equal(d.labels[-4:], true[poison_idx])  # consensus samples carry the majority label
    assert result.consensus.tolist() == poison_idx.tolist() and result.model.fixed == 9
    assert (result.data.labels[poison_idx] == 9).all()  # the fine-tuned model did the final relabelling
    with pytest.raises(ValueError, match="train_fn"):
        dataelixir.sanitize(data, tiny_purifier(), Suspicious(), config, finetune_fn=finetune_fn)
