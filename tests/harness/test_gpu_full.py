"""benchmarks/gpu_full.py end to end on its CPU rehearsal `gpu-full-dry`, on synthetic splits (no CIFAR-10):
schema, device name, DataElixir rows, per-cell outputs, resume, the time budget."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _splits(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for key, n in (("train", 300), ("sparse", 200), ("test", 200)):
        arrays[f"{key}_x"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"{key}_y"] = np.arange(n) % 10
    np.savez(path, **arrays)
    return path


def _run(tmp_path: Path, *extra: str, script: str = "gpu_full.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), "--protocol", "gpu-full-dry", "--splits", str(_splits(tmp_path / "s.npz")),
         "--attacks", "ops,tap", "--defenses", "none,eclipse", "--workdir", str(tmp_path / "work"),
         "--out", str(tmp_path / "out"), "--device", "cpu", "--threads", "1", "--suffix=-dry", *extra],
        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_protocol_end_to_end_resumes_and_names_the_device(tmp_path):
    # defense.py hands gpu-full* over; one prefetch worker crafts OPS and the repaired sets
    first = _run(tmp_path, "--backdoors", "badnets", "--prefetch-workers", "1", script="defense.py")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("defense-gpu-full-dry-*-dry.json")
    result = json.loads(path.read_text())
    assert result["protocol"] == "gpu-full-dry" and result["device_name"] == "cpu (no CUDA device)"
    assert set(result["table"]) == {"none", "ops", "tap"}
    assert all(set(row) == {"none", "eclipse"} for row in result["table"].values())
    assert result["clean_accuracy"] == result["table"]["none"]["none"] and result["complete"] is True
    assert result["settings"]["sparse_from"] == "test" and result["settings"]["victim"] == "airbench94"
    assert result["errors"] == [] and result["stopped_by_budget"] is False
    elixir = result["dataelixir"]["badnets"]
    assert {"no_defense", "defended", "defense_info"} <= set(elixir)
    assert 0 <= elixir["defended"]["attack_success_rate"] <= 1 and "targets" in elixir["defense_info"]
    assert "DataElixir" in path.with_suffix(".md").read_text() and path.with_suffix(".png").is_file()
    cells = (tmp_path / "work" / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 6
    offline = {p.name for p in (tmp_path / "work" / "offline").iterdir()}
    assert {"none--repair-outliers.npz", "ops--repair-outliers.npz", "tap--repair-outliers.npz"} <= offline
    assert "craft_ops_s" in result["timings"]

    second = _run(tmp_path, "--backdoors", "badnets")  # all cached: no new cell, same table
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "work" / "cells.jsonl").read_text().splitlines() == cells
    assert json.loads(path.read_text())["table"] == result["table"]


def test_budget_stops_before_the_next_cell_and_still_writes_the_result(tmp_path):
    run = _run(tmp_path, "--backdoors", "", "--budget-minutes", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("defense-gpu-full-dry-*-dry.json")
    result = json.loads(path.read_text())
    assert result["stopped_by_budget"] is True and result["complete"] is False
    assert not (tmp_path / "work" / "cells.jsonl").exists()


def test_unknown_defense_is_refused(tmp_path):
    run = _run(tmp_path, "--defenses", "none,xyz")
    assert run.returncode != 0 and "xyz" in run.stderr


def test_gpu_data_round_trip_and_damaged_part(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_data", BENCH / "gpu_data.py")
    gpu_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_data)
    rng = np.random.default_rng(1)
    arrays = {"train_x": rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8), "train_y": rng.integers(0, 10, 70),
              "test_x": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), "test_y": rng.integers(0, 10, 30)}
    np.savez(tmp_path / "c.npz", **arrays)
    manifest = gpu_data.pack(tmp_path / "c.npz", tmp_path / "parts", parts=3)
    assert [p["count"] for p in manifest["parts"]] == [34, 33, 33]
    with np.load(gpu_data.unpack(tmp_path / "parts", tmp_path / "back.npz")) as back:
        for key, value in arrays.items():
            np.testing.assert_array_equal(back[key], value)
    good = (tmp_path / "parts" / "images-1.xz").read_bytes()
    (tmp_path / "parts" / "images-1.xz").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="images-1.xz is damaged"):
        gpu_data.unpack(tmp_path / "parts", tmp_path / "back.npz")
    (tmp_path / "parts" / "images-1.xz").write_bytes(good)
    (tmp_path / "parts" / "images-2.xz").unlink()
    with pytest.raises(FileNotFoundError, match="images-2.xz has not arrived"):
        gpu_data.unpack(tmp_path / "parts", tmp_path / "back.npz")


@pytest.mark.slow
def test_auto_column_selects_per_cell_on_the_sparse_set(tmp_path):
    run = _run(tmp_path, "--attacks", "ops", "--defenses", "none,auto", "--backdoors", "")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("defense-gpu-full-dry-*-dry.json")
    result = json.loads(path.read_text())
    assert set(result["table"]["ops"]) == {"none", "auto"} and result["errors"] == []
    assert set(result["auto_choices"]) == {"none", "ops"} and "chosen" in result["auto_choices"]["ops"]
    assert "proxy" in result["defenses"]["auto"]


def test_auto_purifies_with_its_own_denoiser(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from gpu_full import GpuHarness
    from protocols import GPU_PROTOCOLS

    from eclipse_loader.evaluation.defense_registry import candidate_defense
    from eclipse_loader.select.candidates import Candidate

    h = GpuHarness(GPU_PROTOCOLS["gpu-full-dry"], tmp_path / "work", "cpu", 0, splits=_splits(tmp_path / "s.npz"))
    seen = []
    h._auto_purify = lambda images, t_star: seen.append(t_star) or 255 - images
    defense = candidate_defense(Candidate(repair=True, t_star=200), steps=1)
    steps = h.offline_functions("ops", defense, ("repair-outliers",))
    out = steps["purify"](h.train)
    assert seen == [200] and np.array_equal(out.images, 255 - h.train.images)
    repaired = steps["repair-outliers"](h.train)
    assert (tmp_path / "work" / "offline" / "ops--repair-outliers.npz").is_file() and len(repaired) == len(h.train)
