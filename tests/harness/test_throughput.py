"""benchmarks/throughput.py: every stage is named by --stages (the three folded bench_* scripts included), and
a JSONL stage writes its own lines and no throughput JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
STAGES = ("loader", "first_batch", "loader_memory", "loader_profile", "purify", "train", "scaling",
          "loader_speed", "purify_speed", "train_denoiser")


def test_help_names_every_stage_and_the_folded_scripts_options():
    result = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    help_text = " ".join(result.stdout.split())
    assert all(stage in help_text for stage in STAGES)
    for option in ("--loader-speed-samples", "--purify-speed-modes", "--train-denoiser-modes", "--scale-sizes"):
        assert option in help_text


def test_purify_speed_stage_appends_its_jsonl_and_writes_no_throughput_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import throughput

    lines = tmp_path / "purify_speed.jsonl"
    throughput.main(["--stages", "purify_speed", "--purify-speed-presets", "tiny", "--purify-speed-modes",
                     "ddpm_strided_2", "--purify-speed-images", "2", "--purify-speed-batch-size", "2",
                     "--purify-speed-device", "cpu", "--purify-speed-out", str(lines), "--out", str(tmp_path / "t.json")])
    (row,) = [json.loads(line) for line in lines.read_text().splitlines()]
    assert row["bench"] == "purify_speed" and row["preset"] == "tiny" and row["network_calls"] == 2
    assert row["images"] == 2 and row["images_per_s"] > 0
    assert not (tmp_path / "t.json").exists()


def test_unknown_stage_is_refused(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import throughput

    with pytest.raises(SystemExit):
        throughput.main(["--stages", "loader,xyz"])
    assert "xyz" in capsys.readouterr().err
