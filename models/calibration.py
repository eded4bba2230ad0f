"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), numpy only.

One scalar T, fitted on held-out faces by minimising the negative log-likelihood, turns a model's
probabilities p into softmax(log p / T): T > 1 softens an over-confident model, T < 1 sharpens an
under-confident one, and the predicted class never changes, so accuracy does not either.

    python -m models.calibration --model models/weights/emotion_v2.keras \\
        --data ../shared/data/fer2013/fer2013_Training.npz --eval ../shared/data/fer2013/fer2013_PublicTest.npz

fits T on the Training file's validation split (``models.data.validation_mask``) and prints T with the
ECE before and after on the evaluation file. A model trained on every Training face (the shipped ones are)
has seen that split, so its T there is fitted on training data; the training recipe fits T on the
PublicTest faces instead and records a cross-fitted ECE as well (see ``cross_fitted``).

Averaging the views of test-time augmentation already softens the probabilities, so each TTA mode
needs its own T (a T fitted on single views miscalibrates the mean of six). The recipe records one
per mode in the sidecar (``temperatures``); for a model recorded before that,

    python -m models.calibration --model emotion_v2 --record ../shared/data/fer2013/fer2013_PublicTest.npz

scores it on that file as the recipe does (``models.train.emotion_record``: the figures with each
TTA mode, a T fitted for each) and writes the results into the model's sidecar.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from models.metrics import expected_calibration_error
from models.registry import DEFAULT_MODELS, ModelIntegrityError

LOG = logging.getLogger("facebeam.calibration")

__all__ = [
    "apply_temperature", "fit_temperature", "negative_log_likelihood", "cross_fitted", "calibration_record",
    "record_sidecar", "main",
]

# Search interval for T: far wider than the 1-3 Guo et al. report for modern networks.
_T_MIN, _T_MAX = 0.05, 20.0
# Probabilities are clipped here before the log: a float32 softmax can round a class to exactly 0.
_P_MIN = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) for probabilities (N, C); rows sum to 1."""
    if not 0 < temperature < np.inf:
        raise ValueError(f"temperature must be a positive number, not {temperature}")
    z = np.log(np.clip(np.asarray(probs, np.float64), _P_MIN, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(true class) after temperature ``temperature``."""
    p = apply_temperature(probs, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), np.asarray(labels)], _P_MIN, 1.0))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, tol: float = 1e-5) -> float:
    """The T in [0.05, 20] that minimises the NLL of int ``labels`` (N,) under ``probs`` (N, C).

    The NLL is convex in 1/T (a log-sum-exp of terms linear in 1/T, minus one linear term), so a
    golden-section search over 1/T finds the minimum without derivatives or scipy.
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(probs) == 0 or len(probs) != len(labels):
        raise ValueError(f"need as many labels as probability rows, got {len(labels)} and {len(probs)}")
    z = np.log(np.clip(probs.astype(np.float64), _P_MIN, 1.0))
    z_true = z[np.arange(len(labels)), labels]

    def nll(beta: float) -> float:
        s = beta * z
        m = s.max(axis=1)
        return float(np.mean(m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - beta * z_true))

    golden = (np.sqrt(5) - 1) / 2
    lo, hi = 1 / _T_MAX, 1 / _T_MIN
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(b)
    t = float(1 / ((lo + hi) / 2))
    if not _T_MIN * 1.01 < t < _T_MAX * 0.99:
        # A bound, not a minimum: a model that has hardly learnt (near-uniform or all-wrong outputs).
        LOG.warning("temperature %.3f is at the end of the search interval [%s, %s]", t, _T_MIN, _T_MAX)
    return t


def cross_fitted(probs: np.ndarray, labels: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Calibrated probabilities where each half's T was fitted on the other half (boolean ``fold``).

    Lets one held-out set both fit T and measure the calibrated ECE without measuring on the faces
    the fit saw. Returns (probabilities (N, C), [T fitted on ~fold, T fitted on fold]).
    """
    fold = np.asarray(fold, bool)
    if fold.all() or not fold.any():
        raise ValueError("the fold mask must split the faces into two non-empty halves")
    out = np.empty_like(np.asarray(probs, np.float64))
    temps = []
    for fit_on in (~fold, fold):
        t = fit_temperature(probs[fit_on], labels[fit_on])
        out[~fit_on] = apply_temperature(probs[~fit_on], t)
        temps.append(t)
    return out, temps


def calibration_record(probs: np.ndarray, labels: np.ndarray, filenames: np.ndarray, fit_on: str) -> dict:
    """T fitted on all of ``probs`` and the ECE before, after (same faces) and cross-fitted (halves by file name)."""
    from models.data import validation_mask

    t = fit_temperature(probs, labels)
    halves = validation_mask(filenames, fraction=0.5)
    record = {"temperature": t, "fit_on": fit_on, "n": int(len(labels)),
              "ece_before": expected_calibration_error(labels, probs),
              "ece_after": expected_calibration_error(labels, apply_temperature(probs, t)),
              "nll_before": negative_log_likelihood(probs, labels),
              "nll_after": negative_log_likelihood(probs, labels, t)}
    if halves.any() and not halves.all():
        crossed, _ = cross_fitted(probs, labels, halves)
        record["ece_after_cross_fitted"] = expected_calibration_error(labels, crossed)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facebeam calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODELS["emotion"],
                   help="shipped emotion model name or .keras path with sidecar")
    p.add_argument("--data", help="FER2013 Training npz: T is fitted on its validation split")
    p.add_argument("--eval", help="FER2013-layout npz on which ECE before and after is reported")
    p.add_argument("--tta", action="store_true", help="calibrate the flip-TTA probabilities")
    p.add_argument("--record", default=None, metavar="PUBLIC_TEST_NPZ",
                   help="instead: score the model on this file as the recipe does (figures for each TTA mode, a "
                        "temperature fitted for each) and write them into its sidecar")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    from models import data as fdata
    from models.registry import load_checked, resolve
    from models.train import emotion_predict

    if args.record:
        return record_sidecar(args.model, args.record, args.json)
    if not args.data or not args.eval:
        p.error("give --data and --eval, or --record")
    try:
        spec = resolve(args.model, "emotion")
        model = load_checked(spec)
        train = fdata.load_fer(args.data)
        held = fdata.validation_mask(train.filenames)
        x_fit, y_fit = fdata.fer_faces(fdata.FerData(train.images[held], train.labels[held], None,
                                                     train.filenames[held]), spec.classes)
        x_eval, y_eval = fdata.fer_faces(fdata.load_fer(args.eval), spec.classes)
        if not len(y_fit):
            raise ValueError(f"{args.data} has no faces in its validation split to fit on")
        if not len(y_eval):
            raise ValueError(f"{args.eval} has no faces of the model's classes to evaluate on")
        fdata.check_face_size(args.data, x_fit, spec.name, spec.input_shape)
        fdata.check_face_size(args.eval, x_eval, spec.name, spec.input_shape)
    except (ValueError, OSError, ModelIntegrityError) as e:
        print(f"models.calibration: error: {e}", file=sys.stderr)
        return 2
    t = fit_temperature(emotion_predict(model, x_fit, args.tta), y_fit)
    probs = emotion_predict(model, x_eval, args.tta)
    out = {"model": spec.tag, "temperature": t, "fit_on": f"{args.data} validation split", "fit_n": int(len(y_fit)),
           "eval": args.eval, "eval_n": int(len(y_eval)), "tta": args.tta,
           "accuracy": float((probs.argmax(1) == y_eval).mean()),
           "ece_before": expected_calibration_error(y_eval, probs),
           "ece_after": expected_calibration_error(y_eval, apply_temperature(probs, t)),
           "nll_before": negative_log_likelihood(probs, y_eval),
           "nll_after": negative_log_likelihood(probs, y_eval, t)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"temperature {t:.4f} (fitted on {out['fit_n']} faces of {args.data}'s validation split)\n"
              f"{args.eval} ({out['eval_n']} faces, accuracy {out['accuracy']:.4f}): "
              f"ECE {out['ece_before']:.4f} -> {out['ece_after']:.4f}, "
              f"NLL {out['nll_before']:.4f} -> {out['nll_after']:.4f}")
    return 0


def record_sidecar(model_name: str, path: str, as_json: bool, prog: str = "python -m models.calibration",
                   command: str | None = None) -> int:
    """``--record``: the recipe's figures and per-mode temperatures into the sidecar of ``model_name``;
    ``command`` is the one the card names as having scored them (default: this module's)."""
    from models import data as fdata
    from models.registry import is_uri, load_checked, record_in_sidecar, resolve
    from models.train import FGSM_EPS, emotion_record

    try:
        spec = resolve(model_name, "emotion")
        if is_uri(spec.path):  # checked first: nothing is scored for a sidecar that cannot be written
            raise ValueError(f"{spec.path}: a model on a remote file system; record into a local copy of it")
        meta = spec.sidecar()
        classes = tuple(spec.classes or fdata.LABEL_SETS["7"][0])
        faces = fdata.emotion_targets(fdata.load_fer(path), fdata.label_set_of(classes))
        if not len(faces.labels):
            raise ValueError(f"{path} has no faces of the model's classes")
        fdata.check_face_size(path, faces.images, spec.name, spec.input_shape)
        eps = (meta.get("recipe") or {}).get("adv_step", FGSM_EPS)
        # An ensemble's views are inside the model: it is scored on plain faces only, as when it was made.
        record = emotion_record(load_checked(spec), faces, classes, eps, tta="ensemble" not in meta)
        if abs(meta.get("temperature", record["temperature"]) - record["temperature"]) > 1e-3:
            LOG.warning("the plain temperature refitted: %.4f (recorded %.4f)", record["temperature"],
                        meta["temperature"])
        sidecar = record_in_sidecar(spec, record, command or f"{prog} --model {model_name} --record {path}")
    except (ValueError, OSError, ModelIntegrityError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    by_mode = record["calibration_by_tta"]
    if as_json:
        print(json.dumps({"model": spec.tag, "calibration_by_tta": by_mode}))
    else:
        for mode, c in by_mode.items():
            print(f"{mode:<6} T {c['temperature']:.4f}  ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} "
                  f"(cross-fitted {c.get('ece_after_cross_fitted', float('nan')):.4f})")
        print(f"wrote {sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
