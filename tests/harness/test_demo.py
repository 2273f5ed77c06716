"""The `demo` command end to end (tiny settings), and the model-free poisons it uses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from eclipse_loader.cli import main
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.poisons import classwise_noise, classwise_patches

from ..conftest import requires_ffcv


@pytest.mark.parametrize("poison", [classwise_noise, classwise_patches])
def test_poisons_stay_in_budget_and_are_classwise(poison):
    clean = load_embedded("test")
    poisoned = poison(clean, 8 / 255, seed=1)
    delta = poisoned.images.astype(int) - clean.images.astype(int)
    assert np.abs(delta).max() == 8
    unclipped = (clean.images > 8) & (clean.images < 247)
    for c in range(10):
        rows = np.flatnonzero(clean.labels == c)[:2]
        both = unclipped[rows[0]] & unclipped[rows[1]]
        assert np.array_equal(delta[rows[0]][both], delta[rows[1]][both])  # same pattern within a class
    assert np.array_equal(poisoned.labels, clean.labels)


@requires_ffcv
@pytest.mark.slow
def test_demo_runs_end_to_end_with_tiny_settings(tmp_path, capsys):
    args = ["demo", "--workdir", str(tmp_path), "--preset", "tiny", "--denoiser-steps", "2", "--purify-steps", "1",
            "--epochs", "1", "--no-clean-reference", "--proxy-images", "100", "--proxy-epochs", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    names = {"no defence (poisoned data)", "auto (the defence chosen on the trusted set)",
             "ECLIPSE, default recipe (purified + compensation)"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["accuracy"]) == names
    for name, accuracy in results["accuracy"].items():  # a share of the 500 test images, and what was printed
        assert abs(accuracy * 500 - round(accuracy * 500)) < 1e-9, (name, accuracy)
        assert f"{name:<50} {accuracy:6.1%}" in out
    # the selection table was printed, and the chosen recipe is the one the report wrote
    table = (tmp_path / "auto" / "selection.md").read_text()
    assert table.splitlines()[0] in out and "| none |" in table.replace("**", "")
    written = json.loads((tmp_path / "auto" / "recipe.json").read_text())
    assert all(written["recipe"][k] == v for k, v in results["chosen"].items())
    assert (tmp_path / "purified.beton").exists() and (tmp_path / "preview.png").exists()
