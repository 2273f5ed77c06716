"""Defence selection end to end on synthetic data where the poison is trivially detectable (tests/core/select_data.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from eclipse_loader.cli import main
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.recipes import load_recipe
from eclipse_loader.select import run as select_run
from eclipse_loader.select.candidates import Candidate, default_candidates
from eclipse_loader.select.proxy import ProxySettings
from eclipse_loader.select.report import write_report
from eclipse_loader.select.run import CACHE_NAME, select_defense

from .select_data import chroma_poison, stripes

PROXY = ProxySettings(images=400, epochs=8, width=8, batch_size=32)
CANDIDATES = [Candidate(), Candidate(grayscale=True), Candidate(jpeg=10), Candidate(augment="rsk-ff")]


@pytest.fixture(scope="module")
def clean_train() -> LabelledImages:
    return stripes(400, seed=1)


@pytest.fixture(scope="module")
def trusted() -> LabelledImages:
    return stripes(200, seed=2)


@pytest.fixture(scope="module")
def poisoned_selection(clean_train, trusted, tmp_path_factory):
    out = tmp_path_factory.mktemp("selection")
    return select_defense(chroma_poison(clean_train), trusted, None, out, candidates=CANDIDATES, proxy=PROXY, seed=0), out


def test_picks_grayscale_against_a_colour_shortcut(poisoned_selection):
    selection, _ = poisoned_selection
    assert selection.result("none").proxy_train_accuracy > 0.95  # the proxy fits the poison...
    assert selection.result("none").accuracy < 0.4  # ... and learns the colour, not the stripes
    assert selection.result("grayscale").accuracy > 0.9
    assert selection.chosen.name == "grayscale"
    low, high = selection.result("grayscale").interval
    assert low < selection.result("grayscale").accuracy <= high + 1e-9


def test_picks_none_on_clean_data(clean_train, trusted):
    selection = select_defense(clean_train, trusted, None, None, candidates=CANDIDATES, proxy=PROXY, seed=0)
    assert selection.result("none").accuracy > 0.9
    assert selection.chosen.name == "none" and "noise" in selection.reason


def test_selection_is_deterministic_given_the_seed(clean_train, trusted, poisoned_selection):
    selection, _ = poisoned_selection
    again = select_defense(chroma_poison(clean_train), trusted, None, None, candidates=CANDIDATES[:2], proxy=PROXY,
                           seed=0, noise_seeds=0, try_trusted_mix=False)
    for name in ("none", "grayscale"):
        np.testing.assert_array_equal(again.result(name).correct, selection.result(name).correct)


def test_resume_recomputes_nothing(clean_train, trusted, poisoned_selection, monkeypatch):
    selection, out = poisoned_selection
    assert (out / CACHE_NAME).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("a cached candidate was trained again")

    monkeypatch.setattr(select_run, "train_proxy", fail)
    again = select_defense(chroma_poison(clean_train), trusted, None, out, candidates=CANDIDATES, proxy=PROXY, seed=0)
    assert again.chosen == selection.chosen
    assert [r.accuracy for r in again.results] == [r.accuracy for r in selection.results]
    # a new candidate is the only thing computed
    calls = []
    monkeypatch.undo()
    real = select_run.train_proxy
    monkeypatch.setattr(select_run, "train_proxy", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    select_defense(chroma_poison(clean_train), trusted, None, out, candidates=CANDIDATES + [Candidate(jpeg=30)],
                   proxy=PROXY, seed=0)
    assert calls == ["jpeg30"]


def test_budget_shrinks_the_proxy_and_keeps_every_candidate(clean_train, trusted, tmp_path):
    big = ProxySettings(images=400, epochs=200, width=8, batch_size=32)
    selection = select_defense(chroma_poison(clean_train), trusted, None, tmp_path, candidates=CANDIDATES, proxy=big,
                               seed=0, budget_minutes=0.05, noise_seeds=0, try_trusted_mix=False)
    used = selection.plan.proxy
    assert used != big and used.epochs < big.epochs and selection.plan.to_dict()["shrunk"]
    assert [r.name for r in selection.results] == [c.name for c in CANDIDATES]
    paths = write_report(selection, tmp_path)
    assert "shrunk" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["proxy_plan"]["proxy"]["epochs"] == used.epochs


def test_report_files_and_recipe(poisoned_selection, tmp_path):
    selection, _ = poisoned_selection
    paths = write_report(selection, tmp_path, source={"source": "synthetic"})
    recipe = load_recipe(paths["recipe"])
    assert recipe.grayscale and not recipe.purification and recipe.jpeg_quality is None
    report = json.loads(paths["json"].read_text())
    assert report["chosen"] == "grayscale" and len(report["candidates"]) == len(CANDIDATES)
    assert all(len(c["interval"]) == 2 for c in report["candidates"])
    table = paths["markdown"].read_text()
    assert "**grayscale**" in table and "95% interval" in table
    pytest.importorskip("matplotlib")
    assert paths["plot"].stat().st_size > 1000


def test_purification_candidates_the_denoiser_cannot_serve_are_reported(clean_train, trusted):
    calls = []

    def fake_purify(images: np.ndarray, t_star: int) -> np.ndarray:
        calls.append(t_star)
        return images[:, ::-1].copy()  # any deterministic change

    fake_purify.t_max = 150  # type: ignore[attr-defined]
    cands = [Candidate(), Candidate(t_star=100), Candidate(t_star=400)]
    selection = select_defense(clean_train, trusted, fake_purify, None, candidates=cands,
                               proxy=ProxySettings(images=100, epochs=1, width=4, batch_size=50), noise_seeds=0,
                               try_trusted_mix=False)
    assert [r.name for r in selection.results] == ["none", "purify100", "purify400"]
    skipped = selection.result("purify400")
    assert skipped.status == "skipped" and "t <= 150" in skipped.reason and skipped.accuracy is None
    assert selection.result("purify100").status == "done" and set(calls) == {100}


def test_denoiser_images_and_mixing_pool(clean_train, trusted):
    selection = select_defense(clean_train, trusted, None, None, candidates=[Candidate()],
                               proxy=ProxySettings(images=100, epochs=1, width=4, batch_size=50), noise_seeds=0,
                               denoiser_images=trusted.images[:80], max_validation=100)
    assert selection.sizes["validation"] == 100 and selection.sizes["pool"] == 100
    assert selection.sizes["mixed_trusted"] == 25  # 100 pool images x 100 proxy / 400 training images
    assert selection.trusted_mix is not None and selection.trusted_mix.name == "trusted"


def _labelled(images: np.ndarray, labels: np.ndarray, num_classes: int = 4) -> LabelledImages:
    return LabelledImages(images, labels.astype(np.int64), num_classes)


def test_input_errors(clean_train, trusted):
    run = lambda tr: select_defense(clean_train, tr, None, None, candidates=[Candidate()], proxy=PROXY)  # noqa: E731
    with pytest.raises(ValueError, match="other classes"):
        run(_labelled(trusted.images, trusted.labels, 5))
    with pytest.raises(ValueError, match="image size"):
        run(stripes(200, seed=2, size=12))
    overlapping = _labelled(np.concatenate([trusted.images, clean_train.images[:3]]),
                            np.concatenate([trusted.labels, clean_train.labels[:3]]))
    with pytest.raises(ValueError, match="3 of 203 trusted images also appear in the training data"):
        run(overlapping)
    with pytest.raises(ValueError, match="too few trusted images per class"):
        run(trusted.subset(np.arange(20)))  # 5 per class < 10
    with pytest.raises(ValueError, match="too few trusted images per class"):
        select_defense(clean_train, trusted, None, None, candidates=[Candidate()], proxy=PROXY,
                       denoiser_images=trusted.images)  # all seen by the denoiser


def _npz(path, data: LabelledImages):
    np.savez(path, images=data.images, labels=data.labels)
    return str(path)


def test_tune_command(clean_train, trusted, tmp_path, capsys):
    train_npz = _npz(tmp_path / "train.npz", chroma_poison(clean_train))
    trusted_npz = _npz(tmp_path / "trusted.npz", trusted)
    out = tmp_path / "tuned"
    args = ["tune", train_npz, trusted_npz, "none", str(out), "--proxy-images", "100", "--proxy-epochs", "1",
            "--proxy-width", "4", "--proxy-batch-size", "50", "--no-progress", "--threads", "1"]
    assert main(args) == 0
    assert (out / "recipe.json").is_file() and (out / "selection.md").is_file()
    report = json.loads((out / "selection.json").read_text())
    assert len(report["candidates"]) == len(default_candidates(purification=False)) == 13  # all without purification
    load_recipe(out / "recipe.json")
    capsys.readouterr()
    assert main(["tune", train_npz, train_npz, "none", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "also appear in the training data" in err[0]


def test_tune_command_with_a_denoiser_keeps_its_images_out_of_validation(clean_train, trusted, tmp_path, capsys):
    import torch

    from eclipse_loader.denoiser.io import save_denoiser
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet
    from eclipse_loader.select.denoiser_images import denoiser_training_images

    train_npz = _npz(tmp_path / "train.npz", clean_train)
    trusted_npz = _npz(tmp_path / "trusted.npz", trusted)
    torch.manual_seed(0)
    seen = list(range(0, 200, 5))  # 40 trusted images the denoiser "trained on", 10 per class
    save_denoiser(build_unet("tiny"), build_scheduler(), tmp_path / "dn",
                  {"t_max": 9, "source": f"npz:{trusted_npz}", "sparse_indices": seen})
    images, how = denoiser_training_images(tmp_path / "dn")
    np.testing.assert_array_equal(images, trusted.images[seen])
    out = tmp_path / "tuned"
    assert main(["tune", train_npz, trusted_npz, str(tmp_path / "dn"), str(out), "--t-stars", "5", "--purify-steps",
                 "1", "--proxy-images", "100", "--proxy-epochs", "1", "--proxy-width", "4", "--proxy-batch-size",
                 "50", "--no-progress", "--threads", "1"]) == 0
    assert "validation excludes 40 denoiser training images" in capsys.readouterr().out
    report = json.loads((out / "selection.json").read_text())
    assert report["sizes"]["validation"] == 160 and report["sizes"]["denoiser_images"] == 40  # 40 unseen per class
    status = {c["name"]: c["status"] for c in report["candidates"]}
    assert status["purify5"] == status["repair+purify5"] == "done"
    assert status["purify100+comp-paper"] == "skipped"  # t*=100 needs t <= 99; the denoiser has t <= 9
    assert load_recipe(out / "recipe.json").purify_steps in (None, 1)


def test_training_noise_raises_the_margin_over_none_but_not_the_tie_band(clean_train, trusted, monkeypatch):
    """The proxy's seed noise guards "beats none"; the tie band stays ``tie_points``, so a lighter candidate
    several points below the best cannot win a tie just because the proxy is noisy."""
    import dataclasses

    seen = {}
    choose, run_candidate = select_run.choose, select_run._run_candidate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return choose(*args, **kwargs)

    def noisy(candidate, *args):  # `none` retrained with the first other seed scores 5 points lower
        result = run_candidate(candidate, *args)
        return dataclasses.replace(result, accuracy=result.accuracy - 0.05) if args[-1] == 1 else result

    monkeypatch.setattr(select_run, "choose", spy)
    monkeypatch.setattr(select_run, "_run_candidate", noisy)
    selection = select_defense(chroma_poison(clean_train), trusted, None, None, candidates=CANDIDATES[:2],
                               proxy=PROXY, seed=0, noise_seeds=1, try_trusted_mix=False, tie_points=0.01)
    assert selection.seed_noise == pytest.approx(0.05)
    assert seen["min_gain"] == pytest.approx(0.05) and seen["tie_points"] == 0.01
