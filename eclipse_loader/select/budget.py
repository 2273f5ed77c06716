"""Fit the proxy to a time budget: shrink it (images first, then epochs), never drop candidates.

The cost model is measured, not assumed: one proxy epoch on the subset and one purification of a
small batch are timed on this machine, then the whole selection is estimated as
``candidates x epochs x images x s_per_image_epoch + purifying candidates x images x s_per_image``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .proxy import ProxySettings

MIN_IMAGES_PER_CLASS = 50
MIN_EPOCHS = 10


@dataclass(frozen=True)
class Plan:
    """The proxy settings used, the estimate behind them and whether the budget could be met."""

    proxy: ProxySettings
    estimated_minutes: float
    requested: ProxySettings
    budget_minutes: Optional[float]
    within_budget: bool

    def to_dict(self) -> dict[str, object]:
        return {"proxy": self.proxy.to_dict(), "requested_proxy": self.requested.to_dict(),
                "estimated_minutes": round(self.estimated_minutes, 2), "budget_minutes": self.budget_minutes,
                "within_budget": self.within_budget, "shrunk": self.proxy != self.requested}


def estimate_minutes(proxy: ProxySettings, n_train: int, n_purify: int, s_per_image_epoch: float,
                     s_per_purified_image: float) -> float:
    """Minutes for ``n_train`` proxy trainings and ``n_purify`` purifications of ``proxy.images`` images."""
    seconds = n_train * proxy.epochs * proxy.images * s_per_image_epoch + n_purify * proxy.images * s_per_purified_image
    return seconds / 60.0


def plan(requested: ProxySettings, budget_minutes: Optional[float], num_classes: int, n_train: int, n_purify: int,
         s_per_image_epoch: float, s_per_purified_image: float) -> Plan:
    """The largest proxy within ``budget_minutes``: fewer images (down to 50 per class), then fewer
    epochs (down to 10). If even that is over budget, the smallest proxy, marked not within budget."""
    def cost(p: ProxySettings) -> float:
        return estimate_minutes(p, n_train, n_purify, s_per_image_epoch, s_per_purified_image)

    if budget_minutes is not None and not budget_minutes > 0:
        raise ValueError(f"budget_minutes must be positive, got {budget_minutes}")
    if budget_minutes is None or cost(requested) <= budget_minutes:
        return Plan(requested, cost(requested), requested, budget_minutes, True)
    min_images = min(requested.images, MIN_IMAGES_PER_CLASS * num_classes)
    per_image = cost(replace(requested, images=1))  # cost is linear in images at fixed epochs
    images = int(budget_minutes / per_image) if per_image > 0 else requested.images
    if images >= min_images:
        proxy = replace(requested, images=min(images, requested.images))
        return Plan(proxy, cost(proxy), requested, budget_minutes, True)
    small = replace(requested, images=min_images)
    train_part = estimate_minutes(replace(small, epochs=1), n_train, 0, s_per_image_epoch, 0.0)
    purify_part = estimate_minutes(small, 0, n_purify, 0.0, s_per_purified_image)
    epochs = int((budget_minutes - purify_part) / train_part) if train_part > 0 else requested.epochs
    proxy = replace(small, epochs=max(min(epochs, requested.epochs), min(MIN_EPOCHS, requested.epochs)))
    return Plan(proxy, cost(proxy), requested, budget_minutes, cost(proxy) <= budget_minutes)
