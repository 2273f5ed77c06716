"""Sources a higher layer owns (``.beton``: storage) reach `load_source` through a registry, so the
data layer imports nothing above it."""
from __future__ import annotations

import numpy as np
import pytest

from eclipse_loader.data import sources
from eclipse_loader.data.images import LabelledImages


def test_a_registered_kind_reads_path_kind_and_kind_path(monkeypatch):
    calls = []

    def reader(path, num_classes):
        calls.append((path, num_classes))
        return LabelledImages(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), num_classes or 2)

    monkeypatch.setitem(sources._READERS, "fake", reader)
    assert len(sources.load_source("a/b.fake", num_classes=3)) == 2
    assert sources.load_source("fake:c.bin", resize=(2, 2)).image_shape[:2] == (2, 2)
    assert calls == [("a/b.fake", 3), ("c.bin", None)]


def test_built_in_kinds_cannot_be_replaced():
    with pytest.raises(ValueError, match="kind must be a new source name"):
        sources.register_source_reader("npz", lambda path, num_classes: None)


def test_the_storage_layer_registers_the_beton_reader():
    from eclipse_loader.storage import sources as storage_sources
    from eclipse_loader.storage.reader import read_beton

    assert storage_sources is not None and sources._READERS["beton"] is read_beton


def test_without_the_storage_layer_a_beton_source_is_one_clear_error(monkeypatch):
    monkeypatch.delitem(sources._READERS, "beton", raising=False)
    with pytest.raises(ValueError, match="beton sources are read by eclipse_loader.storage"):
        sources.load_source("x.beton")


def test_the_public_load_source_is_the_one_with_betons_registered():
    import eclipse_loader
    from eclipse_loader.storage import sources as storage_sources

    assert eclipse_loader.load_source is storage_sources.load_source is sources.load_source
    assert "beton" in sources._READERS
