"""One call from data + denoiser directory to a chosen recipe and its report (what ``tune`` and
``purify --recipe auto`` run)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from ..data.images import LabelledImages
from ..recipes import DEFAULT_RECIPE, Recipe, load_recipe
from .candidates import DEFAULT_T_STARS, default_candidates
from .proxy import ProxySettings
from .run import Progress, Selection, select_defense


def tune(train: LabelledImages, trusted: LabelledImages, denoiser_dir: Union[str, os.PathLike, None],
         out_dir: Union[str, os.PathLike], *, seed: int = 0, budget_minutes: Optional[float] = None,
         proxy: ProxySettings = ProxySettings(), t_stars: tuple[int, ...] = DEFAULT_T_STARS,
         purify_steps: Optional[int] = DEFAULT_RECIPE.purify_steps, denoiser_images: Optional[np.ndarray] = None,
         device: str = "cpu", progress: Optional[Progress] = None, log: Optional[Callable[[str], None]] = None,
         source: Optional[dict[str, Any]] = None, **options: Any) -> tuple[Recipe, Selection, dict[str, Path]]:
    """Select the defence for ``train`` and write ``out_dir/recipe.json`` and the report.

    ``denoiser_dir`` None: only candidates without purification. ``denoiser_images`` None: read from the
    denoiser's ``denoiser.json`` when it records them (``log`` says what was found). ``options`` go to
    `select_defense` (``min_per_class``, ``max_validation``, ``min_gain`` ...). Returns the recipe (as
    `load_recipe` reads it back), the `Selection` and the written paths.
    """
    from .denoiser_images import denoiser_training_images
    from .offline import DenoiserPurify
    from .report import write_report

    say = log or (lambda message: None)
    purify_fn = None
    if denoiser_dir is not None:
        purify_fn = DenoiserPurify(denoiser_dir, steps=purify_steps, seed=seed, device=device)
        if denoiser_images is None:
            denoiser_images, how = denoiser_training_images(denoiser_dir)
            say(("validation excludes " if denoiser_images is not None else "warning: ") + how)
    selection = select_defense(train, trusted, purify_fn, out_dir, candidates=default_candidates(
        t_stars, purification=purify_fn is not None), proxy=proxy, seed=seed, budget_minutes=budget_minutes,
        denoiser_images=denoiser_images, progress=progress, log=log, **options)
    paths = write_report(selection, out_dir, source=source, purify_steps=purify_steps)
    return load_recipe(paths["recipe"]), selection, paths
