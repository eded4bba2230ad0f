"""Knowledge distillation for the emotion recipe: trained models teach a network their output.

``train emotion --teacher NAME [NAME ...]`` scores the training faces with the teachers (each
averaged over the ``--teacher_tta`` views, or an ensemble over its own, then over the teachers), softens the result with
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

__all__ = ["soften", "mix_targets", "teacher_probabilities", "teacher_targets", "own_views", "CACHE_NAME"]

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


def teacher_probabilities(models: list, images: np.ndarray, tta: str | list[str]) -> np.ndarray:
    """Mean softmax (N, C) of ``models`` on uint8 (N, 48, 48) faces, each averaged over ``tta``'s views
    (one mode for all, or one per model)."""
    from models.train import emotion_predict

    modes = [tta] * len(models) if isinstance(tta, str) else list(tta)
    if len(modes) != len(models):
        raise ValueError(f"{len(modes)} view modes for {len(models)} models")
    return np.mean([emotion_predict(m, images, mode) for m, mode in zip(models, modes)], axis=0)


def own_views(record: dict) -> str:
    """The views an ensemble's graph averages (``models.ensemble --views``); "none" for a single network."""
    return str((record.get("ensemble") or {}).get("views", "none"))


def teacher_targets(names: list[str], images: np.ndarray, classes: tuple[str, ...], tta: str,
                    cache_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """(probabilities (N, C) of the teachers ``names`` on ``images``, their sidecar record).

    ``names`` are shipped model names or ``.keras`` paths with sidecars (sha256 checked); every
    teacher must predict ``classes``. An ensemble whose graph averages views of its own
    (``models.ensemble``) is scored in those, without ``tta``'s on top (zooms of zooms). The
    probabilities are kept in ``cache_dir`` and reused while the teachers, the views and the faces
    are the same.
    """
    from models.card import provenance
    from models.data import faces_digest, load_cache, save_cache
    from models.registry import load_checked, resolve

    specs = [resolve(n, "emotion") for n in names]
    teachers, modes = [], []
    for spec in specs:
        if spec.classes != tuple(classes):
            raise ValueError(f"--teacher {spec.name} predicts {list(spec.classes)}, "
                             f"not the recipe's classes {list(classes)}")
        record = spec.sidecar()
        teachers.append(provenance(spec, record))
        own = own_views(record)
        modes.append(tta if own == "none" else "none")
        if own != "none":
            teachers[-1]["own_views"] = own
            if tta != "none":
                LOG.info("teacher %s averages its own %s views: scored in those, without --teacher_tta %s on top",
                         spec.name, own, tta)
    key = {"teachers": [t["sha256"] for t in teachers], "tta": tta, "faces": faces_digest(images)}
    if modes != [tta] * len(specs):
        key["modes"] = modes
    key = json.dumps(key)
    cache = cache_dir / CACHE_NAME if cache_dir else None
    cached = load_cache(cache) if cache is not None else None
    if cached is not None and str(cached.get("key")) == key:
        LOG.info("teacher outputs from %s", cache)
        return cached["probs"], {"teachers": teachers, "tta": tta}
    probs = teacher_probabilities([load_checked(s) for s in specs], images, modes)
    if cache is not None:
        save_cache(cache, probs=probs, key=np.array(key))
    return probs, {"teachers": teachers, "tta": tta}
