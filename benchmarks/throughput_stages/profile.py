"""The ``loader_profile`` stage: where the loader time goes, operation by operation."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from _common import load_cifar

def _best_of(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _compiled_op(op: Any, shape: tuple[int, int, int]) -> tuple[Any, tuple[int, ...]]:
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    state = State(jit_mode=True, device=torch.device("cpu"), shape=shape, dtype=np.dtype("u1"))
    _, query = op.declare_state_and_memory(state)
    return Compiler.compile(op.generate_code()), tuple(query.shape)


def loader_profile(batch: int, threads: int, images_count: int) -> dict[str, Any]:
    """Per-image cost of each loader operation, measured on its own on real CIFAR-10 batches."""
    import numba
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import RandomHorizontalFlip, RandomTranslate
    from torch.utils.data import default_collate

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV
    from eclipse_loader.compensation import counter_rng as rng
    from eclipse_loader.compensation.functional import compensate_with_keys
    from eclipse_loader.loading.batch_augment import flip_and_translate

    images, labels = load_cifar(max(batch, images_count))
    x = images[:batch]
    indices = np.arange(batch, dtype=np.uint64)
    out: dict[str, Any] = {"batch": batch, "unit": "microseconds per image"}

    ffcv: dict[str, Any] = {}
    for n_threads in sorted({1, threads}):
        Compiler.set_num_threads(n_threads)
        row: dict[str, float] = {}
        ops = {
            "flip": RandomHorizontalFlip(),
            "translate_pad4": RandomTranslate(padding=4),
            "compensation": CompensateFFCV(0.4, 0.05, seed=0),
            "compensation_gray_only": CompensateFFCV(0.4, 0.0, seed=0),
            "compensation_noise_only": CompensateFFCV(0.0, 0.05, seed=0),
        }
        for name, op in ops.items():
            if name.startswith("compensation"):
                op.set_epoch(0)  # compiled by hand, outside a Loader: no pass counters
            fn, dst_shape = _compiled_op(op, (32, 32, 3))
            dst = np.empty((batch, *dst_shape), np.uint8)
            src = x.copy()
            call = (lambda: fn(src, dst, indices)) if name.startswith("compensation") else (lambda: fn(src, dst))
            call()  # compile
            row[name] = round(_best_of(call, 7) / batch * 1e6, 2)
        ffcv[f"threads_{n_threads}"] = row
    out["ffcv_ops"] = ffcv

    # the torch loader's whole-batch operations on one batch (channels-last uint8, as it holds images)
    keys = rng.sample_key(0, 0, torch.arange(batch))
    chw = torch.from_numpy(x).permute(0, 3, 1, 2)
    batched = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        row = {
            "flip_and_translate_pad4": _best_of(lambda: flip_and_translate(chw, keys, True, 4), 7),
            "compensation": _best_of(lambda: compensate_with_keys(chw, keys, p_gray=0.4, sigma=0.05), 7),
            "compensation_gray_only": _best_of(lambda: compensate_with_keys(chw, keys, p_gray=0.4, sigma=0.0), 7),
            "compensation_noise_only": _best_of(lambda: compensate_with_keys(chw, keys, p_gray=0.0, sigma=0.05), 7),
            "to_float": _best_of(lambda: chw.float() / 255.0, 7),
        }
        batched[f"threads_{n_threads}"] = {k: round(v / batch * 1e6, 2) for k, v in row.items()}
    out["torch_batched_ops"] = batched

    # the torch part of the FFCV pipeline on one batch: ToTensor, ToTorchImage (a channels-last CHW view),
    # Convert(float32), torchvision Normalize (mean 0, std 255 when AugmentConfig has no mean/std)
    from torchvision.transforms import Normalize

    normalize = Normalize((0.0, 0.0, 0.0), (255.0, 255.0, 255.0))
    tail = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        tail[f"threads_{n_threads}"] = round(
            _best_of(lambda: normalize(torch.from_numpy(x).permute(0, 3, 1, 2).float()), 7) / batch * 1e6, 2)
    torch.set_num_threads(1)
    tail["threads_1_contiguous_input"] = round(
        _best_of(lambda: normalize(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().float()), 7) / batch * 1e6, 2)
    out["ffcv_torch_tail_convert_normalize"] = tail

    # torchvision: each transform on single images, as a DataLoader worker runs them (1 thread each)
    torch.set_num_threads(1)
    from torchvision.transforms import v2

    from eclipse_loader import CorruptionCompensation

    steps = [("to_image", v2.ToImage()), ("random_crop_pad4", v2.RandomCrop(32, padding=4)),
             ("horizontal_flip", v2.RandomHorizontalFlip()), ("compensation", CorruptionCompensation(0.4, 0.05)),
             ("to_dtype_float", v2.ToDtype(torch.float32, scale=True))]
    sample_x = images[:images_count]
    costs = {name: 0.0 for name, _ in steps}
    outputs = []
    for _ in range(2):  # second pass timed
        costs = {name: 0.0 for name, _ in steps}
        outputs = []
        for im in sample_x:
            value: Any = im
            for name, transform in steps:
                start = time.perf_counter()
                value = transform(value)
                costs[name] += time.perf_counter() - start
            outputs.append((value, 0))
    tv = {name: round(seconds / len(sample_x) * 1e6, 2) for name, seconds in costs.items()}
    batches = [outputs[i:i + batch] for i in range(0, len(outputs) - batch + 1, batch)] or [outputs]
    tv["collate"] = round(_best_of(lambda: [default_collate(b) for b in batches], 3) / sum(map(len, batches)) * 1e6, 2)
    tv["dataset_getitem_total"] = round(sum(v for k, v in tv.items() if k != "collate"), 2)
    out["torchvision_per_sample_1_thread"] = tv
    out["torchvision_images_timed"] = len(sample_x)
    return out
