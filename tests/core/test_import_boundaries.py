"""The core imports with ffcv and lightning made unimportable: framework glue lives only in adapters/;
and no import (at any depth, TYPE_CHECKING included) runs from a lower layer to a higher one."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = [
    "eclipse_loader.recipes", "eclipse_loader.machine", "eclipse_loader.errors",
    "eclipse_loader.data.images", "eclipse_loader.data.sources", "eclipse_loader.data.embedded",
    "eclipse_loader.data.sparse", "eclipse_loader.data.npz_mmap",
    "eclipse_loader.compensation.transform", "eclipse_loader.compensation.functional",
    "eclipse_loader.loading.config", "eclipse_loader.loading.torch_loader",
    "eclipse_loader.denoiser.io", "eclipse_loader.denoiser.presets", "eclipse_loader.denoiser.objective",
    "eclipse_loader.denoiser.resume", "eclipse_loader.purify.engine", "eclipse_loader.storage",
    "eclipse_loader.purify.purifier", "eclipse_loader.purify.run", "eclipse_loader.purify.shards",
    "eclipse_loader.purify.noise", "eclipse_loader.purify.outliers",
    "eclipse_loader.storage.beton", "eclipse_loader.storage.reader", "eclipse_loader.storage.format",
    "eclipse_loader.output_files", "eclipse_loader.storage.sources", "eclipse_loader.nn_utils",
]
_PROBE = """
import importlib, sys
for blocked in ("ffcv", "lightning", "pytorch_lightning", "numba"):
    sys.modules[blocked] = None  # any import of them raises ImportError
for name in sys.argv[1:]:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ffcv", "lightning", "numba") and sys.modules[m])
print("loaded:", loaded)
"""


def test_core_imports_without_ffcv_lightning_or_numba():
    result = subprocess.run([sys.executable, "-c", _PROBE, *CORE], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("loaded: []")


def test_the_probe_can_fail():
    result = subprocess.run([sys.executable, "-c", _PROBE, "eclipse_loader.adapters.ffcv_loaders"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode != 0 and "None in sys.modules" in result.stderr  # an adapter needs them


# bottom to top; floor modules (torch-free settings, helpers) sit below every layer, the rest above them all.
# storage (the beton format: the atomic writer and the checked reader) sits just above data: purify writes
# through it and loading reads through it, and it imports nothing but data and the floor.
LAYERS = ("data", "storage", "compensation", "denoiser", "purify", "loading", "adapters")
FLOOR = ("recipes", "machine", "errors", "nn_utils", "output_files", "_lazy")
ABOVE = ("poisons", "defenses", "evaluation", "select", "commands")
SIDEWAYS_FORBIDDEN = (("defenses", "poisons"), ("poisons", "defenses"))


def _rank(module: str) -> int:
    part = (module.split(".") + [""])[1]
    if part in FLOOR:
        return -1
    if part in LAYERS:
        return LAYERS.index(part)
    return len(LAYERS) if part in ABOVE else len(LAYERS) + 1  # cli, the package root


def _imports(root: Path) -> set[tuple[str, str]]:
    """Every ``(importer, imported)`` pair of package modules under ``root`` (a package directory)."""
    pairs = set()
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            pairs.update((module, name) for name in names if name.startswith(root.name + "."))
    return pairs


def _violations(root: Path) -> set[tuple[str, str]]:
    bad = {(a, b) for a, b in _imports(root) if _rank(a) < len(LAYERS) and _rank(b) > _rank(a)}
    for low, high in SIDEWAYS_FORBIDDEN:
        bad |= {(a, b) for a, b in _imports(root) if a.split(".")[1:2] == [low] and b.split(".")[1:2] == [high]}
    return bad


def test_no_import_runs_up_the_layers():
    assert _violations(REPO / "eclipse_loader") == set()


def test_the_layer_check_can_fail(tmp_path):
    package = tmp_path / "eclipse_loader"
    for sub, text in {"data": "def f():\n    from ..storage.beton import read_beton\n",
                      "defenses": "from ..poisons.backdoors import eval_mode\n",
                      "storage": "from ..data.images import LabelledImages\n"}.items():
        (package / sub).mkdir(parents=True)
        (package / sub / "mod.py").write_text(text)
    assert _violations(package) == {("eclipse_loader.data.mod", "eclipse_loader.storage.beton"),
                                    ("eclipse_loader.defenses.mod", "eclipse_loader.poisons.backdoors")}
