"""Embedding + small classifier: one of our emotion networks' penultimate features into a small MLP.

    python -m models.train emotion-embedding --base models/weights/emotion_v2.keras \\
        --workdir runs/emotion_embedding --out runs/out --name emotion_embedding

The base network stays frozen. Its ``embedding`` layer (the 128 features before the softmax) is
computed once for the FER2013 Training faces, plus ``--views - 1`` randomly augmented copies of them
(the base's own training augmentation), cached in ``--workdir``; an MLP is trained on those features
and selected on PublicTest, resumable like the other recipes. The model written is one plain Keras
model, faces -> probabilities (the frozen base up to its embedding, then the MLP), with the same
sidecar figures as ``models.train emotion``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from models import data as fdata
from models.args import number
from models.registry import DEFAULT_MODELS

LOG = logging.getLogger("facebeam.train")

__all__ = ["add_arguments", "feature_extractor", "mlp_head", "train_emotion_embedding", "EMBEDDING_LAYER"]

# The layer of emotion_net whose output is the embedding (models.networks).
EMBEDDING_LAYER = "embedding"


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The emotion-embedding recipe's flags, on ``models.train``'s subcommand parser."""
    s.add_argument("--base", default=DEFAULT_MODELS["emotion"],
                   help="shipped emotion model name or .keras path with sidecar")
    s.add_argument("--data_dir", default=str(fdata.default_data_dir()), help="folder holding fer2013/")
    s.add_argument("--workdir", default="runs/emotion_embedding", help="features and checkpoints; rerun to resume")
    s.add_argument("--out", default="runs/out", help="where the best model and its record go")
    s.add_argument("--name", default="emotion_embedding", help="file name (without .keras) of the model")
    s.add_argument("--epochs", type=number(int, at_least=1), default=30, help="epochs of the classifier's schedule")
    s.add_argument("--stop_after", type=number(int, at_least=0), default=0,
                   help="end this sitting after this many more epochs (0: the rest of the schedule); rerun to go on")
    s.add_argument("--batch_size", type=number(int, at_least=1), default=256, help="training batch size")
    s.add_argument("--lr", type=number(above=0), default=1e-3, help="peak learning rate (AdamW, cosine)")
    s.add_argument("--weight_decay", type=number(at_least=0), default=1e-4, help="AdamW weight decay")
    s.add_argument("--hidden", type=number(int, at_least=1), default=256, help="units of the MLP's hidden layer")
    s.add_argument("--dropout", type=number(at_least=0, below=1), default=0.5,
                   help="dropout on the features and the hidden layer")
    s.add_argument("--views", type=number(int, at_least=1), default=1,
                   help="feature passes over the training faces: 1 plain, then augmented copies")
    s.add_argument("--label_set", default="7", choices=sorted(fdata.LABEL_SETS), help="7, 6 or 5 classes")
    s.add_argument("--clean", action="store_true", help="drop FER+ 'not a face' images from training")
    s.add_argument("--class_weight", action="store_true", help="weight the loss by inverse class frequency")
    s.add_argument("--seed", type=number(int, at_least=0, at_most=2 ** 32 - 1), default=1,
                   help="random seed (data order, init, augmented views)")
    s.add_argument("--threads", type=number(int, at_least=0), default=0, help="TF intra-op threads (0: all cores)")
    s.add_argument("--limit", type=number(int, at_least=0), default=0, help="use only the first N faces (smoke runs)")


def feature_extractor(base):
    """The functional ``base`` up to its embedding layer: faces -> (N, D) features."""
    import keras

    try:
        layer = base.get_layer(EMBEDDING_LAYER)
    except ValueError:
        raise ValueError(f"model {base.name!r} has no {EMBEDDING_LAYER!r} layer; "
                         "use one of the emotion networks of models.networks as --base") from None
    return keras.Model(base.inputs, layer.output, name="features")


def mlp_head(dim: int, num_classes: int, hidden: int, dropout: float, seed: int):
    """(N, dim) features -> (N, num_classes) softmax: dropout, one ReLU layer, dropout, softmax."""
    import keras
    from keras import layers

    inputs = keras.Input((dim,), name="features")
    x = layers.Dropout(dropout, seed=seed, name="head_dropout_in")(inputs)
    x = layers.Dense(hidden, activation="relu", name="head_hidden")(x)
    x = layers.Dropout(dropout, seed=seed + 1, name="head_dropout")(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax", name="emotion")(x), name="head")


def _features(extractor, images: np.ndarray, views: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """(views * N, D) features of uint8 (N, 48, 48) faces: plain, then ``views - 1`` augmented copies."""
    from models.augment import AUGMENTATION, augment_batch

    out = [extractor.predict(images[..., None].astype(np.float32), batch_size=batch_size, verbose=0)]
    rng = np.random.default_rng(seed)
    for _ in range(views - 1):
        copies = augment_batch(images, AUGMENTATION["emotion"], rng)[..., None].astype(np.float32)
        out.append(extractor.predict(copies, batch_size=batch_size, verbose=0))
    return np.concatenate(out).astype(np.float32)


def features_key(base_sha256: str, views: int, seed: int, images: np.ndarray) -> str:
    """The key of cached training features: the base, the views and their seed, and the faces' pixels
    (not ``--data_dir`` or the selection flags: features made from other faces are never reused)."""
    return json.dumps([base_sha256, views, seed, fdata.faces_digest(images)])


def _cached_features(path: Path, key: str, compute) -> tuple[np.ndarray, float]:
    """(features, seconds spent computing them), read from ``path`` when it was written for ``key``."""
    cached = fdata.load_cache(path)
    if cached is not None and str(cached.get("key")) == key:
        return cached["features"], float(cached["seconds"])
    start = time.time()
    features = compute()
    seconds = time.time() - start
    fdata.save_cache(path, features=features, key=key, seconds=seconds)
    return features, seconds


def train_emotion_embedding(args: argparse.Namespace) -> dict:
    """Trains the MLP on the base's features and writes the composed model with its sidecar."""
    import keras

    from models.feed import Batches
    from models.registry import load_checked, resolve
    from models.train import (FGSM_EPS, cosine_schedule, emotion_faces, emotion_record, fit_resumable,
                              inverse_frequency_weights, read_history, read_sittings, train_seconds, write_outputs)

    keras.utils.set_random_seed(args.seed)
    if args.views < 1:
        raise ValueError(f"--views must be at least 1, not {args.views}")
    spec = resolve(args.base, "emotion")
    base = load_checked(spec)
    extractor = feature_extractor(base)
    classes = fdata.LABEL_SETS[args.label_set][0]
    train, test = emotion_faces(args)
    workdir = Path(args.workdir)
    key = features_key(spec.sha256, args.views, args.seed, train.images)
    f_tr, feature_seconds = _cached_features(workdir / "train_features.npz", key,
                                             lambda: _features(extractor, train.images, args.views, args.seed))
    f_te = _features(extractor, test.images, 1, args.seed)
    t_tr = np.concatenate([train.targets] * args.views)
    y_tr = np.concatenate([train.labels] * args.views)
    class_weight = inverse_frequency_weights(y_tr, len(classes)) if args.class_weight else None

    def dataset(f, t, shuffle):
        return Batches(f, t, args.batch_size, shuffle, args.seed)

    head = mlp_head(f_tr.shape[1], len(classes), args.hidden, args.dropout, args.seed)
    steps = int(np.ceil(len(f_tr) / args.batch_size))
    head.compile(
        optimizer=keras.optimizers.AdamW(cosine_schedule(args.lr, steps, args.epochs, 1.0),
                                         weight_decay=args.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    LOG.info("emotion-embedding on %s: %d x %d train features, %d test faces", spec.tag, *f_tr.shape, len(f_te))
    best_head, seconds = fit_resumable(head, dataset(f_tr, t_tr, True), dataset(f_te, test.targets, False),
                                       args.epochs, workdir, "val_accuracy", "max", class_weight, args.stop_after,
                                       command=args.command)
    head = keras.models.load_model(best_head, compile=False)
    faces = keras.Input(base.input_shape[1:], name="face")
    model = keras.Model(faces, head(extractor(faces)), name="emotion")
    composed = workdir / "composed.keras"
    model.save(composed)
    history = read_history(workdir)
    head_seconds = train_seconds(history)
    record = {
        "task": "emotion", "classes": list(classes), "input": list(base.input_shape[1:]),
        "template": list(fdata.FER_TEMPLATE), "params": model.count_params(),
        "command": args.command, "recipe": args.recipe, "base": {"model": spec.tag, "path": spec.path},
        "train_faces": int(len(train.labels)), "train_features": int(len(f_tr)),
        "feature_seconds": round(feature_seconds, 1), "train_seconds_this_sitting": round(seconds, 1),
        # The base's own training time is in its sidecar; this is the features plus the classifier.
        "train_seconds": None if head_seconds is None else round(feature_seconds + head_seconds, 1),
        "history": history, "sittings": read_sittings(workdir),
        **emotion_record(model, test, classes, FGSM_EPS),
    }
    write_outputs(composed, Path(args.out), args.name, record)
    LOG.info("PublicTest accuracy %.4f (flip TTA %.4f)", record["public_test"]["accuracy"],
             record["public_test_tta"]["accuracy"])
    return record

