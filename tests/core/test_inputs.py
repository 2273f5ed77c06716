"""Bad inputs give a clear error naming the problem, and leave no output file behind."""
from __future__ import annotations

import numpy as np
import pytest

from eclipse_loader.cli import main
from eclipse_loader.data.images import InvalidInputError, as_labelled_images
from eclipse_loader.data.sources import from_npz, from_torchvision, load_source

from ..conftest import requires_ffcv


def _write_npz(tmp_path, images, labels, name="data.npz"):
    path = tmp_path / name
    np.savez(path, images=images, labels=labels)
    return path


BAD_INPUTS = {
    "wrong dtype": (lambda x, y: (x.astype(np.float32) / 255, y), "must be uint8"),
    "channels first": (lambda x, y: (x.transpose(0, 3, 1, 2).copy(), y), "channels-first"),
    "wrong rank": (lambda x, y: (x.reshape(len(x), -1), y), "dimensions"),
    "one channel": (lambda x, y: (x[..., :1].copy(), y), "single-channel"),
    "label out of range": (lambda x, y: (x, np.where(np.arange(len(y)) == 7, 10, y)), "index 7 is 10"),
    "negative label": (lambda x, y: (x, np.where(np.arange(len(y)) == 3, -1, y)), "index 3 is -1"),
    "mismatched lengths": (lambda x, y: (x, y[:-1]), "lengths must match"),
}


@requires_ffcv
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_npz_is_refused_by_the_cli_and_nothing_is_written(case, cifar, tmp_path, capsys):
    make, message = BAD_INPUTS[case]
    images, labels = make(cifar["train_x"][:20], cifar["train_y"][:20].astype(np.int64))
    source = _write_npz(tmp_path, images, labels)
    out = tmp_path / "out" / "data.beton"
    args = ["write-beton", f"npz:{source}", str(out), "--num-classes", "10"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("out/*"))


def test_label_range_is_checked_against_num_classes(cifar):
    with pytest.raises(InvalidInputError, match="index 2 is 9, outside \\[0, 5\\)"):
        as_labelled_images(cifar["train_x"][:4], np.array([0, 1, 9, 2]), num_classes=5)


def test_grayscale_is_converted_only_when_asked(cifar):
    gray = cifar["train_x"][:5, :, :, 0]
    with pytest.raises(InvalidInputError, match="grayscale='convert'"):
        as_labelled_images(gray, np.zeros(5))
    data = as_labelled_images(gray, np.zeros(5), grayscale="convert")
    assert data.images.shape == (5, 32, 32, 3)
    assert (data.images[..., 1] == gray).all() and (data.images[..., 2] == gray).all()


def test_npz_keys_are_guessed_or_named(cifar, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, pix=cifar["train_x"][:8], cls=cifar["train_y"][:8])
    with pytest.raises(InvalidInputError, match="name the image and label arrays"):
        from_npz(path)
    data = load_source(f"npz:{path}:pix:cls")
    assert len(data) == 8 and (data.images == cifar["train_x"][:8]).all()


def _image_folder(tmp_path, cifar, n=6):
    import PIL.Image

    root = tmp_path / "folder"
    for i in range(n):
        cls_dir = root / f"class_{int(cifar['train_y'][i]) % 2}"
        cls_dir.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(cifar["train_x"][i]).save(cls_dir / f"img_{i}.png")
    return root


def test_image_folder_round_trip(tmp_path, cifar):
    from torchvision.datasets import ImageFolder

    root = _image_folder(tmp_path, cifar)
    data = from_torchvision(ImageFolder(root))
    assert data.images.shape == (6, 32, 32, 3) and data.num_classes == 2
    originals = {cifar["train_x"][i].tobytes() for i in range(6)}
    assert {img.tobytes() for img in data.images} == originals


def test_image_folder_pixels_live_in_an_unnamed_temporary_file(tmp_path, cifar, monkeypatch):
    """A decoded folder is mapped from a file, not held in the process's memory, and leaves no file behind."""
    import tempfile

    from torchvision.datasets import ImageFolder

    root = _image_folder(tmp_path, cifar)
    spill = tmp_path / "tmpdir"
    spill.mkdir()
    monkeypatch.setenv("TMPDIR", str(spill))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
    data = from_torchvision(ImageFolder(root))
    assert isinstance(data.images.base, np.memmap) or isinstance(data.images, np.memmap)
    assert list(spill.iterdir()) == []
    in_memory = np.stack([_rgb_pixels(path) for path, _ in ImageFolder(root).samples])
    np.testing.assert_array_equal(np.asarray(data.images), in_memory)


def test_imagefolder_source_lists_what_torchvision_lists_in_a_compact_index(tmp_path, cifar):
    """`imagefolder:PATH` reads the files, order, labels and pixels of ``ImageFolder(PATH)`` (nested
    sub-folders, upper-case extensions, non-image files skipped), from a numpy index, not a tuple per file."""
    import PIL.Image
    from torchvision.datasets import ImageFolder

    from eclipse_loader.data.folder_index import FolderIndex

    root = _image_folder(tmp_path, cifar, n=12)
    (root / "class_1" / "deeper").mkdir()
    PIL.Image.fromarray(cifar["train_x"][20]).save(root / "class_1" / "deeper" / "b.PNG")
    (root / "class_0" / "notes.txt").write_text("not an image")
    (root / "class_2").mkdir()
    PIL.Image.fromarray(cifar["train_x"][21]).save(root / "class_2" / "z.jpg")
    reference = ImageFolder(root)
    index = FolderIndex.scan(root)
    assert [index.path(i) for i in range(len(index))] == [path for path, _ in reference.samples]
    assert index.labels.tolist() == reference.targets and index.classes == tuple(reference.classes)
    assert index.relative_paths.dtype.kind == "S" and index.labels.dtype == np.int64
    data, expected = load_source(f"imagefolder:{root}"), from_torchvision(reference)
    assert data.num_classes == 3 and data.fingerprint() == expected.fingerprint()
    (root / "class_3").mkdir()
    with pytest.raises(FileNotFoundError, match="class_3"):
        load_source(f"imagefolder:{root}")


def test_source_paths_may_start_with_a_tilde(tmp_path, cifar, monkeypatch):
    """``imagefolder:~/x`` and ``npz:~/x.npz``: the shell leaves a ``~`` after ``kind:`` alone, so the loader expands it."""
    root = _image_folder(tmp_path, cifar, n=4)
    np.savez(tmp_path / "small.npz", images=cifar["train_x"][:4], labels=cifar["train_y"][:4])
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_source(f"imagefolder:~/{root.name}")) == len(load_source(f"imagefolder:{root}"))
    assert len(load_source("npz:~/small.npz")) == 4 and len(load_source("~/small.npz")) == 4
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        load_source("imagefolder:~/missing")


def _rgb_pixels(path) -> np.ndarray:
    import PIL.Image

    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@requires_ffcv
def test_corrupt_image_in_folder_is_named_and_nothing_is_written(tmp_path, cifar, capsys):
    root = _image_folder(tmp_path, cifar)
    bad = sorted((root / "class_0").iterdir())[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out.beton"
    assert main(["write-beton", f"imagefolder:{root}", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot read sample" in err and bad.name in err
    assert not out.exists() and not list(tmp_path.glob(".out.beton*"))


def test_mixed_sizes_need_resize(tmp_path, cifar):
    import PIL.Image
    from torchvision.datasets import ImageFolder

    root = _image_folder(tmp_path, cifar)
    odd = sorted((root / "class_1").iterdir())[0]
    PIL.Image.fromarray(cifar["train_x"][0]).resize((40, 36)).save(odd)
    with pytest.raises(InvalidInputError, match="has size \\(36, 40\\).*resize"):
        from_torchvision(ImageFolder(root))
    assert from_torchvision(ImageFolder(root), resize=(32, 32)).images.shape == (6, 32, 32, 3)


def test_unknown_source_is_explained():
    with pytest.raises(ValueError, match="unknown data source 'ftp:x'"):
        load_source("ftp:x")


def test_torchvision_cifar_and_svhn_layouts(cifar):
    from torchvision.datasets import CIFAR10, SVHN

    cifar_ds = CIFAR10.__new__(CIFAR10)  # as after download: .data NHWC uint8, .targets list
    cifar_ds.data, cifar_ds.targets, cifar_ds.transform = cifar["train_x"][:12], list(cifar["train_y"][:12]), None
    cifar_ds.classes = [str(c) for c in range(10)]
    data = from_torchvision(cifar_ds)
    assert data.num_classes == 10 and np.array_equal(data.images, cifar["train_x"][:12])

    svhn_ds = SVHN.__new__(SVHN)  # SVHN keeps NCHW arrays and .labels
    svhn_ds.data, svhn_ds.labels, svhn_ds.transform = cifar["train_x"][:12].transpose(0, 3, 1, 2), cifar["train_y"][:12], None
    data = from_torchvision(svhn_ds)
    assert np.array_equal(data.images, cifar["train_x"][:12])


def test_lazy_image_folder_decodes_only_what_is_indexed_and_hashes_files_not_pixels(tmp_path, cifar, monkeypatch):
    """``lazy=True``: the same pixels as the eager folder source, decoded only where indexed; the fingerprint
    reads every file's bytes (and checks its header) without decoding any."""
    import PIL.Image

    from eclipse_loader.data import decode
    from eclipse_loader.data.folder_images import FolderImages
    from eclipse_loader.data.sources import from_image_folder

    root = _image_folder(tmp_path, cifar, n=10)
    eager, lazy = from_image_folder(root), from_image_folder(root, lazy=True)
    assert isinstance(lazy.images, FolderImages) and lazy.images.shape == eager.images.shape
    assert lazy.images.nbytes == eager.images.nbytes and lazy.num_classes == eager.num_classes
    opened = []
    original = decode.open_image
    monkeypatch.setattr(decode, "open_image", lambda path: opened.append(path) or original(path))
    np.testing.assert_array_equal(lazy.images[3:6], eager.images[3:6])
    np.testing.assert_array_equal(lazy.images[np.array([9, 0])], eager.images[[9, 0]])
    np.testing.assert_array_equal(lazy.images[-1], eager.images[-1])
    assert len(opened) == 3 + 2 + 1, "only the indexed files were decoded"
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    opened.clear()
    key = lazy.fingerprint()
    assert opened == [] and key == from_image_folder(root, lazy=True).fingerprint()
    np.testing.assert_array_equal(np.asarray(lazy.materialised().images), eager.images)
    changed = sorted((root / "class_1").iterdir())[0]
    PIL.Image.fromarray(cifar["train_x"][30]).save(changed)  # same size, other pixels
    assert from_image_folder(root, lazy=True).fingerprint() != key


def test_lazy_image_folder_refuses_a_bad_file_by_its_header_before_any_decode(tmp_path, cifar):
    """Another size or a grayscale file is named while the fingerprint streams the files (before any
    purification); damaged pixel data is named when its block is decoded."""
    import PIL.Image

    from eclipse_loader.data.sources import from_image_folder

    root = _image_folder(tmp_path, cifar, n=6)
    odd = sorted((root / "class_1").iterdir())[-1]
    PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(odd)
    with pytest.raises(InvalidInputError, match=f"{odd.name}.*has size \\(16, 16\\)"):
        from_image_folder(root, lazy=True).fingerprint()
    PIL.Image.fromarray(np.zeros((32, 32), np.uint8)).save(odd)
    with pytest.raises(InvalidInputError, match=f"{odd.name}.*grayscale"):
        from_image_folder(root, lazy=True).fingerprint()
    PIL.Image.fromarray(cifar["train_x"][0]).save(odd)
    odd.write_bytes(odd.read_bytes()[:60])  # the header survives, the pixel data does not
    data = from_image_folder(root, lazy=True)
    data.fingerprint()
    with pytest.raises(InvalidInputError, match=f"cannot read sample .*{odd.name}"):
        data.images[:]


def test_compressed_npz_is_inflated_into_a_disk_backed_array_not_memory(tmp_path, cifar):
    """``np.savez_compressed`` members cannot be mapped: they are inflated as a stream into an unnamed
    temporary file's mapping (the same pixels as numpy reads); a damaged member is one clear error."""
    images, labels = cifar["train_x"][:40], cifar["train_y"][:40]
    np.savez_compressed(tmp_path / "c.npz", images=images, labels=labels)
    data = from_npz(tmp_path / "c.npz")
    assert isinstance(data.images, np.memmap) or isinstance(data.images.base, np.memmap)
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    raw = (tmp_path / "c.npz").read_bytes()
    start = raw.index(b"images.npy") + 200  # inside the compressed pixels
    (tmp_path / "bad.npz").write_bytes(raw[:start] + bytes(64) + raw[start + 64:])
    with pytest.raises(InvalidInputError, match="bad.npz is not a readable .npz"):
        from_npz(tmp_path / "bad.npz")


def test_lazy_compressed_npz_is_inflated_where_read_without_a_disk_copy(tmp_path, cifar, monkeypatch):
    """With ``lazy`` (what purification uses) a compressed member stays in the archive: reads in any order, by
    integer, slice or index array, equal numpy's; the cache key equals the eager copy's; nothing goes to disk;
    a pickled copy (a DataLoader worker) reads the same pixels."""
    import pickle

    import eclipse_loader.data.sources as sources
    from eclipse_loader.data.inflated_npz_images import InflatedNpzImages

    images, labels = cifar["train_x"][:40], cifar["train_y"][:40]
    np.savez_compressed(tmp_path / "c.npz", images=images, labels=labels)
    eager = from_npz(tmp_path / "c.npz")
    monkeypatch.setattr(sources, "unpack_npz_member", lambda *a, **k: pytest.fail("inflated to disk"))
    lazy = load_source(f"npz:{tmp_path / 'c.npz'}", lazy=True)
    assert isinstance(lazy.images, InflatedNpzImages) and lazy.images.shape == images.shape
    np.testing.assert_array_equal(lazy.images[30:35], images[30:35])
    np.testing.assert_array_equal(lazy.images[3], images[3])  # behind the stream: it starts again
    np.testing.assert_array_equal(lazy.images[-1], images[-1])
    np.testing.assert_array_equal(lazy.images[1:20:3], images[1:20:3])
    picked = np.array([9, 2, 3, 4, 2, 39, 0])
    np.testing.assert_array_equal(lazy.images[picked], images[picked])
    np.testing.assert_array_equal(np.asarray(lazy.images), images)
    np.testing.assert_array_equal(lazy.labels, labels)
    assert lazy.fingerprint() == eager.fingerprint()
    copy = pickle.loads(pickle.dumps(lazy.images))
    np.testing.assert_array_equal(copy[10:12], images[10:12])
    with pytest.raises(IndexError):
        lazy.images[40]
    lazy.images.close()


def test_lazy_compressed_npz_names_the_file_when_its_stream_is_damaged(tmp_path, cifar):
    """A damaged member fails the streamed hash (the cache key, before purification) and a read of its block,
    each with one error naming the file."""
    np.savez_compressed(tmp_path / "c.npz", images=cifar["train_x"][:40], labels=cifar["train_y"][:40])
    raw = (tmp_path / "c.npz").read_bytes()
    start = raw.index(b"images.npy") + 2000  # well inside the compressed pixels, past the .npy header
    (tmp_path / "bad.npz").write_bytes(raw[:start] + bytes(64) + raw[start + 64:])
    data = from_npz(tmp_path / "bad.npz", lazy=True)
    with pytest.raises(InvalidInputError, match="bad.npz: cannot inflate 'images'"):
        data.fingerprint()
    with pytest.raises(InvalidInputError, match="bad.npz: cannot inflate images"):
        data.images[:]
