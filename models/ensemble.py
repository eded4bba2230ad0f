"""Emotion ensembles: several trained networks, each scored on test-time views, as one Keras model.

    facebeam ensemble emotion_v2 runs/out/emotion_v3warm.keras runs/out/emotion_v3.keras \\
        runs/out/emotion_v4.keras --views multi --name emotion_e4 --out runs/out

The model averages the softmax of every member on every view of ``models.tta`` (``--views none``:
the face as it is; ``flip``: and its mirror image; ``multi``: those zoomed in and out by 8% too).
The views are part of the graph: each is a fixed resampling of the face, two matrix products
(rows, then columns) in frozen ``Dense`` layers, the bilinear interpolation with replicated edges
that ``models.tta`` does with OpenCV, in OpenCV's own fixed-point positions: the same views, to
float rounding. So the file is an ordinary emotion model with one input and
one output: the pipeline (``--emotion_model``), LiteRT, ``facebeam evaluate`` and the calibration
take it as they take a single network (``--tta`` would add views on top of its own); as a
``--teacher`` it is scored in its own views only (``models.distill``).

Members are shipped names or ``.keras`` paths with sidecars (sha256 checked) of the same classes,
input and framing. The sidecar records each member's sha256, PublicTest figures and training
commands, and the ensemble's own figures, temperature and FGSM robustness as ``models.train`` does.
Cost: one pass per member and view.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np

from models import data as fdata
from models.args import number
from models.registry import ModelIntegrityError
from models.tta import TTA_MODES, ZOOMS, view_count

LOG = logging.getLogger("facebeam.ensemble")

__all__ = ["zoom_matrix", "view_matrices", "resample", "build_ensemble", "ensemble_emotion", "main"]


def zoom_matrix(n: int, scale: float, rows: bool = True) -> np.ndarray:
    """(n, n) matrix R with ``R @ line`` the line of ``n`` pixels scaled by ``scale`` about its centre,
    as ``models.tta`` zooms with OpenCV's ``warpAffine`` (``INTER_LINEAR``, ``BORDER_REPLICATE``):
    the edge pixels repeated beyond the ends, and each source position in OpenCV's own fixed point
    (1/1024 of a pixel, rounded to the 1/32 its interpolation weights come in; columns and ``rows``
    are rounded in different steps), so that the views are OpenCV's to the last bit."""
    c = (n - 1) / 2.0
    inverse = cv2.invertAffineTransform(cv2.getRotationMatrix2D((c, c), 0.0, scale))
    a, b = (inverse[1, 1], inverse[1, 2]) if rows else (inverse[0, 0], inverse[0, 2])
    r = np.zeros((n, n), np.float64)
    for i in range(n):
        fixed = int(np.rint((a * i + b) * 1024)) if rows else int(np.rint(a * i * 1024)) + int(np.rint(b * 1024))
        q = (fixed + 16) >> 5  # the position in 32nds of a pixel
        x0, w = q >> 5, (q & 31) / 32
        r[i, min(max(x0, 0), n - 1)] += 1.0 - w
        r[i, min(max(x0 + 1, 0), n - 1)] += w
    return r.astype(np.float32)


def view_matrices(n: int, mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, columns) matrices of each view of ``models.tta.views(faces, mode)``, in its order: the
    view of a face X is ``rows @ X @ columns.T``."""
    if mode not in TTA_MODES:
        raise ValueError(f"views must be one of {TTA_MODES}, not {mode!r}")
    mirror = np.eye(n, dtype=np.float32)[::-1]
    eye = np.eye(n, dtype=np.float32)
    plain = [(eye, eye)] + ([(zoom_matrix(n, z, rows=True), zoom_matrix(n, z, rows=False)) for z in ZOOMS]
                            if mode == "multi" else [])
    if mode == "none":
        return plain
    return [v for r, c in plain for v in ((r, c), (r, mirror @ c))]  # zoomed, then mirrored


def resample(x, rows: np.ndarray, columns: np.ndarray, name: str):
    """Keras layers giving ``rows @ X @ columns.T`` for each (n, n, 1) image X of the tensor ``x``."""
    import keras
    from keras import layers

    n = rows.shape[0]
    h = layers.Reshape((n, n), name=f"{name}_grid")(x)
    along_columns = layers.Dense(n, use_bias=False, trainable=False, name=f"{name}_columns")
    h = along_columns(h)  # (B, row, col') = X @ columns.T
    along_columns.set_weights([columns.T])
    h = layers.Permute((2, 1), name=f"{name}_transpose")(h)
    along_rows = layers.Dense(n, use_bias=False, trainable=False, name=f"{name}_rows")
    h = along_rows(h)  # (B, col', row') = (rows @ X @ columns.T).T
    along_rows.set_weights([rows.T])
    h = layers.Permute((2, 1), name=f"{name}_back")(h)
    return keras.layers.Reshape((n, n, 1), name=f"{name}_image")(h)


def build_ensemble(members: list, mode: str, name: str = "emotion_ensemble"):
    """One Keras model: the mean softmax of ``members`` (Keras models with the same (n, n, 1) input
    and classes) over the views of ``mode``."""
    import keras

    if not members:
        raise ValueError("an ensemble needs at least one member")
    shape = tuple(members[0].input_shape[1:])
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 1:
        raise ValueError(f"members take square grey faces (n, n, 1), not {shape}")
    for m in members:
        if tuple(m.input_shape[1:]) != shape or m.output_shape[-1] != members[0].output_shape[-1]:
            raise ValueError("ensemble members must share their input shape and classes")
    # Each member becomes a sub-model with its own name, so that members built alike do not clash.
    nets = [keras.Model(m.inputs[0], m.outputs[0], name=f"member_{i}") for i, m in enumerate(members)]
    face = keras.Input(shape, name="face")
    outputs = []
    for v, (rows, columns) in enumerate(view_matrices(shape[0], mode)):
        x = face if v == 0 else resample(face, rows, columns, f"view_{v}")
        outputs += [net(x) for net in nets]
    out = keras.layers.Average(name="emotion")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(face, out, name=name)


def _member(spec) -> dict:
    """What the sidecar records of a member: name, sha256, its PublicTest figures and commands."""
    from models.card import provenance

    record = spec.sidecar()
    figures = {key: record[key]["accuracy"] for key in ("public_test", "public_test_tta", "public_test_tta_multi")
               if key in record}
    return {**provenance(spec, record), "public_test": figures}


def ensemble_emotion(args: argparse.Namespace) -> dict:
    """Builds, scores and writes the ensemble of ``args.members``; returns its sidecar record."""
    from models.registry import load_checked, resolve
    from models.train import FGSM_EPS, check_out, emotion_record, write_outputs

    check_out(args.out, args.name)
    specs = [resolve(m, "emotion") for m in args.members]
    first = specs[0]
    for spec in specs[1:]:
        if (spec.classes, spec.input_shape, spec.template) != (first.classes, first.input_shape, first.template):
            raise ValueError(f"member {spec.name} differs from {first.name} in its classes, input or framing; "
                             "an ensemble's members must share them")
    if len({s.sha256 for s in specs}) < len(specs):
        raise ValueError("a member is given twice")
    classes = first.classes
    model = build_ensemble([load_checked(s) for s in specs], args.views, args.name)
    test = fdata.emotion_targets(fdata.load_fer(Path(args.data_dir) / "fer2013" / "fer2013_PublicTest.npz"),
                                 fdata.label_set_of(classes))
    if args.limit:
        test = fdata.EmotionTargets(*(a[:args.limit] for a in test))
    LOG.info("%d members x %d views: scoring %d PublicTest faces", len(specs), view_count(args.views),
             len(test.images))
    record = {
        "task": "emotion", "classes": list(classes), "input": list(first.input_shape), "template": list(first.template),
        "params": model.count_params(), "command": args.command,
        "recipe": {"members": [s.name for s in specs], "views": args.views, "limit": args.limit},
        "ensemble": {"views": args.views, "members": [_member(s) for s in specs]},
        # the views are in the model: scored as the pipeline runs it, without test-time augmentation on top
        **emotion_record(model, test, classes, FGSM_EPS, tta=False),
    }
    write_outputs(None, Path(args.out), args.name, record, model=model)
    LOG.info("PublicTest accuracy %.4f; temperature %.3f", record["public_test"]["accuracy"], record["temperature"])
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facebeam ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", help="emotion models: names in models/weights or .keras paths with sidecars")
    p.add_argument("--views", default="multi", choices=TTA_MODES, help="views of each face every member scores")
    p.add_argument("--name", default="emotion_ensemble", help="file name (without .keras) of the model")
    p.add_argument("--out", default="runs/out", help="where the model and its record go")
    p.add_argument("--data_dir", default=str(fdata.default_data_dir()), help="folder holding fer2013/")
    p.add_argument("--limit", type=number(int, at_least=0), default=0,
                   help="score only the first N PublicTest faces (smoke runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command = "python -m models.ensemble " + shlex.join(argv)
    try:
        ensemble_emotion(args)
    except (ValueError, OSError, ModelIntegrityError) as e:
        print(f"facebeam ensemble: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
