"""EPIC against targeted clean-label poisons (feature collision or gradient matching), transfer scenario, CPU scale.

    nice -n 15 python benchmarks/other_defenses_epic.py --trials 10 --poisons 10 --craft-steps 50
    nice -n 15 python benchmarks/other_defenses_epic.py --attack gradient-matching --trials 8 --finetune-size 2000 \
        --poisons 20 --out benchmarks/results/other-defenses-epic-gm.json

Protocol (EPIC paper's "FC, CIFAR-10 transfer" scenario, scaled down):

* a `quick_cnn` feature extractor is trained on 10,000 clean CIFAR-10 training images
  (train[25000:35000], crop + flip, one-cycle SGD) and then frozen: the "clean pre-trained model";
* the victim re-trains only a fresh linear head on a class-balanced fine-tuning set (``--finetune-size``,
  default 5,000) drawn from train[:25000] (SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, ``--epochs`` epochs, features
  cached, no augmentation);
* each trial draws a target test image and an adversarial class, replaces ``--poisons`` fine-tuning
  images of that class with poisons, and trains the head twice: without a defence and with EPIC
  (transfer setting of the paper: subset 0.2, K = 1, T = 1, stop after 10);
* ``--attack feature-collision`` (default): Poison Frogs (watermark opacity 0.3, Adam on the feature
  distance + pixel proximity, ``--craft-steps`` default 300, optional l-inf budget ``--epsilon``);
* ``--attack gradient-matching``: Witches' Brew (signed Adam on an l-inf perturbation, ``--epsilon``
  default 16/255, ``--craft-steps`` default 240, ``--restarts`` default 8, no crafting augmentation),
  crafted against the frozen extractor + a linear head the attacker trains on the clean fine-tuning
  set (same training settings as the victim's, a different seed): the attacker knows the architecture, the
  extractor and the clean data, not the victim's head initialisation or batch order;
* attack success = the target is classified as the adversarial class; clean accuracy on the 10,000
  CIFAR-10 test images. Also reported: how many poisons / clean images EPIC dropped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import RESULTS, command_line, machine_info

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.data.sparse import select_sparse_indices
from eclipse_loader.defenses.epic import EpicSampler, EpicSchedule, select_isolated
from eclipse_loader.evaluation.defense_registry import CROP_FLIP
from eclipse_loader.evaluation.victim import TrainSettings, evaluate, quick_cnn, train_classifier
from eclipse_loader.poisons.targeted import plant_feature_collision, plant_gradient_matching

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"
CRAFT_HEAD_SEED_OFFSET = 10_000  # the attacker's crafting head: a seed no victim head uses
GM_LR = 0.025  # signed Adam step in [0, 1] pixel units (the paper's 0.1 in CIFAR-normalised units)


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
    p.add_argument("--attack", choices=("feature-collision", "gradient-matching"), default="feature-collision")
    p.add_argument("--epsilon", type=float, default=None,
                   help="l-inf budget in [0,1] (default: none for feature collision, as Poison Frogs; 16/255 for "
                        "gradient matching, as Witches' Brew)")
    p.add_argument("--craft-steps", type=int, default=None, help="default 300 (feature collision), 240 (gradient matching)")
    p.add_argument("--restarts", type=int, default=8, help="gradient matching: random restarts, best alignment kept")
    p.add_argument("--finetune-size", type=int, default=5000, help="class-balanced fine-tuning set size")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--subset-size", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is much faster on a contended CPU)")
    p.add_argument("--out", type=Path, default=RESULTS / "other-defenses-epic.json")
    p.add_argument("--cache", type=Path, default=Path("bench-work/epic"))
    args = p.parse_args()
    gm = args.attack == "gradient-matching"
    if args.craft_steps is None:
        args.craft_steps = 240 if gm else 300
    if args.epsilon is None and gm:
        args.epsilon = 16 / 255
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
        model = train_classifier(pretrain, CROP_FLIP, training=TrainSettings(epochs=12, batch_size=128, lr=0.05),
                                 seed=args.seed, model_factory=quick_cnn)
        torch.save(model.state_dict(), ckpt)
    model.eval()
    pretrained_acc = evaluate(model, test)
    extractor = model[:-1]
    ft_feats, test_feats = features(extractor, finetune.images), features(extractor, test.images)
    ft_labels, test_labels = torch.from_numpy(finetune.labels), torch.from_numpy(test.labels)
    schedule = EpicSchedule(subset_size=args.subset_size, warmup=1, period=1, stop_after=10)
    log(f"pre-trained extractor: test accuracy {pretrained_acc:.4f}")
    attack: dict = {"name": args.attack, "epsilon": args.epsilon, "steps": args.craft_steps}
    if gm:
        for param in extractor.parameters():
            param.requires_grad_(False)
        craft_head, _, _ = train_head(ft_feats, ft_labels, args, args.seed + CRAFT_HEAD_SEED_OFFSET, None)
        craft_model = nn.Sequential(extractor, craft_head).eval()
        with torch.no_grad():
            craft_acc = float((craft_head(test_feats).argmax(1) == test_labels).float().mean())
        attack.update(restarts=args.restarts, lr=GM_LR, optimizer="signed Adam, x0.1 at 3/8, 5/8, 7/8 of the steps",
                      crafting_model="frozen extractor + linear head trained on the clean fine-tuning set",
                      crafting_head_seed=args.seed + CRAFT_HEAD_SEED_OFFSET, crafting_head_test_accuracy=craft_acc,
                      augmentation=None)
        log(f"attacker's crafting head: test accuracy {craft_acc:.4f}")
    else:
        attack.update(opacity=0.3, lr=0.01, beta=0.1)

    rng = np.random.default_rng(args.seed)
    trials = []
    for trial in range(args.trials):
        t_idx = int(rng.integers(len(test)))
        t_label = int(test.labels[t_idx])
        adv = int(rng.choice([c for c in range(10) if c != t_label]))
        craft_start = time.perf_counter()
        if gm:
            poison = plant_gradient_matching(finetune, craft_model, list(craft_head.parameters()), test.images[t_idx],
                                             t_label, adv, num_poisons=args.poisons, seed=args.seed * 1000 + trial,
                                             steps=args.craft_steps, restarts=args.restarts, epsilon=args.epsilon, lr=GM_LR)
        else:
            poison = plant_feature_collision(finetune, extractor, test.images[t_idx], t_label, adv,
                                             num_poisons=args.poisons, seed=args.seed * 1000 + trial,
                                             steps=args.craft_steps, epsilon=args.epsilon)
        craft_seconds = time.perf_counter() - craft_start
        feats = ft_feats.clone()
        feats[poison.poison_indices] = features(extractor, poison.data.images[poison.poison_indices])
        target_feat = test_feats[t_idx:t_idx + 1]
        record = {"target_index": t_idx, "target_label": t_label, "adversarial_label": adv}
        if gm:
            idx = poison.poison_indices
            with torch.no_grad():
                craft_pred = int(craft_head(test_feats[t_idx:t_idx + 1]).argmax(1))
            record["attack"] = {
                "alignment_before": poison.alignment_before, "alignment_after": poison.alignment_after,
                "max_linf_uint8": int(np.abs(poison.data.images[idx].astype(int) - finetune.images[idx]).max()),
                "crafting_head_target_pred": craft_pred, "craft_seconds": round(craft_seconds, 1)}
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
        aligned = (f" alignment {poison.alignment_before:.3f}->{poison.alignment_after:.3f} ({craft_seconds:.0f} s)"
                   if gm else "")
        log(f"trial {trial} ({time.perf_counter() - start:.0f} s): target {t_idx} ({t_label}->{adv}) none={record['none']['success']} "
            f"epic={record['epic']['success']} poisons dropped {record['epic']['poisons_dropped']}/{args.poisons}, "
            f"all dropped {record['epic']['dropped']}{aligned}")

    def summary(name: str) -> dict:
        s = {"attack_success_rate": float(np.mean([t[name]["success"] for t in trials])),
             "clean_accuracy": float(np.mean([t[name]["clean_accuracy"] for t in trials]))}
        if name == "epic":
            s["poison_recall"] = float(np.mean([t["epic"]["poisons_dropped"] for t in trials]) / args.poisons)
            s["mean_dropped"] = float(np.mean([t["epic"]["dropped"] for t in trials]))
        return s

    if gm:
        attack.update({f"mean_alignment_{k}": float(np.mean([t["attack"][f"alignment_{k}"] for t in trials]))
                       for k in ("before", "after")})
    result = {
        "bench": "other-defenses-epic",
        "command": command_line(),
        "machine": machine_info(),
        "protocol": __doc__.split("Protocol", 1)[1].strip(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "attack": attack,
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
