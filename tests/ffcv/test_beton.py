"""Beton writer/reader: exact round trip, atomic output, watchdog, FFCV CIFAR-example compatibility."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.storage import beton as beton_module
from eclipse_loader.storage.beton import BetonWriteError, read_beton, read_manifest, write_beton

from ..conftest import requires_ffcv

pytestmark = requires_ffcv


def test_round_trip_is_pixel_exact_and_leaves_no_temporary(tmp_path, cifar_small):
    path = write_beton(tmp_path / "sub" / "d.beton", cifar_small, progress=False, metadata={"note": "x"})
    back = read_beton(path)
    assert np.array_equal(back.images, cifar_small.images)
    assert np.array_equal(back.labels, cifar_small.labels)
    assert sorted(p.name for p in path.parent.iterdir()) == ["d.beton", "d.beton.json"]
    manifest = read_manifest(path)
    assert manifest["num_samples"] == 600 and manifest["metadata"] == {"note": "x"}
    assert sum(manifest["class_counts"]) == 600


def _failing_getitem(self, index):
    if index == 37:
        raise IndexError("simulated encoder failure")
    return self.images[index], int(self.labels[index])


def test_a_stalled_ffcv_writer_is_killed_and_nothing_is_left(tmp_path, cifar_small, monkeypatch):
    monkeypatch.setattr(beton_module._CountingDataset, "__getitem__", _failing_getitem)
    out = tmp_path / "stall.beton"
    with pytest.raises(BetonWriteError, match="no progress"):
        write_beton(out, cifar_small, stall_timeout_s=3, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cifar_example_pipelines_read_our_beton_on_cpu(small_beton):
    """The loaders of FFCV's examples/cifar/train_cifar.py, with cuda:0 replaced by cpu."""
    import torchvision
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Convert, Cutout, RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor, ToTorchImage

    mean, std = [125.307, 122.961, 113.8575], [51.5865, 50.847, 51.255]
    device = torch.device("cpu")
    seen = {}
    for name in ("train", "test"):
        label_pipeline = [IntDecoder(), ToTensor(), ToDevice(device), Squeeze()]
        image_pipeline = [SimpleRGBImageDecoder()]
        if name == "train":
            image_pipeline += [RandomHorizontalFlip(), RandomTranslate(padding=2, fill=tuple(map(int, mean))), Cutout(4, tuple(map(int, mean)))]
        image_pipeline += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(), Convert(torch.float16),
                           torchvision.transforms.Normalize(mean, std)]
        loader = Loader(str(small_beton), batch_size=128, num_workers=2,
                        order=OrderOption.RANDOM if name == "train" else OrderOption.SEQUENTIAL,
                        drop_last=(name == "train"), pipelines={"image": image_pipeline, "label": label_pipeline})
        batches = [(ims, labs) for ims, labs in loader]
        seen[name] = batches
    ims, labs = seen["train"][0]
    assert ims.shape == (128, 3, 32, 32) and ims.dtype == torch.float16 and labs.dtype == torch.int64
    assert sum(len(l) for _, l in seen["train"]) == 512  # drop_last
    test_labels = torch.cat([l for _, l in seen["test"]])
    assert len(test_labels) == 600 and int(test_labels.max()) <= 9
