"""Named defence settings: the product default and the paper-faithful ECLIPSE, and the settings types
whose defaults they are (`Recipe`, `PurifyConfig`; the purifier re-exports the latter).

Every entry point (the ``purify``, ``train-denoiser`` and ``demo`` commands, `EclipseDataModule`,
the evaluation harness) takes its defaults from here, so "the default" means one thing.

``default`` was chosen by measurement (``benchmarks/ablation.py``; README "Choosing the default"):
on the cpu-quick protocol it beat the paper's settings and JPEG quality 10 on mean accuracy over
seven poisons, at about two points on clean data. What it changes, and why:

* isolated outlier pixels are repaired first (the one-pixel shortcut survives any noise level);
* more forward noise: t* = 400 of 4000 (noise std 0.2 in [-1, 1] units instead of 0.05), which
  removes more of the adversarial poisons (TAP, EM) at ~2 points of clean accuracy;
* two strided reverse steps (about 1 GFLOP per 32x32 image with the ``small`` preset);
* a milder compensation (grayscale p = 0.2, noise 0.03): the paper's costs ~5 points on clean data
  in short training runs, and the purification now does most of the work.

``paper`` is ECLIPSE as published (Wang et al., ESORICS 2024): t* = 100, the full 100-step chain,
grayscale p = 0.4 and noise 0.05, no outlier repair.
"""
from __future__ import annotations

# torch-free on purpose: every layer (compensation, loading, purify, CLI) reads its defaults here.

import json
import numbers
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union


#: online augmentations a recipe may name besides the compensation (see `Recipe.augment`)
AUGMENTS: tuple[Optional[str], ...] = (None, "rsk-ff")


@dataclass(frozen=True)
class Recipe:
    """Everything a defence fixes besides the denoiser's architecture.

    Attributes:
        t_star: forward noise steps of the purification (of 4000, cosine schedule).
        purify_steps: network calls on the way back (None: the full chain, ``t_star`` calls).
        repair_threshold: grey levels beyond the 8 neighbours' range that mark an isolated outlier
            pixel to repair before purification (None: no repair).
        denoiser_t_max: highest timestep the denoiser trains on (must be >= ``t_star - 1``).
        p_gray, sigma: the online corruption compensation (grayscale probability, noise std in [0, 1]);
            0 and 0: no compensation.
        purification: run the diffusion purification (False: ``t_star``, ``purify_steps`` and
            ``denoiser_t_max`` are unused; outlier repair, grayscale and JPEG still apply).
        grayscale: convert the training images to grayscale offline (after the repair).
        jpeg_quality: re-encode the training images as JPEG at this quality offline, after grayscale
            and before purification (None: no JPEG).
        augment: an extra online augmentation before the compensation: None or ``"rsk-ff"``
            (random sharpening + DCT low-pass, `eclipse_loader.select.augment`).
        mix_trusted: also train on the trusted clean images (appended to the training set).
        chroma_block: keep the luma and average the chroma over blocks of this many pixels offline, after
            the repair and before JPEG (`eclipse_loader.select.colour.chroma_low_pass`; None: off).
        chroma_swap: give each training image the chroma of another one (a seeded random derangement over
            the whole training set) offline, after the repair and before JPEG (`eclipse_loader.select.colour`).

    The fields after ``sigma`` were added for recipes chosen by ``eclipse-loader tune``; their defaults
    leave ``default`` and ``paper`` as they were.
    """

    t_star: int
    purify_steps: Optional[int]
    repair_threshold: Optional[int]
    denoiser_t_max: int
    p_gray: float
    sigma: float
    purification: bool = True
    grayscale: bool = False
    jpeg_quality: Optional[int] = None
    augment: Optional[str] = None
    mix_trusted: bool = False
    chroma_block: Optional[int] = None
    chroma_swap: bool = False

    def __post_init__(self) -> None:
        if sum((bool(self.grayscale), self.chroma_block is not None, bool(self.chroma_swap))) > 1:
            raise ValueError("grayscale, chroma_block and chroma_swap each replace the chroma: set one of them")
        if self.chroma_block is not None and not (isinstance(self.chroma_block, int) and self.chroma_block >= 1):
            raise ValueError(f"chroma_block must be None or a positive integer, got {self.chroma_block!r}")
        if self.denoiser_t_max < self.t_star - 1:
            raise ValueError(f"denoiser_t_max={self.denoiser_t_max} cannot serve t_star={self.t_star}")
        if self.jpeg_quality is not None and not (isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100):
            raise ValueError(f"jpeg_quality must be None or an integer in [1, 100], got {self.jpeg_quality!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain JSON-able dict (what `save_recipe` writes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "recipe") -> Recipe:
        """A recipe from `to_dict`'s form; unknown or missing fields raise ValueError naming ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown recipe field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"{where}: {error}") from None

    def with_overrides(self, **changes: Any) -> Recipe:
        """This recipe with the given fields replaced (``None`` values ignored); a larger ``t_star``
        raises ``denoiser_t_max`` to match unless that is given too."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "t_star" in changes and "denoiser_t_max" not in changes:
            changes["denoiser_t_max"] = max(self.denoiser_t_max, int(changes["t_star"]) - 1)
        return replace(self, **changes)

    def purify_config(self, *, steps: Optional[int | str] = None, repair_threshold: Optional[int] = None,
                      repair: bool = True, noise_std: Optional[float] = None, **fields: Any) -> PurifyConfig:
        """The `PurifyConfig` of this recipe, with explicit overrides.

        Args:
            steps: None: the recipe's; ``"full"``: the full chain (t* calls); otherwise that many
                (more than t* is an error, never silently clamped).
            repair_threshold: None: the recipe's; otherwise that threshold.
            repair: ``False`` turns outlier repair off (whatever the threshold).
            noise_std: pick t* from this forward-noise std instead of the recipe's ``t_star`` (then
                ``steps`` is checked against t* when the purifier resolves it).
            fields: other `PurifyConfig` fields (``sampler``, ``seed``, ``bf16``).

        Raises:
            ValueError: ``steps`` is not a positive integer, ``"full"`` or None, or exceeds t*.
        """
        if steps == "full":
            chosen_steps: Optional[int] = None
        elif steps is None:
            chosen_steps = self.purify_steps
        elif isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
            chosen_steps = steps
        else:
            raise ValueError(f"steps must be a positive integer or 'full', got {steps!r}")
        threshold = (self.repair_threshold if repair_threshold is None else repair_threshold) if repair else None
        if noise_std is not None:
            return PurifyConfig(t_star=None, noise_std=noise_std, steps=chosen_steps, repair_threshold=threshold,
                                **fields)
        if chosen_steps is not None and chosen_steps > self.t_star:
            raise ValueError(f"steps={chosen_steps} exceeds t*={self.t_star} (at most one network call per "
                             "forward step); use fewer steps, 'full', or a larger t*")
        return PurifyConfig(t_star=self.t_star, steps=chosen_steps, repair_threshold=threshold, **fields)


#: The product default: every default of every class, function and command comes from here.
DEFAULT_RECIPE = Recipe(t_star=400, purify_steps=2, repair_threshold=48, denoiser_t_max=399, p_gray=0.2, sigma=0.03)
#: ECLIPSE as published; used only when asked for by name (``recipe="paper"``).
PAPER_RECIPE = Recipe(t_star=100, purify_steps=None, repair_threshold=None, denoiser_t_max=99, p_gray=0.4, sigma=0.05)

RECIPES: dict[str, Recipe] = {"default": DEFAULT_RECIPE, "paper": PAPER_RECIPE}

Sampler = Literal["ddpm", "ddim"]
SAMPLERS = ("ddpm", "ddim")
NoiseRNG = Literal["counter", "generator"]
NOISE_RNGS = ("counter", "generator")



@dataclass(frozen=True)
class PurifyConfig:
    """Settings that determine the purified pixels (all of them enter the cache key).

    Every default is the ``default`` recipe's (`eclipse_loader.recipes.DEFAULT_RECIPE`: t* = 400,
    2 steps, outlier repair at 48); the paper's settings are ``PAPER_RECIPE.purify_config()``.

    Args:
        t_star: forward steps of 4000. ``None``: the t whose ``sqrt(1 - abar)`` is closest to ``noise_std``.
        noise_std: target forward-noise std in [-1, 1] units; give it with ``t_star=None`` (not both).
        steps: network calls on the way back. ``None``: the full chain (``t_star`` calls). Fewer
            steps use evenly strided timesteps from ``t*-1`` down to 0.
        sampler: ``"ddpm"`` (stochastic ancestral; strided = DDPM posterior between visited
            timesteps) or ``"ddim"`` (deterministic, eta = 0, after the stochastic forward noise).
        seed: base seed of the per-sample noise.
        noise_rng: ``"counter"`` (default): the noise is a counter-based hash of (seed, index, draw),
            drawn in one batched call on the U-Net's device (`eclipse_loader.purify.noise`);
            ``"generator"``: one CPU `torch.Generator` per sample seeded by `sample_seed`, copied to
            the device (the engine of earlier releases, kept to reproduce their results).
        bf16: run the U-Net under bfloat16 autocast (CUDA only; ignored on CPU).
        repair_threshold: repair isolated outlier pixels (more than this many grey levels outside
            their 8 neighbours' range; see `eclipse_loader.purify.outliers`) before noising. ``None``: off.
            Applies to the uint8 entry point `Purifier.purify`.
    """

    t_star: Optional[int] = DEFAULT_RECIPE.t_star
    noise_std: Optional[float] = None
    steps: Optional[int] = DEFAULT_RECIPE.purify_steps
    sampler: Sampler = "ddpm"
    seed: int = 0
    noise_rng: NoiseRNG = "counter"
    bf16: bool = False
    repair_threshold: Optional[int] = DEFAULT_RECIPE.repair_threshold

    def __post_init__(self) -> None:
        if self.t_star is not None and (not _is_int(self.t_star) or self.t_star < 1):
            raise ValueError(f"t_star must be a positive integer or None, got {self.t_star!r}")
        if (self.t_star is None) == (self.noise_std is None):
            raise ValueError("give exactly one of t_star and noise_std "
                             f"(got t_star={self.t_star!r}, noise_std={self.noise_std!r}); "
                             "for a noise level: PurifyConfig(t_star=None, noise_std=...)")
        if self.noise_std is not None and not 0.0 < float(self.noise_std) < 1.0:
            raise ValueError(f"noise_std must be in (0, 1), got {self.noise_std!r}")
        if self.steps is not None and (not _is_int(self.steps) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.t_star is not None and self.steps is not None and self.steps > self.t_star:
            raise ValueError(f"steps ({self.steps}) cannot exceed t_star ({self.t_star})")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.noise_rng not in NOISE_RNGS:
            raise ValueError(f"noise_rng must be one of {NOISE_RNGS}, got {self.noise_rng!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be a bool, got {self.bf16!r}")
        if self.repair_threshold is not None and (not _is_int(self.repair_threshold)
                                                  or not 0 <= self.repair_threshold < 255):
            raise ValueError(f"repair_threshold must be None or an integer in [0, 255), got {self.repair_threshold!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the fields that are set (``noise_std`` only when it picks t*,
        ``repair_threshold`` only when repair is on)."""
        fields = asdict(self)
        for name in ("noise_std", "repair_threshold"):
            if fields[name] is None:
                del fields[name]
        return fields


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a clear error names the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}") from None


def load_recipe(path_or_name: Union[str, os.PathLike]) -> Recipe:
    """A recipe by name (``"default"``, ``"paper"``) or from a JSON file written by `save_recipe`
    (e.g. ``recipe.json`` of ``eclipse-loader tune``). A JSON file may hold the recipe's fields at the
    top level or under a ``"recipe"`` key."""
    text = os.fspath(path_or_name)
    if text in RECIPES:
        return RECIPES[text]
    path = Path(text)
    if not path.suffix == ".json" and not path.is_file():
        raise ValueError(f"unknown recipe {text!r}; choose from {sorted(RECIPES)} or give a recipe .json file")
    if not path.is_file():
        raise FileNotFoundError(f"no such recipe file: {path}")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"recipe file {path} is not valid JSON: {error}") from None
    if isinstance(values, dict) and isinstance(values.get("recipe"), dict):
        values = values["recipe"]
    if not isinstance(values, dict):
        raise ValueError(f"recipe file {path} must hold a JSON object of recipe fields")
    return Recipe.from_dict(values, where=f"recipe file {path}")


def save_recipe(recipe: Recipe, path: Union[str, os.PathLike], **extra: Any) -> Path:
    """Write ``recipe`` as JSON (``{"recipe": {...}, **extra}``) to ``path`` atomically; `load_recipe` reads it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"recipe": recipe.to_dict(), **extra}, indent=2) + "\n")
    os.replace(tmp, path)
    return path
