"""Knowledge distillation for the emotion recipe: trained models teach a network their output.

``train emotion --teacher NAME [NAME ...]`` scores the training faces with the teachers (each
averaged over the ``--teacher_tta`` views, then over the teachers), softens the result with
``--teacher_temperature`` and trains on the mix ``(1 - a) * label + a * teacher`` with
``a = --distill``. Teachers scored with multi-view test-time augmentation pass on what their views
agree on, so the network learns, in one view, what they see in six. The teachers' scores are
computed once per run and kept in its ``--workdir``, so resumed sittings reuse them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

LOG = logging.getLogger("facebeam.distill")

__all__ = ["soften", "mix_targets", "teacher_probabilities", "teacher_targets", "CACHE_NAME"]

CACHE_NAME = "teacher.npz"


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of log(probs) / temperature, row by row: above 1 flatter, below 1 sharper."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    logits = np.log(np.clip(probs.astype(np.float64), 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def mix_targets(targets: np.ndarray, teacher: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * targets + alpha * teacher``: distributions over the same classes."""
    if targets.shape != teacher.shape:
        raise ValueError(f"targets {targets.shape} and teacher outputs {teacher.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the teacher's weight must be in [0, 1], not {alpha}")
    return ((1.0 - alpha) * targets + alpha * teacher).astype(np.float32)


def teacher_probabilities(models: list, images: np.ndarray, tta: str) -> np.ndarray:
    """Mean softmax (N, C) of ``models`` on uint8 (N, 48, 48) faces, each averaged over ``tta``'s views."""
    from models.train import emotion_predict

    return np.mean([emotion_predict(m, images, tta) for m in models], axis=0)


def teacher_targets(names: list[str], images: np.ndarray, classes: tuple[str, ...], tta: str,
                    cache_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """(probabilities (N, C) of the teachers ``names`` on ``images``, their sidecar record).

    ``names`` are shipped model names or ``.keras`` paths with sidecars (sha256 checked); every
    teacher must predict ``classes``. The probabilities are kept in ``cache_dir`` and reused while
    the teachers, the views and the faces are the same.
    """
    from models.card import provenance
    from models.data import faces_digest, load_cache, save_cache
    from models.registry import load_checked, resolve

    specs = [resolve(n, "emotion") for n in names]
    teachers = []
    for spec in specs:
        if spec.classes != tuple(classes):
            raise ValueError(f"--teacher {spec.name} predicts {list(spec.classes)}, "
                             f"not the recipe's classes {list(classes)}")
        teachers.append(provenance(spec))
    key = json.dumps({"teachers": [t["sha256"] for t in teachers], "tta": tta, "faces": faces_digest(images)})
    cache = cache_dir / CACHE_NAME if cache_dir else None
    cached = load_cache(cache) if cache is not None else None
    if cached is not None and str(cached.get("key")) == key:
        LOG.info("teacher outputs from %s", cache)
        return cached["probs"], {"teachers": teachers, "tta": tta}
    probs = teacher_probabilities([load_checked(s) for s in specs], images, tta)
    if cache is not None:
        save_cache(cache, probs=probs, key=np.array(key))
    return probs, {"teachers": teachers, "tta": tta}
