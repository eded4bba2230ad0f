"""Label sets shared by training, inference and the output schema (pure Python)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "EMOTIONS",
    "GENDERS",
    "AGE_GROUPS",
    "age_group",
    "age_groups",
]

# FER2013's label order (ICML 2013 challenge): index i of a probability vector is EMOTIONS[i].
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# UTKFace's coding: 0 male, 1 female. The gender head outputs P(female).
GENDERS: tuple[str, ...] = ("male", "female")

# Lower bounds (years) of the age groups reported in the output.
_AGE_GROUP_EDGES = (0, 3, 10, 20, 30, 40, 50, 60, 70)
AGE_GROUPS: tuple[str, ...] = (
    "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+",
)


def age_groups(ages: np.ndarray) -> np.ndarray:
    """Index into AGE_GROUPS for each age in years (float array of any shape); negative ages (a
    regression head can give them) count as 0."""
    return np.maximum(np.searchsorted(_AGE_GROUP_EDGES, np.asarray(ages, dtype=np.float64), side="right") - 1, 0)


def age_group(age: float) -> str:
    """The AGE_GROUPS label for one age in years; negative ages count as 0."""
    return AGE_GROUPS[int(age_groups(np.array([age]))[0])]
