"""`select_defense`: build every candidate on a class-balanced subset of the training data, train the
proxy on it, score it on held-out trusted images, and choose (rule in `eclipse_loader.select.stats`).

Resumable: each finished candidate is appended to ``OUT_DIR/selection-cache.json`` under a key made
of the inputs' fingerprints, the seed, the purifier's ``cache_id`` and the proxy settings; a rerun
with the same inputs recomputes nothing that is cached. Deterministic given ``seed`` (one thread).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..data.images import LabelledImages
from ..data.sparse import select_sparse_indices
from .budget import Plan, plan
from .candidates import Candidate, default_candidates
from .inputs import MAX_VALIDATION, MIN_PER_CLASS, check_inputs, split_trusted
from .offline import PurifyFn, apply_offline, unservable_reason
from .proxy import ProxySettings, correct_mask, train_proxy
from .stats import TieBreak, choose, wilson_interval

CACHE_NAME = "selection-cache.json"
Progress = Callable[[int, int, str], None]


@dataclass
class CandidateResult:
    """One candidate's outcome: ``status`` "done" or "skipped" (with ``reason``); accuracies in [0, 1]."""

    name: str
    weight: float
    candidate: dict[str, Any]
    status: str = "done"
    reason: str = ""
    accuracy: Optional[float] = None
    interval: Optional[tuple[float, float]] = None
    proxy_train_accuracy: Optional[float] = None
    offline_seconds: float = 0.0
    train_seconds: float = 0.0
    correct: Optional[np.ndarray] = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "correct"}
        if self.correct is not None:
            out["correct_bits"] = np.packbits(self.correct).tobytes().hex()
            out["validation_images"] = len(self.correct)
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> CandidateResult:
        record = dict(record)
        bits, n = record.pop("correct_bits", None), record.pop("validation_images", None)
        if record.get("interval") is not None:
            record["interval"] = tuple(record["interval"])
        result = cls(**record)
        if bits is not None:
            result.correct = np.unpackbits(np.frombuffer(bytes.fromhex(bits), np.uint8))[:n].astype(bool)
        return result


@dataclass
class Selection:
    """What `select_defense` decided and measured (see `eclipse_loader.select.report` for the files)."""

    chosen: Candidate
    reason: str
    results: list[CandidateResult]
    plan: Plan
    seed: int
    sizes: dict[str, int]
    trusted_mix: Optional[CandidateResult] = None
    mix_recommended: bool = False
    seconds: float = 0.0
    seed_noise: float = 0.0
    noise_accuracies: tuple[float, ...] = ()

    def result(self, name: str) -> CandidateResult:
        return next(r for r in self.results if r.name == name)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class _Cache:
    def __init__(self, out_dir: Optional[Path], context: str) -> None:
        self.path = None if out_dir is None else Path(out_dir) / CACHE_NAME
        self.context = context
        data = json.loads(self.path.read_text()) if self.path is not None and self.path.is_file() else {}
        if data.get("context") != context:
            data = {"context": context, "plan": None, "results": {}}
        self.data = data

    def get(self, key: str) -> Optional[CandidateResult]:
        record = self.data["results"].get(key)
        return None if record is None else CandidateResult.from_json(record)

    def put(self, key: str, result: CandidateResult) -> None:
        self.data["results"][key] = result.to_json()
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def select_defense(train: LabelledImages, trusted: LabelledImages, purify_fn: Optional[PurifyFn] = None,
                   out_dir: Union[str, os.PathLike, None] = None, *, candidates: Optional[Sequence[Candidate]] = None,
                   proxy: ProxySettings = ProxySettings(), seed: int = 0, budget_minutes: Optional[float] = None,
                   denoiser_images: Optional[np.ndarray] = None, min_per_class: int = MIN_PER_CLASS,
                   max_validation: int = MAX_VALIDATION, min_gain: float = 0.0, tie_points: float = 0.01,
                   tie_break: TieBreak = "lighter", try_trusted_mix: bool = True, noise_seeds: int = 2, progress: Optional[Progress] = None,
                   log: Optional[Callable[[str], None]] = None) -> Selection:
    """Choose a defence for ``train`` by measuring each candidate on held-out ``trusted`` images.

    Args:
        train: the (possibly poisoned) training data.
        trusted: clean images of the same classes and size, disjoint from ``train``.
        purify_fn: ``(images, t_star) -> images`` (e.g. `DenoiserPurify`); None: purification
            candidates are reported as skipped.
        out_dir: where the resume cache is kept (None: no cache).
        candidates: default `default_candidates()` (with purification only if ``purify_fn`` is given).
        proxy: the proxy's size; ``budget_minutes`` may shrink it (`eclipse_loader.select.budget`).
        denoiser_images: images the denoiser was trained on; they are kept out of validation.
        min_per_class, max_validation: validation-set limits (too few -> ValueError).
        min_gain: how far a candidate must beat ``none`` (`eclipse_loader.select.stats`), raised to the measured
            training noise: the largest accuracy gap between ``none`` trained with ``seed`` and with each of
            ``noise_seeds`` other seeds.
        tie_points: how close to the best a lighter candidate must be to win the tie (default 1 point). It is not
            raised to the training noise: on the cpu-quick table a tie band that wide (6-8 points on TAP, AR,
            OPS) let candidates 2-3 proxy points below the best win, and they cost the victim up to 17 points.
        tie_break: ``"lighter"``: a lighter candidate tied with the best (within ``tie_points`` and the paired
            interval) wins; ``"best"``: the best wins (`eclipse_loader.select.stats.choose`). The candidates'
            proxy runs do not depend on it, so the cache serves both.
        try_trusted_mix: also score the chosen defence trained with trusted images mixed in.
        progress: called as ``progress(done, total, name)`` after each candidate.
    """
    start_time = time.perf_counter()
    log = log or (lambda message: None)
    check_inputs(train, trusted)
    classes = np.unique(train.labels)
    val_idx, pool_idx = split_trusted(trusted, classes, denoiser_images, max_validation=max_validation,
                                      min_per_class=min_per_class, seed=seed)
    val, pool = trusted.subset(val_idx), trusted.subset(pool_idx)
    candidates = list(candidates if candidates is not None else default_candidates(purification=purify_fn is not None))
    if not any(c.name == "none" for c in candidates):
        candidates.insert(0, Candidate())
    context = _fingerprint(train.fingerprint(), val.fingerprint(), pool.fingerprint(), seed,
                           getattr(purify_fn, "cache_id", None if purify_fn is None else "custom"))
    cache = _Cache(None if out_dir is None else Path(out_dir), context)
    runnable = [c for c in candidates if unservable_reason(c, purify_fn) is None]
    extra_runs = noise_seeds + (1 if try_trusted_mix else 0)  # the seed-noise runs and the trusted-mix run
    the_plan = _plan(cache, proxy, budget_minutes, train, runnable, extra_runs, purify_fn, seed, log)
    settings = the_plan.proxy
    subset = train.subset(select_sparse_indices(train, count=min(settings.images, len(train)), seed=seed)) \
        if settings.images < len(train) else train
    mix_count = min(len(pool), int(round(len(pool) * len(subset) / len(train))))
    mixed = pool.subset(select_sparse_indices(pool, count=mix_count, seed=seed + 1)) if mix_count > 0 else None

    def run(candidate: Candidate, run_seed: int = seed) -> CandidateResult:
        key = _fingerprint(asdict(candidate), settings.to_dict(), run_seed)
        cached = cache.get(key)
        if cached is not None:
            log(f"{candidate.name}: cached")
            return cached
        result = _run_candidate(candidate, subset, mixed, val, purify_fn, settings, run_seed)
        cache.put(key, result)
        log(f"{candidate.name}: " + (f"{100 * result.accuracy:.1f}%" if result.accuracy is not None else result.reason))
        return result

    results = []
    total = len(candidates) + noise_seeds
    for done, candidate in enumerate(candidates, 1):
        results.append(run(candidate))
        if progress is not None:
            progress(done, total, candidate.name)
    base_accuracy = next(r.accuracy for r in results if r.name == "none")
    noise_runs = []
    for k in range(1, noise_seeds + 1):
        noise_runs.append(run(Candidate(), seed + k).accuracy)
        if progress is not None:
            progress(len(candidates) + k, total, f"none (seed {seed + k})")
    seed_noise = max([abs(a - base_accuracy) for a in noise_runs], default=0.0)  # type: ignore[operator]
    scored = [r for r in results if r.status == "done"]
    decision = choose([r.name for r in scored], [r.weight for r in scored], [r.correct for r in scored],
                      min_gain=max(min_gain, seed_noise), tie_points=tie_points, tie_break=tie_break,
                      seed=seed)
    chosen = next(c for c in candidates if c.name == decision.name)
    mix_result, recommended = None, False
    if try_trusted_mix and mixed is not None:
        mix_result = run(chosen.with_trusted())
        if mix_result.status == "done":
            base = next(r for r in scored if r.name == chosen.name)
            mix_decision = choose([base.name, mix_result.name], [base.weight, mix_result.weight],
                                  [base.correct, mix_result.correct], baseline=base.name,
                                  min_gain=max(min_gain, seed_noise), seed=seed)
            recommended = mix_decision.name == mix_result.name
    sizes = {"train": len(train), "trusted": len(trusted), "validation": len(val), "pool": len(pool),
             "proxy_train": len(subset), "mixed_trusted": mix_count,
             "denoiser_images": -1 if denoiser_images is None else len(denoiser_images)}
    return Selection(chosen, decision.reason, results, the_plan, seed, sizes, mix_result, recommended,
                     time.perf_counter() - start_time, seed_noise, tuple(noise_runs))  # type: ignore[arg-type]


def _run_candidate(candidate: Candidate, subset: LabelledImages, mixed: Optional[LabelledImages], val: LabelledImages,
                   purify_fn: Optional[PurifyFn], settings: ProxySettings, seed: int) -> CandidateResult:
    result = CandidateResult(candidate.name, candidate.weight, asdict(candidate))
    reason = unservable_reason(candidate, purify_fn)
    if candidate.mix_trusted and mixed is None:
        reason = "no trusted images outside the validation set to mix in"
    if reason is not None:
        result.status, result.reason = "skipped", reason
        return result
    data = subset
    if candidate.mix_trusted:
        assert mixed is not None
        data = LabelledImages(np.concatenate([subset.images, mixed.images]),
                              np.concatenate([subset.labels, mixed.labels]), subset.num_classes)
    start = time.perf_counter()
    defended = apply_offline(candidate, data, purify_fn)
    result.offline_seconds = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    model = train_proxy(defended, candidate, settings, seed)
    result.train_seconds = round(time.perf_counter() - start, 2)
    result.correct = correct_mask(model, val)
    result.accuracy = float(result.correct.mean())
    result.interval = wilson_interval(int(result.correct.sum()), len(result.correct))
    result.proxy_train_accuracy = float(correct_mask(model, defended).mean())
    return result


def _plan(cache: _Cache, proxy: ProxySettings, budget_minutes: Optional[float], train: LabelledImages,
          runnable: list[Candidate], extra_runs: int, purify_fn: Optional[PurifyFn], seed: int,
          log: Callable[[str], None]) -> Plan:
    """The proxy plan: the cached one on resume (same inputs and request), else measured now."""
    request = {"proxy": proxy.to_dict(), "budget_minutes": budget_minutes}
    stored = cache.data.get("plan")
    if stored is not None and stored.get("request") == request:
        p = stored["plan"]
        return Plan(ProxySettings(**p["proxy"]), p["estimated_minutes"], ProxySettings(**p["requested_proxy"]),
                    p["budget_minutes"], p["within_budget"])
    probe = train.subset(select_sparse_indices(train, count=min(len(train), 512), seed=seed))
    ends: list[float] = []  # the second epoch is timed: the first carries one-off start-up costs
    train_proxy(probe, Candidate(), ProxySettings(images=len(probe), epochs=2, width=proxy.width,
                                                  batch_size=proxy.batch_size, lr=proxy.lr), seed,
                on_epoch=lambda epoch: ends.append(time.perf_counter()))
    s_train = (ends[1] - ends[0]) / len(probe)
    purifying = [c for c in runnable if c.t_star is not None]
    s_purify = 0.0
    if purifying and purify_fn is not None:
        start = time.perf_counter()
        purify_fn(probe.images[:32], min(c.t_star for c in purifying))  # type: ignore[type-var]
        s_purify = (time.perf_counter() - start) / 32
    result = plan(proxy, budget_minutes, len(np.unique(train.labels)), len(runnable) + extra_runs, len(purifying),
                  s_train, s_purify)
    log(f"proxy plan: {result.proxy.images} images x {result.proxy.epochs} epochs, estimated "
        f"{result.estimated_minutes:.1f} min ({s_train * 1e3:.2f} ms per image-epoch, {s_purify * 1e3:.1f} ms per "
        f"purified image)")
    cache.data["plan"] = {"request": request, "plan": result.to_dict(),
                          "measured": {"s_per_image_epoch": s_train, "s_per_purified_image": s_purify}}
    cache.save()
    return result
