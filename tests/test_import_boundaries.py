"""The core imports with ffcv and lightning made unimportable: framework glue lives only in adapters/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = [
    "eclipse_loader.recipes", "eclipse_loader.machine", "eclipse_loader.errors",
    "eclipse_loader.data.images", "eclipse_loader.data.sources", "eclipse_loader.data.embedded",
    "eclipse_loader.data.sparse", "eclipse_loader.data.npz_mmap",
    "eclipse_loader.compensation.transform", "eclipse_loader.compensation.functional",
    "eclipse_loader.loading.config", "eclipse_loader.loading.torch_loader",
    "eclipse_loader.denoiser.io", "eclipse_loader.denoiser.presets",
    "eclipse_loader.purify.purifier", "eclipse_loader.purify.run", "eclipse_loader.purify.shards",
    "eclipse_loader.purify.noise", "eclipse_loader.purify.outliers",
    "eclipse_loader.storage.beton", "eclipse_loader.storage.reader", "eclipse_loader.storage.format",
    "eclipse_loader.storage.output",
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
