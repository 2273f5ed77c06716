"""The attack x defence table: clean test accuracy of a victim trained on each poisoned, defended set.

    python benchmarks/defense.py --protocol cpu-quick            # ~1 hour on 2 CPU cores
    python benchmarks/defense.py --protocol paper --device cuda  # ResNet-18, all 50k images (GPU)

Protocols (see PROTOCOLS): ``cpu-quick`` trains a small fast CNN on a 10k class-balanced subset of the
CIFAR-10 training split; ``paper`` is ECLIPSE's (ResNet-18, all 50k images, SGD lr 0.1 constant, momentum
0.9, batch 128, 80 epochs, crop + flip, last-epoch accuracy). The sparse clean set that trains the
denoiser is held out of both the poisoned training set and the test set: cpu-quick takes it from the
unused part of the training split, paper from the test split (scoring then uses the other 8,000 test
images).

Everything is cached under ``--workdir`` (poisoned sets, the denoiser, purified sets) and every finished
cell is appended to ``cells.jsonl`` there, so a crashed or interrupted run continues where it stopped.
The result goes to ``benchmarks/results/defense-<protocol>-<date>.json`` with a markdown table and a
bar plot next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, grouped_bar_plot, machine_info, write_json_atomic  # noqa: E402

from eclipse_loader.data.images import LabelledImages  # noqa: E402
from eclipse_loader.data.sparse import check_overlap, select_sparse_indices  # noqa: E402
from eclipse_loader.evaluation.defenses import (AUTO, AUTO_DESCRIPTION, CROP_FLIP, DEFENSES,  # noqa: E402
                                                Defense, PurifySettings, apply_offline, batch_transform,
                                                offline_steps)
from eclipse_loader.purify.purifier import PurifyConfig  # noqa: E402
from eclipse_loader.evaluation.victim import VICTIMS, VictimResult, train_classifier, train_victim  # noqa: E402
from eclipse_loader import poisons  # noqa: E402
from protocols import GPU_PROTOCOLS, PROTOCOLS, Protocol  # noqa: E402,F401  (re-exported: ablation.py imports them from here)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"
ATTACKS = ("ar", "lsp", "ops", "cuda", "classwise-noise", "em", "tap", "rem", "hypocritical")
#: every defence a cell can name; ``auto`` is resolved per cell by `Harness.resolve_auto`
REGISTRY = {**DEFENSES, AUTO: Defense(AUTO, (), CROP_FLIP, AUTO_DESCRIPTION)}
ADAPTIVE = ("em-adaptive-compensation", "em-adaptive-denoiser")
PURIFY_BATCH = 500


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_splits(protocol: Protocol, seed: int, splits: Optional[Path] = None, data: Path = DATA
                ) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """(training set to poison, sparse clean set, test set), pairwise disjoint.

    ``splits``: an npz written by `save_splits` (to carry a protocol's images to another machine)
    instead of drawing them from the full CIFAR-10 file ``data`` (train_x/train_y/test_x/test_y).
    """
    if splits is not None:
        with np.load(splits, allow_pickle=False) as z:
            parts = tuple(LabelledImages(z[f"{k}_x"], z[f"{k}_y"].astype(np.int64), 10) for k in ("train", "sparse", "test"))
        check_overlap(parts[1].images, parts[0].images, "refuse")
        check_overlap(parts[1].images, parts[2].images, "refuse")
        return parts  # type: ignore[return-value]
    if not data.is_file():
        raise SystemExit(f"CIFAR-10 not found at {data} (see ../shared/data/README)")
    raw = np.load(data, allow_pickle=False)
    train = LabelledImages(raw["train_x"], raw["train_y"].astype(np.int64), 10)
    test = LabelledImages(raw["test_x"], raw["test_y"].astype(np.int64), 10)
    if protocol.train_size is not None:
        keep = select_sparse_indices(train, count=protocol.train_size, seed=seed)
        rest = np.setdiff1d(np.arange(len(train)), keep)
        train, pool = train.subset(keep), train.subset(rest)
    else:
        pool = None
    if protocol.sparse_from == "train":
        assert pool is not None, "sparse_from='train' needs a training subset"
        sparse = pool.subset(select_sparse_indices(pool, count=protocol.sparse_size, seed=seed + 1))
    else:
        chosen = select_sparse_indices(test, count=protocol.sparse_size, seed=seed + 1)
        sparse = test.subset(chosen)
        test = test.subset(np.setdiff1d(np.arange(len(test)), chosen))
    if protocol.test_size is not None:
        test = test.subset(select_sparse_indices(test, count=protocol.test_size, seed=seed + 2))
    check_overlap(sparse.images, train.images, "refuse")
    check_overlap(sparse.images, test.images, "refuse")
    return train, sparse, test


def save_splits(path: Path, protocol: Protocol, seed: int, test_size: Optional[int] = None) -> None:
    """Write a protocol's (train, sparse, test) images to one compressed npz for `load_splits`."""
    train, sparse, test = load_splits(protocol, seed)
    if test_size is not None and test_size < len(test):
        test = test.subset(select_sparse_indices(test, count=test_size, seed=seed + 3))
    arrays = {}
    for key, part in (("train", train), ("sparse", sparse), ("test", test)):
        arrays[f"{key}_x"], arrays[f"{key}_y"] = part.images, part.labels
    np.savez_compressed(path, **arrays)


def save_npz(path: Path, data: LabelledImages) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=data.images, labels=data.labels)
    tmp.replace(path)


def cached(path: Path, make: Callable[[], LabelledImages],
           on_made: Optional[Callable[[float], None]] = None) -> LabelledImages:
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return LabelledImages(z["images"], z["labels"].astype(np.int64), 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = make()
    save_npz(path, data)
    seconds = time.perf_counter() - start
    log(f"  wrote {path.parent.name}/{path.name} in {seconds:.0f} s")
    if on_made is not None:
        on_made(seconds)
    return data


class Harness:
    purify_batch = PURIFY_BATCH
    purify_bf16 = False

    def __init__(self, protocol: Protocol, workdir: Path, device: str, seed: int, splits: Optional[Path] = None,
                 victim_seed: Optional[int] = None, data: Path = DATA) -> None:
        self.protocol, self.workdir, self.device, self.seed = protocol, workdir, device, seed
        # the victims' own seed (initialisation, batch order, augmentation draws); data, poisons and
        # purification stay on ``seed``, so another victim seed measures training noise alone
        self.victim_seed = seed if victim_seed is None else int(victim_seed)
        self.train, self.sparse, self.test = load_splits(protocol, seed, splits, data)
        workdir.mkdir(parents=True, exist_ok=True)
        self.cells_path = workdir / ("cells.jsonl" if self.victim_seed == seed
                                     else f"cells-victim-seed{self.victim_seed}.jsonl")
        self.cells = self._load_cells()
        self.timings_path = workdir / "timings.json"
        self.timings: dict[str, float] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self.auto_path = workdir / "auto" / "choices.json"
        self.auto_choices: dict[str, Any] = json.loads(self.auto_path.read_text()) if self.auto_path.is_file() else {}
        self._auto_purify: Optional[Callable] = None

    # -- caches -------------------------------------------------------------------------------
    def _load_cells(self) -> dict[tuple[str, str], dict[str, Any]]:
        cells = {}
        if self.cells_path.is_file():
            for line in self.cells_path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    cells[(record["attack"], record["defense"])] = record
        return cells

    def _victim_factory(self, name: str) -> Callable[[int], torch.nn.Module]:
        return VICTIMS[name]

    def fit_model(self, data: LabelledImages, augment: Any, seed: int) -> torch.nn.Module:
        """The crafting victim trained on ``data`` (TAP's clean model); a subclass may train another way."""
        return train_classifier(data, augment, recipe=self.protocol.recipe, seed=seed,
                                model_factory=self._victim_factory(self.protocol.crafting_victim), device=self.device)

    def score_victim(self, defended: LabelledImages, defense: Defense) -> VictimResult:
        """The protocol's victim trained on ``defended`` with ``defense``'s augmentation, scored on the test set."""
        return train_victim(defended, self.test, defense.augment, recipe=self.protocol.recipe,
                            seed=self.victim_seed, model_factory=self._victim_factory(self.protocol.victim),
                            device=self.device, batch_transform=batch_transform(defense, self.victim_seed))

    def clean_model(self) -> torch.nn.Module:
        """The crafting model TAP attacks: the crafting victim trained on the clean training set."""
        path = self.workdir / "tap_crafting_model.pt"
        model = self._victim_factory(self.protocol.crafting_victim)(10)
        if path.is_file():
            model.load_state_dict(torch.load(path, weights_only=True))
            return model
        model = self.fit_model(self.train, DEFENSES["none"].augment, self.seed)
        torch.save(model.state_dict(), path)
        return model

    def denoiser(self, t_max: Optional[int] = None) -> Path:
        """The protocol's denoiser, or (``t_max`` other than the protocol's) one trained up to ``t_max``."""
        from eclipse_loader.denoiser.training import train_denoiser

        t_max = self.denoiser_t_max if t_max is None else t_max
        out = self.workdir / ("denoiser" if t_max == self.denoiser_t_max else f"denoiser-t{t_max}")
        if (out / "denoiser.json").is_file():
            return out
        p = self.protocol
        log(f"training the {p.denoiser_preset} denoiser on the {len(self.sparse)}-image sparse set "
            f"({p.denoiser_steps} steps, t <= {t_max})")
        start = time.perf_counter()
        train_denoiser(self.sparse, p.denoiser_preset, out, max_steps=p.denoiser_steps, batch_size=p.denoiser_batch,
                       lr=p.denoiser_lr, t_max=t_max, seed=self.seed, progress=False,
                       accelerator="gpu" if self.device.startswith("cuda") else "cpu")
        self.record_timing("denoiser_training_s" if out.name == "denoiser" else f"{out.name}_training_s",
                           time.perf_counter() - start)
        return out

    @property
    def denoiser_t_max(self) -> int:
        p = self.protocol
        return p.denoiser_t_max if p.denoiser_t_max is not None else p.t_star - 1

    def record_timing(self, name: str, seconds: float) -> None:
        self.timings[name] = round(seconds, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=1))

    def poisoned(self, attack: str) -> LabelledImages:
        p = self.protocol
        factory = self._victim_factory(p.crafting_victim)

        def make() -> LabelledImages:
            log(f"crafting {attack}")
            if attack == "none":
                return self.train
            if attack == "ar":
                return poisons.autoregressive(self.train, seed=self.seed)
            if attack == "lsp":
                return poisons.lsp(self.train, seed=self.seed)
            if attack == "ops":
                return poisons.one_pixel_shortcut(self.train, seed=self.seed)
            if attack == "cuda":
                return poisons.convolution_based(self.train, seed=self.seed)
            if attack == "classwise-noise":
                return poisons.classwise_noise(self.train, seed=self.seed)
            if attack == "em":
                return poisons.error_minimizing(self.train, factory, seed=self.seed, device=self.device, log=log, **p.em)
            if attack == "tap":
                return poisons.targeted_adversarial(self.train, self.clean_model(), seed=self.seed, device=self.device,
                                                    log=log, **p.tap)
            if attack == "rem":
                return poisons.robust_error_minimizing(self.train, factory, seed=self.seed, device=self.device, log=log,
                                                       **{**p.em, **p.rem})
            if attack == "hypocritical":
                settings = dict(p.hypocritical)
                model = poisons.hypocritical_crafting_model(self.train, factory, epochs=settings.pop("crafting_epochs"),
                                                            seed=self.seed, device=self.device)
                return poisons.hypocritical(self.train, model, seed=self.seed, device=self.device, log=log, **settings)
            if attack == "em-adaptive-compensation":
                return poisons.error_minimizing(self.train, factory, transform=poisons.compensation_eot(),
                                                seed=self.seed, device=self.device, log=log, **p.em)
            if attack == "em-adaptive-denoiser":
                from eclipse_loader.denoiser.io import load_denoiser

                unet, scheduler = load_denoiser(self.denoiser())
                unet = unet.to(self.device)
                view = poisons.compensation_eot(then=poisons.denoiser_eot(unet, scheduler.alphas_cumprod, p.t_star))
                return poisons.error_minimizing(self.train, factory, transform=view, seed=self.seed,
                                                device=self.device, log=log, **p.em)
            raise KeyError(f"unknown attack {attack!r}")

        if attack == "none":
            return self.train
        return cached(self.workdir / "poisons" / f"{attack}.npz", make, lambda s: self.record_timing(f"craft_{attack}_s", s))

    def purify(self, attack: str, data: LabelledImages, settings: PurifySettings = PurifySettings(),
               after: tuple[str, ...] = ()) -> LabelledImages:
        """``data`` (the ``attack`` set after the offline steps ``after``) purified with ``settings``, cached."""
        from eclipse_loader.denoiser.io import load_denoiser
        from eclipse_loader.purify.purifier import Purifier

        def make() -> LabelledImages:
            unet, scheduler = load_denoiser(self.denoiser(settings.denoiser_t_max))
            draws = []
            for draw in range(settings.draws):
                purifier = Purifier(unet, scheduler, self.purify_config(settings, draw), device=self.device)
                out = np.empty_like(data.images)
                for start in range(0, len(data), self.purify_batch):
                    stop = min(start + self.purify_batch, len(data))
                    out[start:stop] = purifier.purify(data.images[start:stop], range(start, stop))
                draws.append(out)
            images = draws[0] if len(draws) == 1 else np.rint(np.mean(draws, axis=0)).astype(np.uint8)
            return LabelledImages(images, data.labels, data.num_classes)

        name = self.purified_name(attack, settings, after)
        return cached(self.workdir / "purified" / f"{name}.npz", make,
                      lambda s: self.record_timing(f"purify_{name}_s", s))

    def purified_name(self, attack: str, settings: PurifySettings = PurifySettings(), after: tuple[str, ...] = ()) -> str:
        """Cache name of ``attack``'s set purified with ``settings`` after the offline steps ``after``."""
        config = self.purify_config(settings)
        t_max = settings.denoiser_t_max or self.denoiser_t_max
        if config == self.purify_config() and settings.draws == 1 and t_max == self.denoiser_t_max and not after:
            return attack
        resolved = f"t{config.t_star}-s{config.steps or config.t_star}"
        resolved += (f"-d{settings.draws}" if settings.draws > 1 else "") + (f"-dn{t_max}" if t_max != self.denoiser_t_max else "")
        return f"{attack}--{'+'.join(after) or 'raw'}--{resolved}"

    def purify_timing_keys(self, defense: Defense) -> list[str]:
        """Timing entries of ``defense``'s purification passes (one per attack done so far)."""
        after = defense.offline[:defense.offline.index("purify")]
        names = {self.purified_name(a, defense.purify, after) for a in ("none", *ATTACKS)}
        return [f"purify_{n}_s" for n in names if f"purify_{n}_s" in self.timings]

    def purify_config(self, settings: PurifySettings = PurifySettings(), draw: int = 0) -> PurifyConfig:
        """The PurifyConfig of ``settings`` under this protocol; draw ``k`` uses seed ``seed + k``."""
        t_star = settings.t_star if settings.t_star is not None else self.protocol.t_star
        steps = settings.steps if settings.steps is not None else self.protocol.purify_steps
        # outlier repair is its own offline step ("repair-outliers"), never part of the purifier here
        return PurifyConfig(t_star=t_star, steps=None if steps is None else min(steps, t_star), seed=self.seed + draw,
                            bf16=self.purify_bf16, repair_threshold=None)

    def purification_gflop_per_image(self, settings: PurifySettings = PurifySettings()) -> Optional[float]:
        """FLOPs of purifying one 32x32 image with this protocol's denoiser and ``settings`` (FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        from eclipse_loader.denoiser.io import load_denoiser
        from eclipse_loader.purify.purifier import Purifier

        t_max = self.denoiser_t_max if settings.denoiser_t_max is None else settings.denoiser_t_max
        path = self.workdir / ("denoiser" if t_max == self.denoiser_t_max else f"denoiser-t{t_max}")
        if not (path / "denoiser.json").is_file():
            return None
        unet, scheduler = load_denoiser(path)
        purifier = Purifier(unet, scheduler, self.purify_config(settings), device="cpu")
        x = torch.zeros(2, 3, 32, 32)
        with FlopCounterMode(display=False) as counter:
            purifier.purify_tensor(x, [0, 1])
        return counter.get_total_flops() / 2 / 1e9 * settings.draws

    def offline_functions(self, attack: str, defense: Defense, after: tuple[str, ...]) -> dict[str, Callable]:
        """The offline steps of ``defense``'s cell on ``attack`` (purification through the cache; ``auto``
        purifies with its own denoiser, cached apart)."""
        if defense.name == AUTO and self._auto_purify is not None:
            return offline_steps(purify=lambda d: self._purify_auto(attack, d, defense.purify.t_star, after))
        return offline_steps(purify=lambda d: self.purify(attack, d, defense.purify, after))

    def _purify_auto(self, attack: str, data: LabelledImages, t_star: int, after: tuple[str, ...]) -> LabelledImages:
        purify = self._auto_purify
        assert purify is not None
        name = f"{attack}--{'+'.join(after) or 'raw'}--auto-t{t_star}"
        return cached(self.workdir / "purified" / f"{name}.npz",
                      lambda: LabelledImages(purify(data.images, t_star), data.labels, data.num_classes),
                      lambda s: self.record_timing(f"purify_{name}_s", s))

    # -- auto ---------------------------------------------------------------------------------
    def auto_denoiser(self, t_max: int) -> tuple[Path, LabelledImages]:
        """``auto``'s own denoiser (trained on the half of the sparse set its selection does not validate on)
        and that half."""
        from eclipse_loader.denoiser.training import train_denoiser
        from eclipse_loader.evaluation.defenses import split_sparse

        _, part = split_sparse(self.sparse, seed=self.seed)
        out, p = self.workdir / "denoiser-auto", self.protocol
        if not (out / "denoiser.json").is_file():
            log(f"training auto's denoiser on {len(part)} sparse images ({p.denoiser_steps} steps, t <= {t_max})")
            start = time.perf_counter()
            train_denoiser(part, p.denoiser_preset, out, max_steps=p.denoiser_steps, batch_size=p.denoiser_batch,
                           lr=p.denoiser_lr, t_max=t_max, seed=self.seed, progress=False,
                           accelerator="gpu" if str(self.device).startswith("cuda") else "cpu")
            self.record_timing("denoiser-auto_training_s", time.perf_counter() - start)
        return out, part

    def resolve_auto(self, attack: str) -> tuple[Defense, Callable]:
        """``auto`` for ``attack``: selection on its poisoned set with the sparse set as the trusted set (half
        trains the selection's own denoiser, half validates; the test set is never seen). Returns the chosen
        defence and the purifier it uses; the choice and its report are kept under ``workdir/auto/``."""
        from eclipse_loader.evaluation.defenses import resolve_auto
        from eclipse_loader.select.candidates import DEFAULT_T_STARS
        from eclipse_loader.select.offline import DenoiserPurify
        from eclipse_loader.select.proxy import ProxySettings
        from eclipse_loader.select.report import write_report

        settings, p = dict(self.protocol.auto), self.protocol
        t_stars = tuple(settings.pop("t_stars", DEFAULT_T_STARS))
        budget, min_per_class = settings.pop("budget_minutes", None), settings.pop("min_per_class", None)
        out, part = self.auto_denoiser(max(t_stars) - 1)
        purify = DenoiserPurify(out, steps=p.purify_steps, seed=self.seed, device=self.device,
                                batch_size=self.purify_batch)
        start = time.perf_counter()
        log(f"auto on {attack}: selecting")
        defense, selection = resolve_auto(self.poisoned(attack), self.sparse, purify, denoiser_images=part.images,
                                          out_dir=self.workdir / "auto" / attack, seed=self.seed,
                                          proxy=ProxySettings(**settings), budget_minutes=budget, t_stars=t_stars,
                                          steps=p.purify_steps, min_per_class=min_per_class,
                                          log=lambda m: log(f"  [{attack}] {m}"))
        write_report(selection, self.workdir / "auto" / attack)
        self.auto_choices[attack] = {
            "chosen": selection.chosen.name, "offline": list(defense.offline), "reason": selection.reason,
            "selection_seconds": round(time.perf_counter() - start, 1), "proxy": selection.plan.proxy.to_dict(),
            "seed_noise": selection.seed_noise,
            "validation_accuracy": {r.name: r.accuracy for r in selection.results if r.accuracy is not None}}
        self.auto_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.auto_path, self.auto_choices)
        log(f"auto on {attack}: {selection.chosen.name} ({selection.reason})")
        return defense, purify

    # -- cells --------------------------------------------------------------------------------
    def run_cell(self, attack: str, defense: Defense) -> dict[str, Any]:
        key = (attack, defense.name)
        if key in self.cells:
            return self.cells[key]
        if defense.name == AUTO:
            defense, self._auto_purify = self.resolve_auto(attack)
        data = self.poisoned(attack)
        start = time.perf_counter()
        after = defense.offline[:defense.offline.index("purify")] if defense.purifies else ()
        steps = self.offline_functions(attack, defense, after)
        defended = apply_offline(defense, data, steps)
        offline_s = time.perf_counter() - start
        result = self.score_victim(defended, defense)
        record = {"attack": attack, "defense": defense.name, "accuracy": result.test_accuracy,
                  "train_seconds": round(result.train_seconds, 1), "offline_seconds": round(offline_s, 1),
                  "seed": self.seed, "victim_seed": self.victim_seed, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "load_avg_1min": round(os.getloadavg()[0], 2)}
        with open(self.cells_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.cells[key] = record
        log(f"{attack:>26} x {defense.name:<18} {100 * result.test_accuracy:5.1f}%  "
            f"(train {result.train_seconds:.0f} s, offline {offline_s:.0f} s)")
        return record


def summarise(harness: Harness, attacks: list[str], adaptive: list[str], defenses: list[str], args: argparse.Namespace,
              started: float, registry: Optional[dict[str, Defense]] = None) -> dict[str, Any]:
    """The result JSON of the finished cells; ``registry``: the defences by name (default `REGISTRY`)."""
    cells = harness.cells
    registry = REGISTRY if registry is None else registry

    def row(attack: str) -> dict[str, float]:
        return {d: cells[(attack, d)]["accuracy"] for d in defenses if (attack, d) in cells}

    table = {a: row(a) for a in ["none", *attacks]}
    clean = table["none"].get("none")
    means = {d: float(np.mean([table[a][d] for a in attacks])) for d in defenses if all(d in table[a] for a in attacks)}
    result: dict[str, Any] = {
        "protocol": harness.protocol.name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "command": args.command_line,
        "clean_accuracy": clean,
        "table": table,
        "mean_accuracy_by_defense": means,
        "relative_to_clean": ({d: m / clean for d, m in means.items()} if clean else None),
        "adaptive": {a: row(a) for a in adaptive},
        "attacks_in_means": attacks,
        "defenses": {d: registry[d].description for d in defenses},
        "victim_seed": harness.victim_seed,
        "settings": {**asdict(harness.protocol), "seed": harness.seed, "train_images": len(harness.train),
                     "sparse_images": len(harness.sparse), "test_images": len(harness.test)},
        "purification_gflop_per_image": harness.purification_gflop_per_image(),
        "purification_gflop_per_image_by_defense": {
            d: harness.purification_gflop_per_image(registry[d].purify) for d in defenses if registry[d].purifies},
        "worst_ratio_to_clean_by_defense": ({d: min(table[a][d] for a in attacks) / clean for d in means}
                                            if clean else None),
        "clean_cost_points_by_defense": ({d: round(100 * (clean - table["none"][d]), 2) for d in table["none"]}
                                         if clean else None),
        "timings": harness.timings,
        "cell_seconds": {f"{c['attack']}|{c['defense']}": c["train_seconds"] + c["offline_seconds"]
                         for c in cells.values()},
        "wall_seconds_this_invocation": round(time.perf_counter() - started),
        "complete": all(len(table[a]) == len(defenses) for a in table),
    }
    if AUTO in defenses:
        result["auto_choices"] = harness.auto_choices
    return result


def write_outputs(result: dict[str, Any], out_dir: Path, suffix: str = "", stem: Optional[str] = None) -> Path:
    """Write ``result`` as defense-<protocol>-<date><suffix>.{json,md,png} (a victim seed adds its own suffix),
    or as ``stem``.{json,md,png} when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix += "" if result.get("victim_seed", result["settings"]["seed"]) == result["settings"]["seed"] \
        else f"-victim-seed{result['victim_seed']}"
    stem = out_dir / (stem or f"defense-{result['protocol']}-{result['date']}{suffix}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown_table(result))
    try:
        bar_plot(result, stem.with_suffix(".png"))
    except ImportError:
        log("matplotlib missing: no bar plot (pip install -e .[bench])")
    return stem.with_suffix(".json")


def markdown_table(result: dict[str, Any]) -> str:
    defenses = list(result["defenses"])
    lines = [f"Clean test accuracy (%), protocol `{result['protocol']}`, {result['date']}, "
             f"{result['machine']['cpu']} ({result['machine']['cores']} cores"
             f"{', ' + result['machine']['cuda'] if result['machine']['cuda'] else ''}).",
             f"Command: `{result['command']}`", "",
             *([f"**{result['label']}**", ""] if result.get("label") else []),
             "| attack | " + " | ".join(defenses) + " |", "|---|" + "---:|" * len(defenses)]

    def fmt(row: dict[str, float]) -> str:
        return " | ".join(f"{100 * row[d]:.1f}" if d in row else "–" for d in defenses)

    for attack, row in result["table"].items():
        name = "none (clean data)" if attack == "none" else attack
        lines.append(f"| {name} | {fmt(row)} |")
    means = result["mean_accuracy_by_defense"]
    lines.append(f"| **mean over attacks** | {fmt(means)} |")
    for attack, row in result["adaptive"].items():
        lines.append(f"| {attack} (adaptive, not in mean) | {fmt(row)} |")
    return "\n".join(lines) + "\n"


def bar_plot(result: dict[str, Any], path: Path) -> None:
    clean = result["clean_accuracy"]
    grouped_bar_plot({**result["table"], "MEAN": result["mean_accuracy_by_defense"]}, list(result["defenses"]), path,
                     title=f"attack x defence, protocol {result['protocol']} ({result['date']})",
                     reference=(clean, "clean, no defence") if clean else None, rotation=20)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu-quick")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma list from " + ",".join(ATTACKS))
    parser.add_argument("--adaptive", default="em-adaptive-compensation",
                        help="adaptive attacks (rows outside the means), comma list from " + ",".join(ADAPTIVE)
                        + "; '' for none")
    parser.add_argument("--defenses", default=",".join(REGISTRY), help="comma list from " + ",".join(REGISTRY)
                        + " (auto: chosen per cell on the sparse set, eclipse_loader.select)")
    parser.add_argument("--adaptive-defenses", default="none,compensation,eclipse-paper,eclipse",
                        help="defences the adaptive attacks are run against")
    parser.add_argument("--workdir", type=Path, default=None, help="cache dir (default bench-work/defense-<protocol>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victim-seed", type=int, default=None,
                        help="seed of the victims alone (default: --seed); data, poisons and purification keep "
                             "--seed, so the cached poisons and purified sets are reused; own cells file and outputs")
    parser.add_argument("--report-only", action="store_true",
                        help="write the JSON/markdown/plot from the cells already in --workdir; run nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="CIFAR-10-layout npz (train_x/train_y/test_x/test_y; default ../shared/data/cifar10.npz)")
    args = parser.parse_args(argv)
    # the command that reproduces the table (a --report-only rerun only re-renders it)
    args.command_line = command_line().replace(" --report-only", "")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol")
    if pre.parse_known_args(argv)[0].protocol in GPU_PROTOCOLS:
        import gpu_full  # the airbench victim's protocols have their own runner (and options)

        return gpu_full.main(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = PROTOCOLS[args.protocol]
    attacks = [a for a in args.attacks.split(",") if a]
    adaptive = [a for a in args.adaptive.split(",") if a]
    defenses = [d for d in args.defenses.split(",") if d]
    for name, known in (("attack", ATTACKS), ("adaptive attack", ADAPTIVE), ("defense", tuple(REGISTRY))):
        chosen = {"attack": attacks, "adaptive attack": adaptive, "defense": defenses}[name]
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise SystemExit(f"unknown {name}(s) {unknown}; choose from {list(known)}")
    started = time.perf_counter()
    harness = Harness(protocol, args.workdir or Path("bench-work") / f"defense-{protocol.name}", args.device, args.seed,
                      victim_seed=args.victim_seed, data=args.data)
    log(f"protocol {protocol.name}: {len(harness.train)} training, {len(harness.sparse)} sparse, "
        f"{len(harness.test)} test images; {len(harness.cells)} cells already done")
    adaptive_defenses = [d for d in args.adaptive_defenses.split(",") if d in defenses]
    if args.report_only:
        path = write_outputs(summarise(harness, attacks, adaptive, defenses, args, started), args.out)
        log(f"wrote {path} from {len(harness.cells)} finished cells")
        return 0
    for attack in ["none", *attacks, *adaptive]:
        for name in adaptive_defenses if attack in adaptive else defenses:
            harness.run_cell(attack, REGISTRY[name])
        path = write_outputs(summarise(harness, attacks, adaptive, defenses, args, started), args.out)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
