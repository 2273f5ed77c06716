"""Offline steps of a candidate on a (subset of the) training set, and purification from a denoiser dir.

A *purify function* maps ``(uint8 NHWC images, t_star) -> uint8 NHWC images``. `DenoiserPurify` is the
one built from a saved denoiser; tests pass any callable. Its optional ``t_max`` attribute (highest
timestep the denoiser was trained on) lets the selection report candidates it cannot serve instead of
failing; its optional ``cache_id`` enters the resume cache key.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Union

import numpy as np

from ..data.images import LabelledImages
from ..data.mapped_images import MappedImages
from ..data.donor_images import DonorMappedImages
from ..evaluation.baselines import grayscale_pixels, jpeg_pixels
from .colour import CHROMA_SWAP_SEED, chroma_donors, chroma_pixels, swap_chroma_among, swap_chroma_pixels
from ..purify.outliers import repair_isolated_pixels
from ..recipes import DEFAULT_RECIPE, Recipe
from .candidates import Candidate

PurifyFn = Callable[[np.ndarray, int], np.ndarray]


class DenoiserPurify:
    """ECLIPSE purification with the denoiser saved in ``denoiser_dir``, at any t* it was trained for.

    Args:
        denoiser_dir: written by ``eclipse-loader train-denoiser`` / `train_denoiser`.
        steps: reverse network calls (default: the default recipe's, 2); None: the full chain.
        seed: base seed of the per-sample noise; device, batch_size: where and how many per call.
    """

    def __init__(self, denoiser_dir: Union[str, os.PathLike], steps: Optional[int] = DEFAULT_RECIPE.purify_steps,
                 seed: int = 0, device: str = "cpu", batch_size: int = 256) -> None:
        from ..denoiser.io import denoiser_hash, load_denoiser, load_metadata

        self.unet, self.scheduler = load_denoiser(denoiser_dir)
        meta = load_metadata(denoiser_dir)
        self.t_max: Optional[int] = None if meta.get("t_max") is None else int(meta["t_max"])
        self.steps, self.seed, self.device, self.batch_size = steps, int(seed), device, int(batch_size)
        self.cache_id = f"{denoiser_hash(denoiser_dir)[:16]}-s{steps}-seed{seed}"

    def __call__(self, images: np.ndarray, t_star: int) -> np.ndarray:
        from ..purify.purifier import Purifier, PurifyConfig

        if self.t_max is not None and t_star - 1 > self.t_max:
            raise ValueError(f"the denoiser was trained on t <= {self.t_max}; it cannot purify at t*={t_star}")
        steps = None if self.steps is None else min(self.steps, t_star)
        # repair is its own candidate component: never inside the purifier (PurifyConfig's default repairs)
        config = PurifyConfig(t_star=t_star, steps=steps, seed=self.seed, repair_threshold=None)
        purifier = Purifier(self.unet, self.scheduler, config, device=self.device)
        out = np.empty_like(images)
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            out[start:stop] = purifier.purify(images[start:stop], range(start, stop))
        return out


def unservable_reason(candidate: Candidate, purify_fn: Optional[PurifyFn]) -> Optional[str]:
    """Why ``candidate`` cannot run with ``purify_fn`` (None: it can)."""
    if candidate.t_star is None:
        return None
    if purify_fn is None:
        return "no denoiser given"
    t_max = getattr(purify_fn, "t_max", None)
    if t_max is not None and candidate.t_star - 1 > t_max:
        return f"the denoiser was trained on t <= {t_max}, t*={candidate.t_star} needs t <= {candidate.t_star - 1}"
    return None


_THRESHOLD: int = DEFAULT_RECIPE.repair_threshold  # type: ignore[assignment]


def apply_offline(candidate: Candidate, data: LabelledImages, purify_fn: Optional[PurifyFn] = None,
                  repair_threshold: int = _THRESHOLD) -> LabelledImages:
    """``data`` after ``candidate``'s offline steps: repair, grayscale, chroma low-pass or
    swap, JPEG, purification (in that order)."""
    # the steps before the diffusion are the recipe's, so the selection measures what `purify --recipe` runs
    data = recipe_before_purification(candidate.to_recipe(repair_threshold=repair_threshold), data)
    if candidate.t_star is not None:
        reason = unservable_reason(candidate, purify_fn)
        if reason is not None:
            raise ValueError(f"candidate {candidate.name}: {reason}")
        assert purify_fn is not None
        images = np.asarray(purify_fn(data.images, candidate.t_star))
        if images.shape != data.images.shape or images.dtype != np.uint8:
            raise ValueError(f"purify_fn returned {images.dtype} {images.shape}, expected uint8 {data.images.shape}")
        data = LabelledImages(images, data.labels, data.num_classes)
    return data


def recipe_before_purification(recipe: Recipe, data: LabelledImages) -> LabelledImages:
    """The offline steps a recipe runs before the diffusion: outlier repair (its threshold), grayscale, chroma
    low-pass, chroma swap, JPEG.

    A consumer that purifies with its own pipeline (``purify_dataset``) runs this first, then purifies
    with repair off, which reproduces the order the selection measured. Each image's result depends on
    that image alone, except under the chroma swap (on that image and its donor), so `offline_steps_lazily`
    may run it block by block.
    """
    return LabelledImages(pixels_before_purification(recipe, data.images), data.labels, data.num_classes)


def pixels_before_purification(recipe: Recipe, images: np.ndarray) -> np.ndarray:
    """`recipe_before_purification` on the bare uint8 NHWC pixels of the whole set (the chroma swap draws its
    donors among ``images``)."""
    images = _pixels_before_swap(recipe, images)
    if recipe.chroma_swap:
        images = swap_chroma_among(images)
    return _pixels_after_swap(recipe, images)


def _pixels_before_swap(recipe: Recipe, images: np.ndarray) -> np.ndarray:
    if recipe.repair_threshold is not None:
        images = repair_isolated_pixels(images, recipe.repair_threshold)[0]
    if recipe.grayscale:
        images = grayscale_pixels(images)
    if recipe.chroma_block is not None:
        images = chroma_pixels(images, recipe.chroma_block)
    return images


def _pixels_after_swap(recipe: Recipe, images: np.ndarray) -> np.ndarray:
    return images if recipe.jpeg_quality is None else jpeg_pixels(images, quality=recipe.jpeg_quality)


def offline_steps_lazily(recipe: Recipe, data: LabelledImages) -> LabelledImages:
    """``data`` with `recipe_before_purification`'s steps applied where its images are indexed (`MappedImages`;
    the chroma swap as `DonorMappedImages`, which reads each block's donors too): a purification pass then
    runs them block by block, on the process that purifies the block."""
    import functools

    import torch
    import torchvision

    steps = (recipe.repair_threshold, recipe.grayscale, recipe.jpeg_quality)
    chroma_part = "" if recipe.chroma_block is None else f" chroma={recipe.chroma_block}"  # older keys unchanged
    description = (f"offline steps repair/grayscale/jpeg={steps}{chroma_part} torch={torch.__version__} "
                   f"torchvision={torchvision.__version__}")  # JPEG's bytes come from torchvision's libjpeg
    if not recipe.chroma_swap:
        mapped = MappedImages(data.images, functools.partial(pixels_before_purification, recipe), description)
        return LabelledImages(mapped, data.labels, data.num_classes)
    before = MappedImages(data.images, functools.partial(_pixels_before_swap, recipe), f"{description} (before swap)")
    swapped = DonorMappedImages(before, chroma_donors(len(before)), swap_chroma_pixels,
                                f"chroma swap seed={CHROMA_SWAP_SEED} torch={torch.__version__}")
    after = MappedImages(swapped, functools.partial(_pixels_after_swap, recipe), f"{description} (after swap)")
    return LabelledImages(after, data.labels, data.num_classes)


def apply_recipe_offline(recipe: Recipe, data: LabelledImages, purify_fn: Optional[PurifyFn] = None) -> LabelledImages:
    """Every offline step of ``recipe`` on ``data`` in memory (purification through ``purify_fn`` at its t*)."""
    data = recipe_before_purification(recipe, data)
    if recipe.purification:
        if purify_fn is None:
            raise ValueError("the recipe purifies: pass a purify_fn (e.g. DenoiserPurify(denoiser_dir))")
        data = LabelledImages(np.asarray(purify_fn(data.images, recipe.t_star)), data.labels, data.num_classes)
    return data
