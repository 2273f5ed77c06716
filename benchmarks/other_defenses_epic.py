"""EPIC against feature-collision poisons, transfer-learning scenario, at CPU scale.

    nice -n 15 python benchmarks/other_defenses_epic.py --trials 10 --poisons 10 --craft-steps 50

Protocol (EPIC paper's "FC, CIFAR-10 transfer" scenario, scaled down):

* a `quick_cnn` feature extractor is trained on 10,000 clean CIFAR-10 training images
  (train[25000:35000], crop + flip, one-cycle SGD) and then frozen: the "clean pre-trained model";
* the victim re-trains only a fresh linear head on a class-balanced fine-tuning set (``--finetune-size``,
  default 5,000) drawn from train[:25000] (SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, ``--epochs`` epochs, features
  cached, no augmentation);
* each trial draws a target test image and an adversarial class, replaces ``--poisons`` fine-tuning
  images of that class with feature-collision poisons (Poison Frogs: watermark opacity 0.3, Adam on
  the feature distance + pixel proximity, optional l-inf budget), and trains the head twice: without
  a defence and with EPIC (transfer setting of the paper: subset 0.2, K = 1, T = 1, stop after 10);
* attack success = the target is classified as the adversarial class; clean accuracy on the 10,000
  CIFAR-10 test images. Also reported: how many poisons / clean images EPIC dropped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, machine_info  # noqa: E402

from eclipse_loader.data.images import LabelledImages  # noqa: E402
from eclipse_loader.data.sparse import select_sparse_indices  # noqa: E402
from eclipse_loader.defenses.epic import EpicSampler, EpicSchedule, select_isolated  # noqa: E402
from eclipse_loader.evaluation.defenses import CROP_FLIP  # noqa: E402
from eclipse_loader.evaluation.victim import TrainRecipe, evaluate, quick_cnn, train_classifier  # noqa: E402
from eclipse_loader.poisons.targeted import plant_feature_collision  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@torch.no_grad()
def features(extractor: nn.Module, images: np.ndarray) -> torch.Tensor:
    out = []
    for s in range(0, len(images), 500):
        x = torch.from_numpy(images[s:s + 500]).permute(0, 3, 1, 2).float().div(255.0)
        out.append(extractor(x.contiguous(memory_format=torch.channels_last)).flatten(1))
    return torch.cat(out)


def train_head(feats: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace, seed: int,
               schedule: EpicSchedule | None) -> tuple[nn.Linear, EpicSampler, list[dict]]:
    """A fresh linear head on cached features; with ``schedule``, EPIC prunes the sampler as it trains."""
    torch.manual_seed(seed)
    head = nn.Linear(feats.shape[1], 10)
    opt = torch.optim.SGD(head.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sampler = EpicSampler(len(labels), seed=seed)
    history = []
    for epoch in range(args.epochs):
        if schedule is not None and schedule.fires(epoch):
            with torch.no_grad():
                g = torch.softmax(head(feats), 1)
                g[torch.arange(len(labels)), labels] -= 1.0
            sel = select_isolated(g.numpy(), labels.numpy(), schedule.subset_size,
                                  cluster_thresh=schedule.cluster_thresh, generator=np.random.default_rng([seed, epoch]))
            history.append({"epoch": epoch, "newly_dropped": sampler.drop(sel.keep), "active": len(sampler)})
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler))
        for s in range(0, len(order), 128):
            idx = order[s:s + 128]
            loss = nn.functional.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head, sampler, history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--poisons", type=int, default=25, help="poisons per target (0.5%% of the 5k fine-tuning set)")
    p.add_argument("--epsilon", type=float, default=None, help="l-inf budget in [0,1] (default: none, as Poison Frogs)")
    p.add_argument("--craft-steps", type=int, default=300)
    p.add_argument("--finetune-size", type=int, default=5000, help="class-balanced fine-tuning set size")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--subset-size", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is much faster on a contended CPU)")
    p.add_argument("--out", type=Path, default=RESULTS / "other-defenses-epic.json")
    p.add_argument("--cache", type=Path, default=Path("bench-work/epic"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    raw = np.load(DATA)
    pool = LabelledImages(raw["train_x"][:25000], raw["train_y"][:25000].astype(np.int64), 10)
    finetune = pool.subset(select_sparse_indices(pool, count=args.finetune_size, seed=args.seed))
    pretrain = LabelledImages(raw["train_x"][25000:35000], raw["train_y"][25000:35000].astype(np.int64), 10)
    test = LabelledImages(raw["test_x"], raw["test_y"].astype(np.int64), 10)

    args.cache.mkdir(parents=True, exist_ok=True)
    ckpt = args.cache / f"extractor-seed{args.seed}.pt"
    model = quick_cnn(10).to(memory_format=torch.channels_last)
    if ckpt.is_file():
        model.load_state_dict(torch.load(ckpt, weights_only=True))
    else:
        log("training the feature extractor on 10k clean images")
        model = train_classifier(pretrain, CROP_FLIP, recipe=TrainRecipe(epochs=12, batch_size=128, lr=0.05),
                                 seed=args.seed, model_factory=quick_cnn)
        torch.save(model.state_dict(), ckpt)
    model.eval()
    pretrained_acc = evaluate(model, test)
    extractor = model[:-1]
    ft_feats, test_feats = features(extractor, finetune.images), features(extractor, test.images)
    ft_labels, test_labels = torch.from_numpy(finetune.labels), torch.from_numpy(test.labels)
    schedule = EpicSchedule(subset_size=args.subset_size, warmup=1, period=1, stop_after=10)
    log(f"pre-trained extractor: test accuracy {pretrained_acc:.4f}")

    rng = np.random.default_rng(args.seed)
    trials = []
    for trial in range(args.trials):
        t_idx = int(rng.integers(len(test)))
        t_label = int(test.labels[t_idx])
        adv = int(rng.choice([c for c in range(10) if c != t_label]))
        poison = plant_feature_collision(finetune, extractor, test.images[t_idx], t_label, adv,
                                         num_poisons=args.poisons, seed=args.seed * 1000 + trial,
                                         steps=args.craft_steps, epsilon=args.epsilon)
        feats = ft_feats.clone()
        feats[poison.poison_indices] = features(extractor, poison.data.images[poison.poison_indices])
        target_feat = test_feats[t_idx:t_idx + 1]
        record = {"target_index": t_idx, "target_label": t_label, "adversarial_label": adv}
        for name, sched in (("clean", None), ("none", None), ("epic", schedule)):
            head, sampler, history = train_head(ft_feats if name == "clean" else feats, ft_labels, args,
                                                args.seed + trial, sched)
            with torch.no_grad():
                pred = int(head(target_feat).argmax(1))
                acc = float((head(test_feats).argmax(1) == test_labels).float().mean())
            rec = {"success": pred == adv, "target_pred": pred, "clean_accuracy": acc}
            if name == "epic":
                dropped = ~sampler.active
                rec.update(dropped=int(dropped.sum()), poisons_dropped=int(dropped[poison.poison_indices].sum()),
                           selections=history)
            record[name] = rec
        trials.append(record)
        log(f"trial {trial} ({time.perf_counter() - start:.0f} s): target {t_idx} ({t_label}->{adv}) none={record['none']['success']} "
            f"epic={record['epic']['success']} poisons dropped {record['epic']['poisons_dropped']}/{args.poisons}, "
            f"all dropped {record['epic']['dropped']}")

    def summary(name: str) -> dict:
        s = {"attack_success_rate": float(np.mean([t[name]["success"] for t in trials])),
             "clean_accuracy": float(np.mean([t[name]["clean_accuracy"] for t in trials]))}
        if name == "epic":
            s["poison_recall"] = float(np.mean([t["epic"]["poisons_dropped"] for t in trials]) / args.poisons)
            s["mean_dropped"] = float(np.mean([t["epic"]["dropped"] for t in trials]))
        return s

    result = {
        "bench": "other-defenses-epic",
        "command": command_line(),
        "machine": machine_info(),
        "protocol": __doc__.split("Protocol", 1)[1].strip(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pretrained_extractor_test_accuracy": pretrained_acc,
        "summary": {"no poisons": summary("clean"), "poisoned, no defence": summary("none"),
                    f"poisoned, EPIC-{args.subset_size}": summary("epic")},
        "trials": trials,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    log(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
