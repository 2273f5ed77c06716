"""`purify --recipe NAME|FILE|auto`: a tuned recipe file is applied as the selection measured it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.cli import main
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser import build_scheduler, build_unet, save_denoiser
from eclipse_loader.recipes import DEFAULT_RECIPE, save_recipe


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    torch.manual_seed(0)
    den = save_denoiser(build_unet("tiny"), build_scheduler(), root / "den")
    data = load_embedded("test")
    np.savez(root / "in.npz", images=data.images[:8], labels=data.labels[:8])
    return root, den


def test_recipe_file_without_purification_writes_its_offline_steps(setup, tmp_path, capsys):
    root, den = setup
    recipe = save_recipe(DEFAULT_RECIPE.with_overrides(purification=False, grayscale=True),
                         tmp_path / "recipe.json")
    assert main(["purify", f"npz:{root / 'in.npz'}", str(den), str(tmp_path / "out.npz"), "--recipe", str(recipe),
                 "--no-progress"]) == 0
    with np.load(tmp_path / "out.npz") as archive:
        images = archive["images"]
    assert images.shape == (8, 32, 32, 3)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()  # grayscale
    assert "does not purify" in capsys.readouterr().out


@pytest.mark.parametrize("purify", [False, True], ids=["offline-only", "then-purified"])
def test_recipe_file_with_the_chroma_swap_gives_the_selections_pixels(setup, tmp_path, purify):
    """The swap draws donors over the whole source, also where the pass reads it block by block."""
    from eclipse_loader.data.images import LabelledImages
    from eclipse_loader.select.offline import recipe_before_purification

    root, den = setup
    recipe = DEFAULT_RECIPE.with_overrides(purification=purify, chroma_swap=True, repair_threshold=48, t_star=20,
                                           purify_steps=1, denoiser_t_max=19)
    path = save_recipe(recipe, tmp_path / "recipe.json")
    assert main(["purify", f"npz:{root / 'in.npz'}", str(den), str(tmp_path / "out.npz"), "--recipe", str(path),
                 "--no-progress", "--chunk-size", "3"]) == 0
    with np.load(root / "in.npz") as src, np.load(tmp_path / "out.npz") as out:
        expected = recipe_before_purification(recipe, LabelledImages(src["images"], src["labels"], 10)).images
        if purify:
            assert (out["images"] != expected).mean() > 0.1
        else:
            np.testing.assert_array_equal(out["images"], expected)


def test_recipe_file_with_purification_runs_the_purifier(setup, tmp_path):
    root, den = setup
    recipe = save_recipe(DEFAULT_RECIPE.with_overrides(t_star=20, purify_steps=1, denoiser_t_max=19),
                         tmp_path / "recipe.json")
    assert main(["purify", f"npz:{root / 'in.npz'}", str(den), str(tmp_path / "out.npz"), "--recipe", str(recipe),
                 "--no-progress"]) == 0
    with np.load(root / "in.npz") as src, np.load(tmp_path / "out.npz") as out:
        assert (src["images"] != out["images"]).mean() > 0.1


@pytest.mark.parametrize("args, message", [
    (["--recipe", "auto"], "--recipe auto needs --trusted"),
    (["--trusted", "embedded:trusted"], "only with --recipe auto"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
])
def test_recipe_errors_are_one_line(setup, tmp_path, capsys, args, message):
    root, den = setup
    code = main(["purify", f"npz:{root / 'in.npz'}", str(den), str(tmp_path / "out.npz"), *args, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_damaged_recipe_file_is_one_line(setup, tmp_path, capsys):
    root, den = setup
    bad = tmp_path / "recipe.json"
    bad.write_text("{ nope")
    code = main(["purify", f"npz:{root / 'in.npz'}", str(den), str(tmp_path / "out.npz"), "--recipe", str(bad)])
    assert code == 2 and str(bad) in capsys.readouterr().err and list(tmp_path.iterdir()) == [bad]


@pytest.mark.slow
def test_recipe_auto_selects_on_the_lazy_source_as_on_its_pixels(setup, tmp_path, monkeypatch):
    """``--recipe auto`` hands the selection the image folder as read on demand (no whole decoded copy
    first) and the selection measures what `tune` measures on the same pixels held in memory."""
    import json

    import PIL.Image

    from eclipse_loader.data.images import is_lazy
    from eclipse_loader.data.sources import load_source
    from eclipse_loader.select import api
    from eclipse_loader.select.proxy import ProxySettings

    root, den = setup
    train = load_embedded("train")
    for i in np.concatenate([np.flatnonzero(train.labels == c)[:20] for c in range(10)]):
        (tmp_path / "folder" / f"c{train.labels[i]}").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(train.images[i]).save(tmp_path / "folder" / f"c{train.labels[i]}" / f"{i}.png")
    small = dict(proxy=ProxySettings(images=50, epochs=1, width=4, batch_size=25), t_stars=(20,), purify_steps=1)
    given, real_tune = [], api.tune
    monkeypatch.setattr(api, "tune", lambda data, *args, **kwargs: given.append(data) or real_tune(
        data, *args, **kwargs, **small))
    out = tmp_path / "out.npz"
    assert main(["purify", f"imagefolder:{tmp_path / 'folder'}", str(den), str(out), "--recipe", "auto",
                 "--trusted", "embedded:trusted", "--no-progress"]) == 0
    assert len(given) == 1 and is_lazy(given[0].images)
    eager = load_source(f"imagefolder:{tmp_path / 'folder'}")
    assert not is_lazy(eager.images)
    _, in_memory, _ = real_tune(eager, load_embedded("trusted"), den, tmp_path / "eager", seed=0, **small)
    lazy_report = json.loads((tmp_path / "out.npz.tune" / "selection.json").read_text())
    assert lazy_report["chosen"] == in_memory.chosen.name
    assert {r["name"]: r["accuracy"] for r in lazy_report["candidates"]} == {
        r.name: r.accuracy for r in in_memory.results}
    with np.load(out) as written:
        assert written["images"].shape == (200, 32, 32, 3)
