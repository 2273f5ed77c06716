"""Model-free availability poisons: each class gets a fixed, easy-to-learn "shortcut".

Every function takes clean `LabelledImages` (uint8 NHWC) and returns poisoned ones with the same
labels. Budgets are in [0, 1] pixel units (1/255 per grey level), as the papers state them; the
poisoned pixels are rounded and clipped to uint8, so the realised norm can be slightly below budget.
Parameters follow the papers' published settings for CIFAR-10; the generators are written from the
papers' descriptions, not from their code.
"""
from __future__ import annotations

import numpy as np

from ..data.images import LabelledImages


def _check_budget(name: str, value: float) -> None:
    if not 0 < value <= 255:
        raise ValueError(f"{name} must be positive (in [0, 1] pixel units), got {value}")


def _with_delta(data: LabelledImages, delta_levels: np.ndarray) -> LabelledImages:
    """Add a float perturbation in grey levels, round, clip, keep the labels."""
    poisoned = np.clip(np.rint(data.images.astype(np.float32) + delta_levels), 0, 255).astype(np.uint8)
    return LabelledImages(poisoned, data.labels.copy(), data.num_classes)


def _scale_to_l2(delta: np.ndarray, l2: float) -> np.ndarray:
    """Scale each sample of ``delta`` (N, ...) to L2 norm ``l2`` in [0, 1] units; returns grey levels."""
    norms = np.sqrt((delta.reshape(len(delta), -1) ** 2).sum(1)).reshape(-1, *([1] * (delta.ndim - 1)))
    return delta / np.maximum(norms, 1e-12) * (l2 * 255.0)


def classwise_noise(data: LabelledImages, epsilon: float = 8 / 255, seed: int = 0) -> LabelledImages:
    """Class-wise random noise (URP-style; Huang et al., ICLR 2021, "Unlearnable Examples", their
    class-wise random baseline): one fixed ±epsilon pattern per class (L∞ ``epsilon``, default 8/255),
    added to every image of that class. A network learns the pattern, not the content.
    """
    _check_budget("epsilon", epsilon)
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-1.0, 1.0], size=(data.num_classes, *data.image_shape)) * round(epsilon * 255)
    return _with_delta(data, patterns[data.labels])


def classwise_patches(data: LabelledImages, epsilon: float = 8 / 255, patch: int = 8, seed: int = 0) -> LabelledImages:
    """Class-wise ±epsilon patch colours (L∞ ``epsilon``): each class gets a grid of ``patch`` x
    ``patch`` blocks, each block a fixed ±epsilon shift per channel. The demo's poison; `lsp` is the
    published, L2-bounded form of the same idea.
    """
    _check_budget("epsilon", epsilon)
    rng = np.random.default_rng(seed)
    grid = rng.choice([-1.0, 1.0], size=(data.num_classes, *_patch_grid(data, patch)))
    patterns = grid.repeat(patch, axis=1).repeat(patch, axis=2) * round(epsilon * 255)
    return _with_delta(data, patterns[data.labels])


def _patch_grid(data: LabelledImages, patch: int) -> tuple[int, int, int]:
    height, width, channels = data.image_shape
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch={patch}")
    return height // patch, width // patch, channels


def lsp(data: LabelledImages, l2: float = 1.30, patch: int = 8, seed: int = 0) -> LabelledImages:
    """Linearly separable synthetic perturbations (LSP; Yu et al., KDD 2022, "Availability Attacks
    Create Shortcuts"). Each class gets Gaussian values per ``patch`` x ``patch`` block and channel
    (CIFAR-10: 8x8 patches, a 4x4 grid), upsampled to the image and scaled to L2 norm ``l2``
    (the paper's CIFAR-10 budget: about 1.30, i.e. an RMS of ~6/255 per pixel).
    """
    _check_budget("l2", l2)
    rng = np.random.default_rng(seed)
    grid = rng.standard_normal((data.num_classes, *_patch_grid(data, patch)))
    patterns = _scale_to_l2(grid.repeat(patch, axis=1).repeat(patch, axis=2), l2)
    return _with_delta(data, patterns[data.labels])


def _ar_coefficients(rng: np.random.Generator, shape: tuple[int, int, int], window: int) -> np.ndarray:
    """Coefficients of the ``window`` x ``window`` causal neighbourhood (the bottom-right entry,
    the generated pixel itself, is 0), normalised to sum to 1 per channel. Draws whose process
    explodes or dies out over the image (last-row RMS over 10x or under 0.1x the starting noise's)
    are redrawn, so the perturbation covers the whole image."""
    for _ in range(1000):
        coeffs = rng.standard_normal((shape[2], window, window))
        coeffs[:, -1, -1] = 0.0
        coeffs /= coeffs.sum(axis=(1, 2), keepdims=True)
        with np.errstate(over="ignore", invalid="ignore"):
            probe = _ar_sequences(coeffs, 4, shape, rng)
            last_row_rms = np.sqrt((probe[:, -1] ** 2).mean(axis=(0, 1)))  # per channel
        if np.all(np.isfinite(last_row_rms)) and np.all((last_row_rms > 0.1) & (last_row_rms < 10)):
            return coeffs
    raise RuntimeError("could not draw a stable AR process in 1000 tries")


def _ar_sequences(coeffs: np.ndarray, count: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Run the AR process of ``coeffs`` (C, k, k) ``count`` times from Gaussian starting rows/columns."""
    height, width, channels = shape
    k = coeffs.shape[-1]
    pad = k - 1
    field = np.zeros((count, channels, height + pad, width + pad))
    field[:, :, :pad, :] = rng.standard_normal((count, channels, pad, width + pad))
    field[:, :, :, :pad] = rng.standard_normal((count, channels, height + pad, pad))
    for i in range(pad, height + pad):
        for j in range(pad, width + pad):
            window = field[:, :, i - pad:i + 1, j - pad:j + 1]
            field[:, :, i, j] = (window * coeffs).sum(axis=(2, 3))
    return field[:, :, pad:, pad:].transpose(0, 2, 3, 1)  # (N, H, W, C)


def autoregressive(data: LabelledImages, l2: float = 1.0, window: int = 3, seed: int = 0) -> LabelledImages:
    """Autoregressive perturbations (AR; Sandoval-Segura et al., NeurIPS 2022). Each class owns an AR
    process per channel over a ``window`` x ``window`` causal neighbourhood (CIFAR-10: 3x3, i.e. 8
    coefficients); every image gets its own sequence of its class's process, started from Gaussian
    noise, then scaled to L2 norm ``l2`` (the paper's CIFAR-10 budget: 1.0). A matching AR filter
    predicts these perturbations exactly, which is the shortcut a network learns.
    """
    _check_budget("l2", l2)
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    rng = np.random.default_rng(seed)
    delta = np.zeros(data.images.shape, dtype=np.float64)
    for label in range(data.num_classes):
        members = np.flatnonzero(data.labels == label)
        coeffs = _ar_coefficients(rng, data.image_shape, window)
        if len(members):
            delta[members] = _ar_sequences(coeffs, len(members), data.image_shape, rng)
    return _with_delta(data, _scale_to_l2(delta, l2))


def one_pixel_shortcut(data: LabelledImages, seed: int = 0) -> LabelledImages:
    """One-pixel shortcut (OPS; Wu et al., ICLR 2023). For each class, one pixel position and one
    saturated colour (each channel 0 or 255) are searched to change that class's images the most and
    the most consistently: the score is the mean absolute change over the class divided by its
    standard deviation (+1 level), summed over channels. Every image of the class gets that pixel set
    to that colour (an L0 budget of one pixel). ``seed`` breaks ties only.
    """
    height, width, channels = data.image_shape
    colours = np.array(np.meshgrid(*([[0.0, 255.0]] * channels), indexing="ij")).reshape(channels, -1).T
    rng = np.random.default_rng(seed)
    poisoned = data.images.copy()
    for label in range(data.num_classes):
        members = np.flatnonzero(data.labels == label)
        if not len(members):
            continue
        pixels = data.images[members].astype(np.float64)  # (n, H, W, C)
        best, best_score = None, -np.inf
        for colour in colours:
            change = np.abs(pixels - colour)
            score = (change.mean(0) / (change.std(0) + 1.0)).sum(-1)  # (H, W)
            score = score + rng.uniform(0, 1e-9, score.shape)
            position = np.unravel_index(int(score.argmax()), score.shape)
            if score[position] > best_score:
                best, best_score = (position, colour), score[position]
        (row, col), colour = best
        poisoned[members, row, col, :] = colour.astype(np.uint8)
    return LabelledImages(poisoned, data.labels.copy(), data.num_classes)


def convolution_based(data: LabelledImages, blur: float = 0.3, kernel: int = 3, seed: int = 0) -> LabelledImages:
    """Convolution-based unlearnable data (CUDA-style; Sadasivan et al., CVPR 2023). Each class gets
    a random ``kernel`` x ``kernel`` filter per channel with entries drawn from U(0, ``blur``) and the
    centre set to 1 (CIFAR-10: 3x3, blur parameter 0.3), normalised to sum to 1 so brightness is kept;
    every image is filtered with its class's filters (edges replicated). Not norm-bounded: the
    change is a class-wise blur.
    """
    if not 0 <= blur <= 1:
        raise ValueError(f"blur must be in [0, 1], got {blur}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd number, got {kernel}")
    rng = np.random.default_rng(seed)
    channels = data.image_shape[2]
    half = kernel // 2
    poisoned = data.images.copy()
    for label in range(data.num_classes):
        filters = rng.uniform(0.0, blur, size=(channels, kernel, kernel))
        filters[:, half, half] = 1.0
        filters /= filters.sum(axis=(1, 2), keepdims=True)
        members = np.flatnonzero(data.labels == label)
        if not len(members):
            continue
        images = data.images[members].astype(np.float64)
        padded = np.pad(images, ((0, 0), (half, half), (half, half), (0, 0)), mode="edge")
        out = np.zeros_like(images)
        height, width = data.image_shape[:2]
        for di in range(kernel):
            for dj in range(kernel):
                out += padded[:, di:di + height, dj:dj + width, :] * filters[:, di, dj]
        poisoned[members] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return LabelledImages(poisoned, data.labels.copy(), data.num_classes)
