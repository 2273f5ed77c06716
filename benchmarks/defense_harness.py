"""`Harness`: the cells of the attack x defence table (poison, defend, train the victim, score), cached under
a work directory so an interrupted run continues where it stopped."""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from _common import log, write_json_atomic
from defense_splits import DATA, cached, load_splits
from protocols import Protocol

from eclipse_loader import poisons
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.defense_registry import (AUTO, AUTO_BEST, AUTO_BEST_DESCRIPTION, AUTO_DESCRIPTION,
                                                        CANDIDATE_PREFIX, CROP_FLIP, DEFENSES, Defense, PurifySettings,
                                                        apply_offline, batch_transform, offline_steps)
from eclipse_loader.evaluation.victim import VICTIMS, VictimResult, train_classifier, train_victim
from eclipse_loader.purify.purifier import PurifyConfig

ATTACKS = ("ar", "lsp", "ops", "cuda", "classwise-noise", "em", "tap", "rem", "hypocritical")
AUTO_NAMES = (AUTO, AUTO_BEST)


class _Registry(dict):
    """Every defence a cell can name: the fixed ones; ``auto`` and ``auto-best``, resolved per cell by
    `Harness.resolve_auto`; and ``candidate:NAME``, one selection candidate (purified with auto's denoiser)."""

    def __missing__(self, name: str) -> Defense:
        if isinstance(name, str) and name.startswith(CANDIDATE_PREFIX):
            from eclipse_loader.evaluation.defense_registry import candidate_defense, named_candidate

            candidate = named_candidate(name[len(CANDIDATE_PREFIX):])
            return replace(candidate_defense(candidate, name=name),
                           description=f"selection candidate {candidate.name} as a fixed defence (auto's denoiser)")
        raise KeyError(name)

    def knows(self, name: str) -> bool:
        try:
            self[name]
        except KeyError:
            return False
        return True


REGISTRY = _Registry({**DEFENSES, AUTO: Defense(AUTO, (), CROP_FLIP, AUTO_DESCRIPTION),
                      AUTO_BEST: Defense(AUTO_BEST, (), CROP_FLIP, AUTO_BEST_DESCRIPTION)})
# em-adaptive-auto: EM crafted through the candidate `auto` chose on the EM row (the attacker knows the list
# and the pick); `auto` then selects again on the new poison
ADAPTIVE = ("em-adaptive-compensation", "em-adaptive-denoiser", "em-adaptive-auto")
PURIFY_BATCH = 500


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
        own = "" if protocol.cache_of is None else f"-{protocol.name}"  # a victim-only variant's own cells
        self.cells_path = workdir / (f"cells{own}.jsonl" if self.victim_seed == seed
                                     else f"cells{own}-victim-seed{self.victim_seed}.jsonl")
        self.cells = self._load_cells()
        self.timings_path = workdir / "timings.json"
        self.timings: dict[str, float] = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self.auto_path = workdir / "auto" / "choices.json"
        self.auto_best_path = workdir / "auto" / "choices-best.json"
        self.auto_choices: dict[str, Any] = json.loads(self.auto_path.read_text()) if self.auto_path.is_file() else {}
        self.auto_best_choices: dict[str, Any] = (json.loads(self.auto_best_path.read_text())
                                                  if self.auto_best_path.is_file() else {})
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
        return train_classifier(data, augment, training=self.protocol.training, seed=seed,
                                model_factory=self._victim_factory(self.protocol.crafting_victim), device=self.device)

    def score_victim(self, defended: LabelledImages, defense: Defense) -> VictimResult:
        """The protocol's victim trained on ``defended`` with ``defense``'s augmentation, scored on the test set."""
        return train_victim(defended, self.test, defense.augment, training=self.protocol.training,
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
        from eclipse_loader.adapters.lightning_denoiser import train_denoiser

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
            if attack == "em-adaptive-auto":
                return poisons.error_minimizing(self.train, factory, transform=self.auto_view("em"), seed=self.seed,
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
        selected = defense.name in AUTO_NAMES or defense.name.startswith(CANDIDATE_PREFIX)
        if selected and self._auto_purify is not None:
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
        from eclipse_loader.adapters.lightning_denoiser import train_denoiser
        from eclipse_loader.evaluation.defense_registry import split_sparse

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

    def auto_purify(self) -> tuple[Callable, LabelledImages]:
        """The purifier of ``auto``'s candidates (its own denoiser, up to the protocol's largest auto t*) and the
        sparse images that denoiser trained on."""
        from eclipse_loader.select.candidates import DEFAULT_T_STARS
        from eclipse_loader.select.offline import DenoiserPurify

        out, part = self.auto_denoiser(max(self.protocol.auto.get("t_stars", DEFAULT_T_STARS)) - 1)
        purify = DenoiserPurify(out, steps=self.protocol.purify_steps, seed=self.seed, device=self.device,
                                batch_size=self.purify_batch)
        return purify, part

    def resolve_auto(self, attack: str, name: str = AUTO) -> tuple[Defense, Callable]:
        """``auto`` for ``attack``: selection on its poisoned set with the sparse set as the trusted set (half
        trains the selection's own denoiser, half validates; the test set is never seen). Returns the chosen
        defence and the purifier it uses; the choice and its report are kept under ``workdir/auto/``."""
        from eclipse_loader.evaluation.defense_registry import resolve_auto
        from eclipse_loader.select.candidates import DEFAULT_T_STARS
        from eclipse_loader.select.proxy import ProxySettings
        from eclipse_loader.select.report import write_report

        settings, p = dict(self.protocol.auto), self.protocol
        t_stars = tuple(settings.pop("t_stars", DEFAULT_T_STARS))
        budget, min_per_class = settings.pop("budget_minutes", None), settings.pop("min_per_class", None)
        purify, part = self.auto_purify()
        start = time.perf_counter()
        log(f"{name} on {attack}: selecting")
        best = name == AUTO_BEST  # same proxy runs (the cache in auto/ATTACK), another choice rule
        defense, selection = resolve_auto(self.poisoned(attack), self.sparse, purify, denoiser_images=part.images,
                                          out_dir=self.workdir / "auto" / attack, seed=self.seed,
                                          proxy=ProxySettings(**settings), budget_minutes=budget, t_stars=t_stars,
                                          steps=p.purify_steps, min_per_class=min_per_class,
                                          log=lambda m: log(f"  [{attack}] {m}"),
                                          tie_break="best" if best else "lighter", name=name)
        write_report(selection, self.workdir / ("auto-best" if best else "auto") / attack)
        choices, path = (self.auto_best_choices, self.auto_best_path) if best else (self.auto_choices, self.auto_path)
        choices[attack] = {
            "chosen": selection.chosen.name, "offline": list(defense.offline), "reason": selection.reason,
            "selection_seconds": round(time.perf_counter() - start, 1), "proxy": selection.plan.proxy.to_dict(),
            "seed_noise": selection.seed_noise,
            "validation_accuracy": {r.name: r.accuracy for r in selection.results if r.accuracy is not None}}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, choices)
        log(f"{name} on {attack}: {selection.chosen.name} ({selection.reason})")
        return defense, purify

    def auto_view(self, attack: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The adaptive attacker's differentiable view of the candidate ``auto`` chose on ``attack``
        (`poisons.candidate_view`; the selection runs first if it has not)."""
        from eclipse_loader.denoiser.io import load_denoiser
        from eclipse_loader.evaluation.defense_registry import named_candidate
        from eclipse_loader.select.candidates import DEFAULT_T_STARS

        if attack not in self.auto_choices:
            self.resolve_auto(attack)
        t_stars = tuple(self.protocol.auto.get("t_stars", DEFAULT_T_STARS))
        candidate = named_candidate(self.auto_choices[attack]["chosen"], t_stars)
        log(f"adaptive EM crafts through {candidate.name}, auto's choice on {attack}")
        if candidate.t_star is None:
            return poisons.candidate_view(candidate)
        unet, scheduler = load_denoiser(self.auto_denoiser(max(t_stars) - 1)[0])
        return poisons.candidate_view(candidate, unet.to(self.device), scheduler.alphas_cumprod)

    # -- cells --------------------------------------------------------------------------------
    def run_cell(self, attack: str, defense: Defense) -> dict[str, Any]:
        key = (attack, defense.name)
        if key in self.cells:
            return self.cells[key]
        if defense.name in AUTO_NAMES:
            defense, self._auto_purify = self.resolve_auto(attack, defense.name)
        elif defense.name.startswith(CANDIDATE_PREFIX):
            self._auto_purify = self.auto_purify()[0] if defense.purifies else None
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
