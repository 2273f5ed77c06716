"""CGD: rank scores, flags, oversampling, the guided loss, roll-back (plain torch and Lightning), CLIP guard."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.defenses.cgd import (
    CGDConfig,
    CGDScores,
    ScoredDataset,
    cgd_finetune,
    cgd_loss,
    clip_zero_shot_logits,
    label_nll,
    oversampled_indices,
    rank_normalize,
    score_dataset,
)


def test_rank_normalize_and_nll():
    np.testing.assert_allclose(rank_normalize(np.array([3.0, 1.0, 2.0, 5.0])), [0.75, 0.25, 0.5, 1.0])
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(label_nll(logits, np.array([1, 0])), [np.log(1 + np.exp(2)), np.log(2)])


def scores_from(s_guide, s_susp, num_classes=2):
    n = len(s_guide)
    return CGDScores(np.zeros((n, num_classes), np.float32), np.asarray(s_guide, float), np.asarray(s_susp, float))


def test_flags_are_disjoint_and_follow_the_thresholds():
    s = scores_from([0.5, 0.95, 0.5, 0.85, 0.1], [0.5, 0.5, 0.05, 0.5, 0.15])
    assert s.clean_flag().tolist() == [True, False, False, False, False]
    assert s.poison_flag.tolist() == [False, True, True, False, False]  # 0.85 / 0.15: neither
    assert not (s.clean_flag() & s.poison_flag).any()


def test_clean_pool_is_oversampled_per_class_to_the_largest():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = scores_from([0.1, 0.2, 0.3, 0.9, 0.1, 0.95, 0.9, 0.9], [0.5] * 8)  # pool: three of class 0, one of class 1
    idx = oversampled_indices(s, labels, seed=0)
    counts = np.bincount(idx, minlength=8)
    assert counts[[3, 5, 6, 7]].tolist() == [1, 1, 1, 1]  # outside the pool: once
    assert counts[4] == 3 and counts[[0, 1, 2]].tolist() == [1, 1, 1]  # class-1 pool grows to 3


def test_loss_matches_a_hand_computation():
    cfg = CGDConfig()
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.0], [0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    guide = torch.tensor([[0.3, 0.1], [0.1, 0.3], [0.2, 0.25]])
    s_guide = torch.tensor([0.5, 0.95, 0.85])  # clean, poison, neither
    s_susp = torch.tensor([0.5, 0.5, 0.5])
    loss = cgd_loss(logits, labels, guide, s_guide, s_susp, cfg)
    t = cfg.temperature
    ce = F.cross_entropy(logits[:1], labels[:1])
    kd = F.kl_div(F.log_softmax(logits[1:2] / t, 1), F.softmax(guide[1:2] / t, 1), reduction="batchmean") * t * t
    repel = torch.log(F.softmax(logits[1], 0)[1] + 1e-6)
    assert float(loss.detach()) == pytest.approx(float(ce + cfg.alpha * kd + cfg.beta * repel), rel=1e-6)
    loss.backward()
    assert logits.grad[2].abs().sum() == 0  # the unflagged sample gets no gradient
    assert logits.grad[1, 1] > 0  # the repel term pushes the poison's given label down


def toy(n=80, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, (n, 8, 8, 3)).astype(np.uint8)
    images[labels == 0, :, :, 0] += 150  # class 0: red, class 1: green
    images[labels == 1, :, :, 1] += 150
    return LabelledImages(images, labels.astype(np.int64), 2)


def linear_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    with torch.no_grad():
        w = torch.zeros(2, 8, 8, 3)
        w[0, ..., 0], w[1, ..., 1] = 0.1, 0.1
        model[1].weight.copy_(w.permute(0, 3, 1, 2).reshape(2, 192))
        model[1].bias.zero_()
    return model


def test_score_dataset_uses_guide_and_suspicious_models():
    data = toy()
    guide = np.zeros((len(data), 2), np.float32)
    guide[np.arange(len(data)), data.labels] = 1.0
    guide[:5] = guide[:5, ::-1]  # the guide disagrees with five labels
    scores = score_dataset(data, guide, suspicious_factory=lambda c: torch.nn.Sequential(torch.nn.Flatten(),
                           torch.nn.Linear(192, c)), num_suspicious=2, epochs=1)
    assert scores.s_guide.min() > 0 and scores.s_guide.max() == 1.0
    assert (scores.s_guide[:5] > 0.9).all()  # highest guide NLL -> top ranks -> poison-flagged
    assert scores.poison_flag[:5].all()
    with pytest.raises(ValueError, match="guide logits"):
        score_dataset(data, guide[:3], suspicious_factory=linear_model.__class__)


def test_finetune_rolls_back_on_a_validation_drop():
    data, val = toy(), toy(40, seed=1)
    model = linear_model()
    scores = scores_from(np.full(len(data), 0.5), np.full(len(data), 0.5))
    flipped = LabelledImages(data.images, 1 - data.labels, 2)  # training on wrong labels ruins val accuracy
    tuned, history = cgd_finetune(model, flipped, scores, val, CGDConfig(lr=5.0, epochs=3, batch_size=16), augment=False)
    assert history[0]["val_accuracy"] == 1.0 and history[-1].get("rolled_back") and len(history) == 2
    for a, b in zip(tuned.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)  # rolled back to the weights before epoch 1
    kept, history = cgd_finetune(model, data, scores, val, CGDConfig(lr=0.01, epochs=2, batch_size=16))
    assert len(history) == 3 and not any(h.get("rolled_back") for h in history)


def test_finetune_feeds_only_full_batches():
    # the oversampled order does not fill its last batch, and that tail must not be trained on
    data, val = toy(81), toy(40, seed=1)
    model = linear_model()
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])) if module.training else None)
    scores = scores_from(np.full(len(data), 0.5), np.full(len(data), 0.5))
    cgd_finetune(model, data, scores, val, CGDConfig(lr=0.01, epochs=1, batch_size=16), augment=False)
    n = len(oversampled_indices(scores, data.labels, 0))
    assert n % 16 != 0 and sizes == [16] * (n // 16)
    sizes.clear()
    small, small_scores = toy(10), scores_from(np.full(10, 0.5), np.full(10, 0.5))
    cgd_finetune(model, small, small_scores, val, CGDConfig(lr=0.01, epochs=1, batch_size=16), augment=False)
    n = len(oversampled_indices(small_scores, small.labels, 0))
    assert n < 16 and sizes == [n]  # fewer samples than one batch: one batch of all of them


def test_lightning_module_and_rollback_callback(tmp_path):
    import lightning as L

    from eclipse_loader.defenses.cgd_module import CGDModule, CGDRollback

    data, val = toy(), toy(40, seed=1)
    flipped = LabelledImages(data.images, 1 - data.labels, 2)
    scores = scores_from(np.full(len(data), 0.5), np.full(len(data), 0.5))
    loader = torch.utils.data.DataLoader(ScoredDataset(flipped, scores), batch_size=16, shuffle=True)
    module = CGDModule(linear_model(), CGDConfig(lr=5.0))
    before = [p.detach().clone() for p in module.parameters()]
    rollback = CGDRollback(val, tolerance=1.0)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=200, callbacks=[rollback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert [h["epoch"] for h in rollback.history] == [0, 1] and rollback.history[-1]["rolled_back"]
    for a, b in zip(module.parameters(), before):
        torch.testing.assert_close(a.detach(), b)


def test_clip_needs_open_clip_or_local_weights(tmp_path):
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open-clip-torch"):
            clip_zero_shot_logits(np.zeros((1, 32, 32, 3), np.uint8), ["cat"], tmp_path / "none.bin")
    else:
        with pytest.raises(FileNotFoundError, match="placed locally"):
            clip_zero_shot_logits(np.zeros((1, 32, 32, 3), np.uint8), ["cat"], tmp_path / "none.bin")


TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32,
                                            "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_clip_zero_shot_logits_are_raw_cosines_of_the_local_checkpoint(tmp_path, cifar):
    open_clip = pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")
    import json

    from PIL import Image

    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.manual_seed(0)
    reference = open_clip.create_model("tiny-test-clip")
    torch.save(reference.state_dict(), tmp_path / "clip.pt")
    images, names = cifar["test_x"][:6], ["airplane", "automobile", "bird"]
    logits = clip_zero_shot_logits(images, names, tmp_path / "clip.pt", architecture="tiny-test-clip", batch_size=4)
    assert logits.shape == (6, 3) and np.abs(logits).max() <= 1.0 + 1e-5  # cosines, no logit scale

    # the same numbers by hand from the saved weights: a randomly initialised model would give others
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-test-clip")
    reference.eval()
    with torch.no_grad():
        text = reference.encode_text(open_clip.get_tokenizer("tiny-test-clip")([f"a photo of a {c}" for c in names]))
        x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
        expected = F.normalize(reference.encode_image(x), dim=-1) @ F.normalize(text, dim=-1).T
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-5)
    torch.manual_seed(1)
    other = open_clip.create_model("tiny-test-clip").eval()
    with torch.no_grad():
        assert not np.allclose(logits, (F.normalize(other.encode_image(x), dim=-1)
                                        @ F.normalize(other.encode_text(open_clip.get_tokenizer("tiny-test-clip")(
                                            [f"a photo of a {c}" for c in names])), dim=-1).T).numpy(), atol=1e-3)
