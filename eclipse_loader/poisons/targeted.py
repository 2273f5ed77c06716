"""Targeted clean-label poisoning for evaluating EPIC, small enough for a CPU (one import place).

* `feature_collision` / `plant_feature_collision`: Poison Frogs (module `feature_collision`).
* `gradient_matching` / `gradient_alignment` / `plant_gradient_matching`: Witches' Brew (module
  `gradient_matching`).
* `TargetedPoison` (what the ``plant_*`` functions return) and `targeted_success` (the outcome on a
  trained model): module `targeted_common`.
"""
from __future__ import annotations

from .feature_collision import feature_collision, plant_feature_collision
from .gradient_matching import (GradientMatchingPoison, gradient_alignment, gradient_matching,
                                plant_gradient_matching)
from .targeted_common import TargetedPoison, targeted_success

__all__ = ["GradientMatchingPoison", "TargetedPoison", "feature_collision", "gradient_alignment", "gradient_matching",
           "plant_feature_collision", "plant_gradient_matching", "targeted_success"]
