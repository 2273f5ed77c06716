"""benchmarks/trusted_mix.py: victims with and without the trusted images mixed in, on the `smoke` protocol."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "trusted_mix.py"


def _run(tmp_path: Path, cells: str) -> subprocess.CompletedProcess:
    data = tmp_path / "cifar-layout.npz"  # the embedded sample in the full archive's layout
    if not data.exists():
        from ..conftest import embedded_cifar

        np.savez(data, **embedded_cifar())
    return subprocess.run([sys.executable, str(SCRIPT), "--protocol", "smoke", "--cells", cells, "--data", str(data),
                           "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out.json"), "--threads", "1"],
                          capture_output=True, text=True, timeout=300)


def test_each_cell_trains_alone_and_with_the_trusted_images(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from defense import PROTOCOLS, Harness

    data = tmp_path / "cifar-layout.npz"
    from ..conftest import embedded_cifar

    np.savez(data, **embedded_cifar())
    clean = Harness(PROTOCOLS["smoke"], tmp_path / "work", "cpu", 0, data=data).train
    (tmp_path / "work" / "poisons").mkdir(parents=True)
    flipped = clean.images[:, :, ::-1]  # a stand-in "poison": the script only reads the cached file
    np.savez(tmp_path / "work" / "poisons" / "ops.npz", images=flipped, labels=clean.labels)
    run = _run(tmp_path, "none:none,ops:chroma-swap")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert [(c["attack"], c["candidate"]) for c in result["cells"]] == [("none", "none"), ("ops", "chroma-swap")]
    for cell in result["cells"]:
        assert cell["trusted_images"] == PROTOCOLS["smoke"].sparse_size
        assert 0.0 <= cell["alone"] <= 1.0 and 0.0 <= cell["with_trusted"] <= 1.0
    assert "trusted_mix.py" in result["command"]


def test_bad_cells_and_missing_poisons_get_one_line_and_no_output(tmp_path):
    for cells, message in (("tapjpeg10", "is not ATTACK:CANDIDATE"), ("tap:purify100", "purify or augment"),
                           ("tap:jpeg10", "no cached poison")):
        run = _run(tmp_path, cells)
        assert run.returncode == 2 and message in run.stderr.strip().splitlines()[-1], run.stderr
        assert not (tmp_path / "out.json").exists()
