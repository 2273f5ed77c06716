"""Files of a selection: ``recipe.json`` (the chosen defence, read by `load_recipe`), ``selection.json``,
``selection.md`` (a table) and ``selection.png`` (validation accuracy with 95% intervals; needs matplotlib)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from ..recipes import DEFAULT_RECIPE, Recipe, save_recipe
from .run import CandidateResult, Selection

FIT_WARNING = 0.8
RECIPE_NAME, JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "recipe.json", "selection.json", "selection.md", "selection.png"


def summary(selection: Selection, purify_steps: Optional[int] = DEFAULT_RECIPE.purify_steps) -> dict[str, Any]:
    """The selection as a JSON-able dict (what ``selection.json`` holds); ``purify_steps`` goes into the recipe."""
    chosen = selection.chosen.with_trusted() if selection.mix_recommended else selection.chosen
    recipe = chosen.to_recipe(purify_steps=purify_steps)
    return {
        "chosen": selection.chosen.name,
        "reason": selection.reason,
        "recipe": recipe.to_dict(),
        "mix_trusted": {"recommended": selection.mix_recommended,
                        "result": None if selection.trusted_mix is None else selection.trusted_mix.to_json()},
        "candidates": [r.to_json() for r in selection.results],
        "proxy_plan": selection.plan.to_dict(),
        "seed_noise": selection.seed_noise,
        "noise_accuracies": list(selection.noise_accuracies),
        "proxy_fits": _fits(selection),
        "sizes": selection.sizes,
        "seed": selection.seed,
        "seconds": round(selection.seconds, 1),
    }


def _fits(selection: Selection) -> Optional[float]:
    """The proxy's accuracy on its own training set under no defence (it should be near 1)."""
    return next((r.proxy_train_accuracy for r in selection.results if r.name == "none"), None)


def markdown(selection: Selection) -> str:
    """A markdown table of every candidate, best first; skipped ones at the end with the reason."""
    p, shrunk = selection.plan.proxy, selection.plan.proxy != selection.plan.requested
    lines = [f"Defence selection: proxy `small_cnn` width {p.width}, {selection.sizes['proxy_train']} training images "
             f"x {p.epochs} epochs, validated on {selection.sizes['validation']} held-out trusted images, seed "
             f"{selection.seed}" + (" (proxy shrunk to fit the budget)" if shrunk else "") + ".",
             f"Chosen: **{selection.chosen.name}** ({selection.reason}). Training noise of the proxy: "
             f"{100 * selection.seed_noise:.1f} points (largest gap of 'none' over {len(selection.noise_accuracies)} "
             "other seeds); a candidate must beat 'none' by more than that and than the 95% paired interval.", "",
             "| candidate | validation accuracy (%) | 95% interval | proxy train acc. (%) | weight | seconds |",
             "|---|---:|---|---:|---:|---:|"]
    rows = sorted(selection.results + ([selection.trusted_mix] if selection.trusted_mix else []),
                  key=lambda r: (r.accuracy is None, -(r.accuracy or 0.0), r.weight))
    for r in rows:
        mark = "**" if r.name == selection.chosen.name else ""
        if r.accuracy is None:
            lines.append(f"| {r.name} | skipped: {r.reason} | | | {r.weight} | |")
            continue
        low, high = r.interval or (float("nan"), float("nan"))
        lines.append(f"| {mark}{r.name}{mark} | {100 * r.accuracy:.1f} | {100 * low:.1f}-{100 * high:.1f} | "
                     f"{100 * (r.proxy_train_accuracy or 0):.1f} | {r.weight} | "
                     f"{r.offline_seconds + r.train_seconds:.0f} |")
    fits = _fits(selection)
    if fits is not None and fits < FIT_WARNING:
        lines += ["", f"**Warning**: the proxy reached only {100 * fits:.0f}% on its own training set under no "
                      "defence; a proxy that does not fit its training set cannot see what a poison does (raise the "
                      "epochs)."]
    if selection.trusted_mix is not None:
        verdict = "recommended" if selection.mix_recommended else "not recommended"
        lines += ["", f"Also training on the trusted images: {verdict} ({selection.sizes['mixed_trusted']} trusted "
                      "images mixed into the proxy's training set)."]
    return "\n".join(lines) + "\n"


def bar_plot(selection: Selection, path: Path) -> None:
    """Horizontal bars of validation accuracy with 95% Wilson intervals (raises ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done: list[CandidateResult] = [r for r in selection.results if r.accuracy is not None]
    done.sort(key=lambda r: r.accuracy or 0.0)
    values = [100 * (r.accuracy or 0.0) for r in done]
    errors = [[100 * ((r.accuracy or 0.0) - r.interval[0]) for r in done],  # type: ignore[index]
              [100 * (r.interval[1] - (r.accuracy or 0.0)) for r in done]]  # type: ignore[index]
    colours = ["tab:orange" if r.name == selection.chosen.name else "tab:blue" for r in done]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(done) + 1.2))
    ax.barh([r.name for r in done], values, xerr=errors, color=colours, capsize=2)
    ax.set_xlabel("proxy accuracy on held-out trusted images (%), 95% interval")
    ax.set_title(f"defence selection (chosen: {selection.chosen.name})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(selection: Selection, out_dir: Union[str, os.PathLike], source: Optional[dict[str, Any]] = None,
                 purify_steps: Optional[int] = DEFAULT_RECIPE.purify_steps) -> dict[str, Path]:
    """Write the recipe and the report into ``out_dir``; returns the written paths by kind.

    ``source`` (e.g. the command's arguments) is stored with both JSON files; ``purify_steps`` (the steps
    the purification candidates ran with) goes into the recipe.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = summary(selection, purify_steps)
    paths = {"recipe": out / RECIPE_NAME, "json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME}
    save_recipe(Recipe.from_dict(data["recipe"]), paths["recipe"], chosen=data["chosen"], reason=data["reason"],
                mix_trusted_recommended=selection.mix_recommended, source=source or {})
    paths["json"].write_text(json.dumps({**data, "source": source or {}}, indent=2) + "\n")
    paths["markdown"].write_text(markdown(selection))
    try:
        bar_plot(selection, out / PLOT_NAME)
        paths["plot"] = out / PLOT_NAME
    except ImportError:
        pass
    return paths
