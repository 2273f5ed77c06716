"""Carry full CIFAR-10 (and diffusers) to the lent GPU machine, which reaches no network.

The device tool moves at most 64 MiB per call, and CIFAR-10 is 184 MB of pixels; lossless coding
(per-channel planes, horizontal then vertical differences, xz) brings it to about 122 MB, so the
images travel in parts, one per call, into an ignored folder that stays on the warm machine:

    python benchmarks/gpu_data.py pack --data ../shared/data/cifar10.npz --out .gpu --parts 3   # here, once
    python benchmarks/gpu_data.py unpack --parts .gpu --out .gpu/cifar10.npz                     # there

``pack`` also zips the installed diffusers package (pure Python; the GPU image has none) as
``.gpu/site.zip``. ``unpack`` checks every part's SHA-256 against ``manifest.json`` and refuses a
missing or damaged part by name.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np


def encode(images: np.ndarray) -> bytes:
    """uint8 NHWC -> xz of the planar (N, C, H, W) array after horizontal then vertical differences (mod 256)."""
    planes = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.int16)
    residual = np.diff(np.diff(planes, axis=-1, prepend=0), axis=-2, prepend=0).astype(np.uint8)
    return lzma.compress(residual.tobytes(), preset=6)


def decode(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `encode` for ``shape`` = (N, H, W, C)."""
    n, h, w, c = shape
    residual = np.frombuffer(lzma.decompress(blob), dtype=np.uint8).reshape(n, c, h, w)
    planes = np.cumsum(np.cumsum(residual, axis=-2, dtype=np.uint8), axis=-1, dtype=np.uint8)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(data: Path, out: Path, parts: int, count: Optional[int] = None) -> dict:
    """Write ``images-<k>.xz`` parts, ``labels.npz`` and ``manifest.json`` under ``out``."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    with np.load(data, allow_pickle=False) as z:
        arrays = {k: z[k][:count] if count else z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    images = np.concatenate([arrays["train_x"], arrays["test_x"]])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "labels.npz", train_y=arrays["train_y"], test_y=arrays["test_y"])
    manifest = {"train": len(arrays["train_x"]), "test": len(arrays["test_x"]), "image_shape": list(images.shape[1:]),
                "labels_sha256": _sha((out / "labels.npz").read_bytes()), "parts": []}
    for k, chunk in enumerate(np.array_split(np.arange(len(images)), parts)):
        blob = encode(images[chunk])
        (out / f"images-{k}.xz").write_bytes(blob)
        manifest["parts"].append({"file": f"images-{k}.xz", "start": int(chunk[0]), "count": len(chunk),
                                  "sha256": _sha(blob), "mib": round(len(blob) / 2**20, 1)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def unpack(parts: Path, out: Path) -> Path:
    """Rebuild the CIFAR-10 npz (train_x, train_y, test_x, test_y) from ``parts``; checks every hash."""
    manifest_path = parts / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: carry it with the last part")
    manifest = json.loads(manifest_path.read_text())
    labels_path = parts / "labels.npz"
    if not labels_path.is_file() or _sha(labels_path.read_bytes()) != manifest["labels_sha256"]:
        raise ValueError(f"{labels_path} is missing or damaged")
    total = manifest["train"] + manifest["test"]
    images = np.empty((total, *manifest["image_shape"]), dtype=np.uint8)
    for part in manifest["parts"]:
        path = parts / part["file"]
        if not path.is_file():
            raise FileNotFoundError(f"part {path} has not arrived (carry it in one of the calls)")
        blob = path.read_bytes()
        if _sha(blob) != part["sha256"]:
            raise ValueError(f"part {path} is damaged (SHA-256 differs from {manifest_path})")
        images[part["start"]:part["start"] + part["count"]] = decode(blob, (part["count"], *manifest["image_shape"]))
    with np.load(labels_path) as z:
        train_y, test_y = z["train_y"], z["test_y"]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, train_x=images[:manifest["train"]], train_y=train_y, test_x=images[manifest["train"]:], test_y=test_y)
    return out


def zip_package(name: str, out: Path) -> Path:
    """Zip an installed pure-Python package with its dist-info (no __pycache__), to unzip onto PYTHONPATH there."""
    import importlib
    import importlib.metadata as metadata

    root = Path(importlib.import_module(name).__file__).parent
    dist = metadata.distribution(name)
    info = Path(dist._path)  # type: ignore[attr-defined]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for base in (root, info):
            for path in base.rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts:
                    z.write(path, path.relative_to(base.parent))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--parts", type=int, default=3)
    p.add_argument("--count", type=int, default=None, help="only the first COUNT train and test images (tests)")
    p.add_argument("--no-site", action="store_true", help="skip zipping diffusers")
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, default=Path(".gpu"))
    u.add_argument("--out", type=Path, default=Path(".gpu/cifar10.npz"))
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        if not args.data.is_file():
            raise SystemExit(f"CIFAR-10 not found at {args.data}")
        manifest = pack(args.data, args.out, args.parts, args.count)
        if not args.no_site:
            print(f"site.zip: {zip_package('diffusers', args.out / 'site.zip').stat().st_size / 2**20:.1f} MiB")
        print(json.dumps(manifest["parts"], indent=1))
    else:
        try:
            print(f"wrote {unpack(args.parts, args.out)}")
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"gpu_data unpack: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
