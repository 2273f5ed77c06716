"""CompensateFFCV inside real FFCV loaders: redrawn every epoch without `set_epoch`, `set_epoch` as an
override, and its kernels (and FFCV's pipeline functions in `make_ffcv_loader`) compiled once per machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from eclipse_loader import CorruptionCompensation
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.data.images import LabelledImages

from ..conftest import requires_ffcv

pytestmark = requires_ffcv
N = 120


@pytest.fixture(scope="module")
def indexed_beton(tmp_path_factory):
    """A tiny beton whose label is the sample's index (so batches can be matched to the reference)."""
    from eclipse_loader.storage.beton import write_beton

    images = load_embedded("train").images[:N]
    path = write_beton(tmp_path_factory.mktemp("beton") / "indexed.beton",
                       LabelledImages(images, np.arange(N), N), progress=False)
    return path, images


def _own_loader(path, op, **kwargs):
    """What a user writes: a plain FFCV Loader with the op in the image pipeline, no set_epoch."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    return Loader(str(path), batch_size=32, num_workers=2, order=kwargs.pop("order", OrderOption.RANDOM), seed=1,
                  drop_last=kwargs.pop("drop_last", False),
                  pipelines={"image": [SimpleRGBImageDecoder(), op, ToTensor()], "label": [IntDecoder(), ToTensor()]},
                  **kwargs)


def _epoch(loader) -> dict[int, np.ndarray]:
    out = {}
    for images, labels in loader:
        for image, label in zip(images.numpy(), labels.view(-1).tolist()):
            out[label] = image.copy()
    return out


def _expected(images: np.ndarray, indices: list[int], epoch: int) -> dict[int, np.ndarray]:
    ref = CorruptionCompensation(p_gray=0.4, sigma=0.05, seed=5)
    chw = torch.from_numpy(images[indices]).permute(0, 3, 1, 2)
    out = ref.compensate(chw, torch.tensor(indices), epoch=epoch).permute(0, 2, 3, 1).numpy()
    return dict(zip(indices, out))


def _assert_same(got: dict[int, np.ndarray], expected: dict[int, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    assert all(np.array_equal(got[i], expected[i]) for i in expected)


def test_own_loader_redraws_every_epoch_without_set_epoch(indexed_beton):
    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    path, images = indexed_beton
    op = CompensateFFCV(p_gray=0.4, sigma=0.05, seed=5)
    loader = _own_loader(path, op)
    epochs = [_epoch(loader) for _ in range(3)]
    for e, got in enumerate(epochs):  # the n-th pass over the data draws epoch n's corruption
        _assert_same(got, _expected(images, list(range(N)), e))
    assert np.mean([np.array_equal(epochs[0][i], epochs[1][i]) for i in range(N)]) < 0.05
    assert op.epoch is None and np.array_equal(op.pass_counts(), np.full(N, 3))

    op.set_epoch(1)  # explicit override: epoch 1 again, whatever the count
    _assert_same(_epoch(loader), _expected(images, list(range(N)), 1))
    op.set_epoch(None)  # back to counting: 4 passes so far
    _assert_same(_epoch(loader), _expected(images, list(range(N)), 4))


def test_own_loader_with_drop_last_still_never_repeats_a_draw(indexed_beton):
    """FFCV's default drop_last=True leaves out a different tail each epoch: those samples' counts lag
    behind the epoch number, but no sample ever gets the same draw twice."""
    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    path, images = indexed_beton
    op = CompensateFFCV(p_gray=0.4, sigma=0.05, seed=5)
    loader = _own_loader(path, op, drop_last=True)
    seen: dict[int, list[np.ndarray]] = {}
    for _ in range(3):
        for index, image in _epoch(loader).items():
            seen.setdefault(index, []).append(image)
    counts = op.pass_counts()
    assert counts.sum() == 3 * 96 and counts.max() == 3
    for index, draws in seen.items():
        assert len(draws) == counts[index]
        assert all(np.array_equal(d, e) for d, e in zip(draws, _expected_one(images, index, len(draws))))


def _expected_one(images, index, passes):
    return [_expected(images, [index], e)[index] for e in range(passes)]


def test_own_loader_on_a_subset_counts_each_sample_once_per_epoch(indexed_beton):
    from ffcv.loader import OrderOption

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    path, images = indexed_beton
    subset = list(range(0, N, 3))
    loader = _own_loader(path, CompensateFFCV(p_gray=0.4, sigma=0.05, seed=5), indices=np.array(subset),
                         order=OrderOption.SEQUENTIAL)
    for e in range(2):
        _assert_same(_epoch(loader), _expected(images, subset, e))


def test_ranks_count_in_disjoint_epoch_ranges(indexed_beton, monkeypatch):
    """A sample moves between ranks under FFCV's distributed=True: rank r's passes are epochs r * 2**20 + n."""
    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV
    from eclipse_loader.compensation.numba_kernels import RANK_STRIDE

    path, images = indexed_beton
    monkeypatch.setenv("RANK", "3")
    loader = _own_loader(path, CompensateFFCV(p_gray=0.4, sigma=0.05, seed=5))
    for n in range(2):
        _assert_same(_epoch(loader), _expected(images, list(range(N)), 3 * RANK_STRIDE + n))


def test_outside_a_loader_without_set_epoch_is_refused():
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    op = CompensateFFCV(seed=1)  # never seen by a Loader: it cannot know the dataset's size
    op.declare_state_and_memory(State(True, torch.device("cpu"), (8, 8, 3), np.dtype("u1")))
    fn = Compiler.compile(op.generate_code())
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="set_epoch"):
        fn(images, np.empty_like(images), np.arange(4, dtype=np.uint64))
    op.set_epoch(0)
    assert fn(images, np.empty_like(images), np.arange(4, dtype=np.uint64)).shape == images.shape
    with pytest.raises(ValueError, match="epoch"):
        op.set_epoch(-2)


_PROBE = textwrap.dedent("""
    import json, sys, time
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader
    from eclipse_loader.compensation import numba_kernels
    from eclipse_loader.loading.config import AugmentConfig
    start = time.perf_counter()
    loader = make_ffcv_loader(sys.argv[1], 32, augment=AugmentConfig(), shuffle=True, num_workers=2)
    next(iter(loader))
    seconds = time.perf_counter() - start
    loader.close()
    stats = {name: dict(getattr(numba_kernels, name).stats.cache_hits) for name in ("compensate_batch",)}
    misses = {name: dict(getattr(numba_kernels, name).stats.cache_misses) for name in ("compensate_batch",)}
    print(json.dumps({"seconds": seconds, "hits": sum(sum(v.values()) for v in stats.values()),
                      "misses": sum(sum(v.values()) for v in misses.values())}))
""")


@pytest.mark.slow
def test_compilation_is_cached_across_processes(indexed_beton, tmp_path):
    """Item 19 of issue 14: the second process loads the compiled kernels instead of compiling them."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _PROBE, str(indexed_beton[0])], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0]["misses"] >= 1 and runs[0]["hits"] == 0  # compiled (and saved) in the first process
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0  # loaded in the second
    assert any((tmp_path / "numba-cache").rglob("*translate*.nbi"))  # FFCV's own ops are cached too
    assert any((tmp_path / "numba-cache").rglob("*RawRGBImageDecoder*decode*.nbi"))  # and the decoder
    assert runs[1]["seconds"] < runs[0]["seconds"] / 2


@pytest.mark.parametrize("write_mode", ["raw", "jpg"])
def test_raw_decoder_gives_ffcv_decoders_output(tmp_path, write_mode):
    """The cached raw decoder copies exactly what FFCV's decoder produces; JPEG betons use FFCV's."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    from eclipse_loader.adapters import ffcv_raw_decoder
    from eclipse_loader.storage.beton import write_beton

    assert ffcv_raw_decoder._RAW == IMAGE_MODES["raw"]
    data = load_embedded("train")
    path = write_beton(tmp_path / f"{write_mode}.beton", LabelledImages(data.images[:70], data.labels[:70], 10),
                       write_mode=write_mode, progress=False)

    def images(decoder):
        loader = Loader(str(path), batch_size=32, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                        pipelines={"image": [decoder, ToTensor()], "label": [IntDecoder(), ToTensor()]})
        return torch.cat([x for x, _ in loader])

    ours, theirs = images(ffcv_raw_decoder.RawRGBImageDecoder()), images(SimpleRGBImageDecoder())
    assert ours.shape == (70, 32, 32, 3) and torch.equal(ours, theirs)
    if write_mode == "raw":
        assert torch.equal(ours, torch.from_numpy(data.images[:70]))
