"""Per-dataset defence selection (issue 18): measure candidate defences on the trusted clean set.

`select_defense` builds every `Candidate` on a class-balanced subset of the training data, trains a
small proxy CNN on it and scores it on trusted images that neither the proxy nor the denoiser saw;
`write_report` writes the chosen recipe (JSON, read by `eclipse_loader.recipes.load_recipe`) and the
report (JSON, markdown, PNG). Names are imported lazily so ``import eclipse_loader.select`` stays light.
"""
from __future__ import annotations

from .._lazy import lazy_exports


_LAZY = {
    "Candidate": "eclipse_loader.select.candidates",
    "default_candidates": "eclipse_loader.select.candidates",
    "COMPENSATION_LEVELS": "eclipse_loader.select.candidates",
    "DenoiserPurify": "eclipse_loader.select.offline",
    "ProxySettings": "eclipse_loader.select.proxy",
    "RandomSharpenFrequencyFilter": "eclipse_loader.select.augment",
    "rsk_ff": "eclipse_loader.select.augment",
    "Selection": "eclipse_loader.select.run",
    "select_defense": "eclipse_loader.select.run",
    "write_report": "eclipse_loader.select.report",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
