"""Evaluation metrics, numpy only: classification report, calibration, age/gender errors."""

from __future__ import annotations

import numpy as np

from models.labels import AGE_GROUPS, GENDERS, age_groups

__all__ = [
    "confusion", "classification_report", "expected_calibration_error", "reliability_bins", "age_gender_report",
]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted classes."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro-F1, confusion and ECE.

    Macro-F1 averages the classes that occur in ``y_true`` or among the predictions (as
    scikit-learn does by default): a class absent from both has no F1 to count.
    """
    y_pred = probs.argmax(axis=1)
    m = confusion(y_true, y_pred, len(classes))
    tp = np.diag(m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(m.sum(0) > 0, tp / m.sum(0), 0.0)
        recall = np.where(m.sum(1) > 0, tp / m.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (m.sum(0) + m.sum(1)) > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(m[i].sum())}
            for i, c in enumerate(classes)
        },
        "confusion": m.tolist(),
        "ece": expected_calibration_error(y_true, probs),
    }


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 15):
    """Per confidence bin: (mean confidence, accuracy, count), bins equally wide on [0, 1]."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        acc = np.bincount(idx, correct.astype(float), bins) / count
    return mean_conf, acc, count


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): count-weighted |accuracy - confidence| over equal-width bins."""
    mean_conf, acc, count = reliability_bins(y_true, probs, bins)
    used = count > 0
    return float(np.sum(count[used] * np.abs(acc[used] - mean_conf[used])) / max(count.sum(), 1))


def age_gender_report(age_true, gender_true, age_pred, p_female, race=None) -> dict:
    """Age MAE, age-group accuracy, gender accuracy, overall and broken down by age band, gender and race."""
    age_pred = np.asarray(age_pred, np.float64).ravel()
    p_female = np.asarray(p_female, np.float64).ravel()
    abs_err = np.abs(age_pred - age_true)
    g_ok = (p_female >= 0.5).astype(int) == gender_true
    grp_ok = age_groups(age_pred) == age_groups(age_true)

    def summary(mask):
        n = int(mask.sum())
        if not n:
            return {"n": 0}
        return {"n": n, "age_mae": float(abs_err[mask].mean()), "gender_accuracy": float(g_ok[mask].mean()),
                "age_group_accuracy": float(grp_ok[mask].mean())}

    bands = age_groups(age_true)
    out = summary(np.ones(len(abs_err), bool))
    out["by_age_group"] = {g: summary(bands == i) for i, g in enumerate(AGE_GROUPS)}
    out["by_gender"] = {g: summary(gender_true == i) for i, g in enumerate(GENDERS)}
    if race is not None and (np.asarray(race) >= 0).any():
        names = ("white", "black", "asian", "indian", "others")
        out["by_race"] = {r: summary(np.asarray(race) == i) for i, r in enumerate(names)}
    return out
