"""Image similarity for DataElixir's candidate selection: SSIM (scikit-image semantics) and the combined distance.

`ssim` reproduces ``skimage.metrics.structural_similarity(a, b, win_size=w, channel_axis=-1,
data_range=255)`` for uint8 images: a uniform ``w x w`` window, sample covariance
(``N / (N - 1)``), K1 = 0.01, K2 = 0.03, and the mean taken over the region not touched by the
border (``(w - 1) // 2`` pixels cropped), so the padding mode plays no role. Computed in torch, no
scipy/scikit-image dependency.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def ssim(a: np.ndarray, b: np.ndarray, win_size: int = 3, data_range: float = 255.0) -> np.ndarray:
    """Mean SSIM of image pairs: ``a`` (H, W, C) or (N, H, W, C) against ``b`` of the same shape.

    Returns a float64 array of shape (N,) (or a 0-d array for a single pair).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"images must be (H, W, C) or (N, H, W, C), got shape {a.shape}")
    if win_size < 3 or win_size % 2 == 0 or win_size > min(a.shape[1:3]):
        raise ValueError(f"win_size must be odd, >= 3 and fit the image, got {win_size} for {a.shape[1:3]}")
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).double()

    def mean(t: torch.Tensor) -> torch.Tensor:  # valid-region uniform filter == skimage's filter + crop
        return F.avg_pool2d(t, win_size, stride=1)

    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.mean((1, 2, 3)).numpy()
    return out[0] if single else out


def candidate_distance(images: np.ndarray, features: np.ndarray, ssim_weight: float = 0.5,
                       win_size: int = 3) -> np.ndarray:
    """DataElixir's distance of every candidate to candidate 0 (the original image).

    ``d_j = w (1 - (SSIM(img_0, img_j) + 1) / 2) + (1 - w) (1 - (cos(f_0, f_j) + 1) / 2)``;
    ``images`` is (K, H, W, 3) uint8 and ``features`` (K, D).
    """
    images, features = np.asarray(images), np.asarray(features, dtype=np.float64)
    if len(images) != len(features) or len(images) == 0:
        raise ValueError(f"need as many features as candidates (>= 1), got {len(images)} and {len(features)}")
    if not 0.0 <= ssim_weight <= 1.0:
        raise ValueError(f"ssim_weight must be in [0, 1], got {ssim_weight}")
    s = ssim(np.broadcast_to(images[:1], images.shape), images, win_size)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit[0]
    return ssim_weight * (1 - (s + 1) / 2) + (1 - ssim_weight) * (1 - (cos + 1) / 2)


def select_candidate(images: np.ndarray, features: np.ndarray, quantile: float = 0.8, ssim_weight: float = 0.5) -> int:
    """Index of the candidate at position ``floor(quantile * K)`` of the ascending distances (stable sort)."""
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    d = candidate_distance(images, features, ssim_weight)
    order = np.argsort(d, kind="stable")
    return int(order[int(np.floor(quantile * len(d)))])
