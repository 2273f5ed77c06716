"""Shared fixtures: the embedded CIFAR-10 sample (shipped with the package) and tiny betons.

Tests never read the project's shared data folder: a fresh clone has none beside it. ``cifar`` is the embedded sample in
the layout of the full archive: ``train_x`` = its 2,000 train + 500 trusted images, ``test_x`` = its
500 test images (uint8 NHWC, labels int64).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from eclipse_loader.data.images import LabelledImages, as_labelled_images

def _ffcv_importable() -> bool:
    from eclipse_loader.adapters.lightning_datamodule import ffcv_available

    return ffcv_available()


requires_ffcv = pytest.mark.ffcv
"""Marks a test (or a ``pytest.param``) as needing ffcv: skipped where ffcv cannot be imported, unless
``ECLIPSE_REQUIRE_FFCV=1`` (``./dev.sh test``) makes that a failure; ``-m "not ffcv"`` deselects it."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Turn the ``ffcv`` and ``gpu`` markers into skips where ffcv or CUDA is missing."""
    skip_ffcv = pytest.mark.skip(reason="ffcv not importable (set ECLIPSE_REQUIRE_FFCV=1 to make this a failure)")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    ffcv_missing = gpu_missing = None  # decided on first use: importing ffcv or torch.cuda takes seconds
    for item in items:
        if item.get_closest_marker("ffcv") is not None:
            if ffcv_missing is None:
                ffcv_missing = not _ffcv_importable() and os.environ.get("ECLIPSE_REQUIRE_FFCV") != "1"
            if ffcv_missing:
                item.add_marker(skip_ffcv)
        if item.get_closest_marker("gpu") is not None:
            if gpu_missing is None:
                import torch

                gpu_missing = not torch.cuda.is_available()
            if gpu_missing:
                item.add_marker(skip_gpu)


def embedded_cifar() -> dict[str, np.ndarray]:
    """The embedded sample as arrays: ``train_x/train_y`` (2,500), ``test_x/test_y`` (500)."""
    from eclipse_loader.data.embedded import load_embedded

    train, trusted, test = (load_embedded(split) for split in ("train", "trusted", "test"))
    return {"train_x": np.concatenate([train.images, trusted.images]),
            "train_y": np.concatenate([train.labels, trusted.labels]),
            "test_x": test.images, "test_y": test.labels}


@pytest.fixture(scope="session")
def cifar() -> dict[str, np.ndarray]:
    return embedded_cifar()


@pytest.fixture(scope="session")
def cifar_small(cifar) -> LabelledImages:
    """The first 600 CIFAR-10 training images."""
    return as_labelled_images(cifar["train_x"][:600], cifar["train_y"][:600], num_classes=10)


@pytest.fixture(scope="session")
def cifar_test_small(cifar) -> LabelledImages:
    return as_labelled_images(cifar["test_x"][:300], cifar["test_y"][:300], num_classes=10)


@pytest.fixture(scope="session")
def small_beton(tmp_path_factory, cifar_small) -> Path:
    from eclipse_loader.storage.beton import write_beton

    return write_beton(tmp_path_factory.mktemp("beton") / "train.beton", cifar_small, progress=False)


@pytest.fixture
def thread_count():
    return threading.active_count
