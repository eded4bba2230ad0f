"""Training-time augmentation of uint8 face batches, in numpy and OpenCV, as in the FER2013 literature.

Each face gets a random horizontal flip, rotation, shift and zoom (one affine warp, edges
replicated) and, for age and gender, a random contrast change. It runs on the host while the
accelerator trains, the same on every Keras backend; a face's draw depends only on the seed, the
epoch and its batch, so parallel batch loading changes nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["Augmentation", "AUGMENTATION", "augment_batch"]


class Augmentation(NamedTuple):
    """Ranges of the random changes: rotation in degrees, shift and zoom as fractions of the side,
    contrast as a factor's distance from 1 (0: off)."""

    rotation: float
    shift: float
    zoom: float
    contrast: float = 0.0
    flip: bool = True


AUGMENTATION = {
    "emotion": Augmentation(rotation=18.0, shift=0.1, zoom=0.1),
    "age-gender": Augmentation(rotation=18.0, shift=0.08, zoom=0.1, contrast=0.2),
}


def augment_batch(images: np.ndarray, spec: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Randomly changed copies of uint8 faces (N, S, S) or (N, S, S, C)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"need uint8 faces (N, S, S[, C]), got {images.dtype} {images.shape}")
    n, h, w = images.shape[:3]
    angle = rng.uniform(-spec.rotation, spec.rotation, n)
    scale = rng.uniform(1.0 - spec.zoom, 1.0 + spec.zoom, n)
    shift = rng.uniform(-spec.shift, spec.shift, (n, 2)) * (w, h)
    flip = rng.random(n) < 0.5 if spec.flip else np.zeros(n, bool)
    contrast = rng.uniform(1.0 - spec.contrast, 1.0 + spec.contrast, n) if spec.contrast else None
    out = np.empty_like(images)
    center = ((w - 1) / 2.0, (h - 1) / 2.0)
    for i in range(n):
        m = cv2.getRotationMatrix2D(center, float(angle[i]), float(scale[i]))
        if flip[i]:  # mirror first: x -> w - 1 - x
            m = m @ np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m[:, 2] += shift[i]
        face = cv2.warpAffine(images[i], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        face = face.reshape(out[i].shape)
        if contrast is not None:
            face = _contrast(face, float(contrast[i]))
        out[i] = face
    return out


_LEVELS = np.arange(256, dtype=np.float32)


def _contrast(face: np.ndarray, factor: float) -> np.ndarray:
    """``(face - mean) * factor + mean`` per channel, as one lookup table per channel."""
    means = face.reshape(-1, face.shape[-1] if face.ndim == 3 else 1).mean(axis=0)
    luts = np.clip((_LEVELS[:, None] - means) * factor + means, 0, 255).round().astype(np.uint8)
    if face.ndim == 2 or face.shape[-1] == 1:
        return cv2.LUT(face, luts[:, 0]).reshape(face.shape)
    return cv2.LUT(face, luts.reshape(256, 1, -1))
