"""EPIC: facility location, per-class budgets on unbalanced classes, the singleton drop, schedule, sampler, callback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.defenses.epic import (
    EpicSampler,
    EpicSchedule,
    EpicSelector,
    class_budgets,
    facility_location,
    gradient_proxy,
    select_isolated,
    similarity,
)


def naive_greedy(sim: np.ndarray, k: int) -> list[int]:
    best = np.zeros(len(sim))
    chosen: list[int] = []
    for _ in range(k):
        gains = np.maximum(sim - best[:, None], 0.0).sum(0)
        gains[chosen] = -1.0
        j = int(np.argmax(gains))
        chosen.append(j)
        best = np.maximum(best, sim[:, j])
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_matches_naive_greedy(seed):
    rng = np.random.default_rng(seed)
    sim = similarity(rng.normal(size=(60, 10)), "euclidean")
    assert facility_location(sim, 12) == naive_greedy(sim, 12)


def test_similarity_kernel_is_submodlib_euclidean():
    f = np.array([[0.0, 0.0], [3.0, 4.0]])
    s = similarity(f, "euclidean")
    assert s[0, 0] == pytest.approx(1.0) and s[0, 1] == pytest.approx(np.exp(-5.0 / 2))
    with pytest.raises(ValueError, match="metric"):
        similarity(f, "manhattan")


def unbalanced_example():
    """Class 0 (8 points, interleaved with class 1): two tight groups and one isolated point; class 1: a pair."""
    g0 = [[0, 0], [0.01, 0], [0, 0.01], [0.01, 0.01], [5, 5], [5.01, 5], [5, 5.01], [20, -20]]
    g1 = [[1, 1], [1.01, 1]]
    grads = np.array(g0[:3] + g1[:1] + g0[3:6] + g1[1:] + g0[6:], dtype=np.float64)
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    return grads, labels


def test_budgets_are_proportional_and_sum_to_b():
    k = class_budgets(np.array([8, 2]), 0.4, np.random.default_rng(0))
    assert k.tolist() == [3, 1]  # ceil(3.2)=4, ceil(0.8)=1 -> overshoot removed from the only reducible class
    k = class_budgets(np.array([500, 300, 200]), 0.1)
    assert k.sum() == 100 and k.tolist() == [50, 30, 20]
    with pytest.raises(ValueError, match="subset_size"):
        class_budgets(np.array([3]), 0.0)


def test_unbalanced_classes_drop_exactly_the_isolated_point():
    grads, labels = unbalanced_example()
    sel = select_isolated(grads, labels, 0.4, generator=np.random.default_rng(0))
    isolated = 9  # the [20, -20] point of class 0
    assert sel.isolated.tolist() == [isolated]
    # medoids are global indices of their own class, and every point maps to a medoid of its class
    assert set(sel.medoids.tolist()) >= {isolated}
    assert (labels[sel.assignment] == labels).all()
    # class 1's single medoid owns both class-1 points (with offset ids this count goes wrong on unbalanced budgets)
    assert sel.cluster_size[3] == sel.cluster_size[7] == 2
    assert sel.cluster_size[isolated] == 1


def test_singleton_class_is_dropped_and_threshold_is_respected():
    grads = np.array([[0, 0], [0.01, 0], [0, 0.01], [3, 3]], dtype=float)
    labels = np.array([0, 0, 0, 1])
    sel = select_isolated(grads, labels, 0.5)
    assert sel.isolated.tolist() == [3]
    sel = select_isolated(grads, labels, 0.5, cluster_thresh=0)
    assert sel.isolated.tolist() == []


def test_gradient_proxy_is_softmax_minus_onehot_with_bias():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([5.0, -5.0, 0.0]))
    rng = np.random.default_rng(0)
    data = LabelledImages(rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 7), 3)
    g = gradient_proxy(model, data, batch_size=3)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    expected = torch.softmax(model(x), 1).detach().numpy() - np.eye(3)[data.labels]
    np.testing.assert_allclose(g, expected, atol=1e-6)
    np.testing.assert_allclose(g.sum(1), 0.0, atol=1e-6)


def test_schedule_matches_the_paper_epochs():
    sched = EpicSchedule(subset_size=0.1, warmup=30, period=10, last_milestone=150)
    assert [e for e in range(200) if sched.fires(e)] == list(range(30, 151, 10))
    transfer = EpicSchedule(subset_size=0.2, warmup=1, period=1, stop_after=10)
    assert [e for e in range(40) if transfer.fires(e)] == list(range(1, 10))
    assert not any(EpicSchedule(subset_size=1.0, warmup=0, period=1).fires(e) for e in range(5))
    with pytest.raises(ValueError, match="period"):
        EpicSchedule(period=0)


def test_sampler_drops_permanently_and_shuffles_per_epoch():
    s = EpicSampler(10, seed=3)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    assert sorted(a) == list(range(10)) and list(s) != a
    keep = np.ones(10, bool)
    keep[[2, 5]] = False
    assert s.drop(keep) == 2
    assert s.drop(np.ones(10, bool)) == 0  # dropped examples never come back
    assert len(s) == 8 and not {2, 5} & set(s)
    with pytest.raises(ValueError, match="shape"):
        s.drop(np.ones(3, bool))


def test_selector_runs_on_schedule_and_records_recall():
    grads, labels = unbalanced_example()
    data = LabelledImages(np.zeros((10, 2, 2, 3), np.uint8), labels, 2)

    class Fixed(torch.nn.Module):  # returns logits whose softmax-minus-onehot is close to the hand-made grads
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x):
            start = self.calls
            self.calls += len(x)
            return torch.from_numpy(grads[start:start + len(x)]).float() * 3

    sampler = EpicSampler(10)
    poison = np.zeros(10, bool)
    poison[9] = True
    selector = EpicSelector(data, sampler, EpicSchedule(0.4, warmup=2, period=2), poison_mask=poison, batch_size=4)
    model = Fixed()
    assert selector.maybe_select(1, model) is None and model.calls == 0
    assert selector.maybe_select(2, model) is not None
    assert not sampler.active[9] and len(sampler) < 10
    assert selector.history[-1]["poison_recall"] == 1.0


def test_lightning_callback_shrinks_the_epoch(tmp_path):
    import lightning as L

    from eclipse_loader.defenses.epic_callback import EpicCallback

    rng = np.random.default_rng(0)
    n = 60
    data = LabelledImages(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n), 3)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    dataset = torch.utils.data.TensorDataset(x, torch.from_numpy(data.labels))
    sampler = EpicSampler(n, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, sampler=sampler)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
            self.seen: dict[int, int] = {}

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            xb, yb = batch
            self.seen[self.current_epoch] = self.seen.get(self.current_epoch, 0) + len(yb)
            return torch.nn.functional.cross_entropy(self(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    callback = EpicCallback(data, sampler, EpicSchedule(subset_size=0.5, warmup=1, period=1, stop_after=2))
    module = Module()
    trainer = L.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert [h["epoch"] for h in callback.history] == [1]
    assert module.seen[0] == n
    assert 0 < callback.history[0]["newly_dropped"] and module.seen[1] == module.seen[2] == len(sampler) < n

    # a loader that does not draw from the callback's sampler is refused with the fix named
    other = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
    trainer = L.Trainer(max_epochs=1, callbacks=[EpicCallback(data, EpicSampler(n))], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        trainer.fit(Module(), other)


def test_sampler_shards_the_active_examples_over_ranks():
    shards = [EpicSampler(11, seed=2, num_replicas=3, rank=r) for r in range(3)]
    keep = np.ones(11, bool)
    keep[[0, 4]] = False
    for s in shards:
        s.drop(keep)
        s.set_epoch(5)
    seen = [list(s) for s in shards]
    assert [len(s) for s in shards] == [3, 3, 3] and all(len(v) == 3 for v in seen)  # ceil(9 / 3)
    assert sorted(sum(seen, [])) == sorted(np.flatnonzero(keep).tolist())
    single = EpicSampler(11, seed=2)
    single.drop(keep)
    single.set_epoch(5)
    assert sum((list(v) for v in zip(*seen)), []) == list(single)  # the same permutation, dealt out
    with pytest.raises(ValueError, match="rank"):
        EpicSampler(4, num_replicas=2, rank=2)


@pytest.mark.slow
def test_callback_under_two_process_ddp_keeps_the_ranks_masks_equal(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("epic_ddp_script.py")
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["active"] == ranks[1]["active"] and ranks[0]["history"] == ranks[1]["history"]
    assert [h["epoch"] for h in ranks[0]["history"]] == [1, 2]
    active = set(np.flatnonzero(ranks[0]["active"]).tolist())
    assert 0 < len(active) < 61
    a, b = (set(r["seen"]["0"]) for r in ranks)
    assert a | b == set(range(61)) and len(a & b) <= 1  # epoch 0: all examples, one wrapped around
    for epoch in ("2", "3"):  # after the selections: only the surviving examples, split between the ranks
        a, b = (r["seen"][epoch] for r in ranks)
        assert set(a) | set(b) == active and len(a) == len(b) == -(-len(active) // 2)
