"""Training recipes for the emotion and the age + gender models, seeded and resumable.

    python -m models.train emotion --epochs 14 --workdir runs/emotion --out runs/out
    python -m models.train age-gender --epochs 12 --workdir runs/age_gender --out runs/out
    python -m models.train emotion-embedding --base models/weights/emotion_v2.keras --workdir runs/emb

Each epoch is checkpointed in ``--workdir`` (weights, optimizer and schedule state), so a killed run
started again with the same command resumes at the last finished epoch. The best epoch on the
validation data is kept and written to ``--out`` with a JSON record of the recipe and its figures.

``--adv_multiplier M --adv_step S`` adds adversarial regularization (``models.adversarial``). The
emotion recipe ends by fitting a softmax temperature on its validation data (``models.calibration``)
and records it in the sidecar with the ECE before and after; the pipeline applies it at inference.
``--teacher MODEL`` distils finished models, scored with test-time augmentation, into the network
(``models.distill``); ``--swa_from K`` averages the weights of its last epochs (``models.swa``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from models import data as fdata
from models.args import number
from models.metrics import age_gender_report, classification_report
from models.registry import sha256_of
from models.tta import TTA_MODES

LOG = logging.getLogger("facebeam.train")

__all__ = [
    "main", "parse_args", "run", "train_emotion", "train_age_gender", "emotion_predict", "age_gender_predict",
    "fit_resumable", "check_recipe", "RecipeMismatch", "TrainingDiverged", "read_history", "read_sittings",
    "check_out", "write_outputs", "write_sidecar", "emotion_record", "emotion_faces",
    "cosine_schedule", "train_seconds", "set_threads", "inverse_frequency_weights", "FGSM_EPS",
]

# FGSM step on the [0, 1] pixel scale: the default adversarial step, and the eps of the robustness
# figure every emotion record carries (about 2.5 grey levels of 255).
FGSM_EPS = 0.01


def set_threads(threads: int) -> None:
    """TF's thread pools (0: TF's default, all cores); only before TF has run anything.

    Other Keras backends (``KERAS_BACKEND=jax`` or ``torch``) keep their own defaults.
    """
    import keras

    if threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


def cosine_schedule(lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float):
    """Linear warm-up from lr / 10 to ``lr`` over ``warmup_epochs``, then cosine decay to lr / 100."""
    import keras

    warmup = int(steps_per_epoch * warmup_epochs)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10, decay_steps=max(steps_per_epoch * epochs - warmup, 1),
        warmup_target=lr, warmup_steps=warmup, alpha=0.01)


def _oversample(labels: np.ndarray, floor: float, rng: np.random.Generator) -> np.ndarray:
    """Indices that repeat each class up to ``floor`` x the largest class's count."""
    counts = np.bincount(labels)
    target = int(counts.max() * floor)
    idx = [np.arange(len(labels))]
    for c, n in enumerate(counts):
        if 0 < n < target:
            idx.append(rng.choice(np.flatnonzero(labels == c), target - n, replace=True))
    return np.concatenate(idx)


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Keras class weights N / (C * count) for int ``labels``: every class weighs as much in the loss."""
    counts = np.bincount(labels, minlength=num_classes)
    return {i: float(len(labels) / (num_classes * max(c, 1))) for i, c in enumerate(counts)}


def fit_resumable(model, train_ds, val_ds, epochs: int, workdir: Path, monitor: str, mode: str, class_weight=None,
                  stop_after: int = 0, keep=None, command: str | None = None, snapshot_from: int = 0):
    """Trains to ``epochs`` (or ``stop_after`` more of them), resuming from ``workdir``'s last epoch.

    Returns (path of the best epoch's model, seconds of this sitting). ``keep`` is the model saved
    as the best epoch when it is not ``model`` itself (a training wrapper's inner model). Each
    sitting is logged with ``command`` and the schedule's length, so a run whose schedule was
    extended (rerun with more ``epochs`` in the same workdir) says so in its record. A run
    whose history already holds ``epochs`` epochs is not fitted again: its kept model is the
    result, so a run trained elsewhere (its ``best.keras``, ``history.csv`` and ``recipe.json``
    copied over, say from a GPU machine with another Keras backend) is finished here by the same
    command (a longer schedule needs its ``backup/`` too, the state training goes on from). With
    ``snapshot_from``, the weights at the end of every epoch from that (1-based) one on are kept
    too, for ``models.swa``.
    """
    import keras

    from models.callbacks import AtomicBackup, EpochSeconds, EpochWeights, KeepBest, SittingLog, backed_up_epochs

    workdir.mkdir(parents=True, exist_ok=True)
    best = workdir / "best.keras"
    history_path = workdir / "history.csv"
    history = read_history(workdir)
    if len(history) > epochs:
        raise RecipeMismatch(f"{workdir} holds {len(history)} trained epochs; a schedule can only grow "
                             f"(give --epochs {len(history)} or more, or use another --workdir)")
    if best.exists() and len(history) >= epochs:
        LOG.info("%s: all %d epochs trained; using its kept model", workdir, epochs)
        return best, 0.0
    # The backup is written last at the end of an epoch: where a kill came before it, the epochs the
    # history has beyond it are trained again (read_history keeps an epoch's latest row).
    done = backed_up_epochs(workdir / "backup")
    if done is None and history:
        # fit would start over from fresh weights and write over the history of the epochs trained
        raise RecipeMismatch(f"{workdir} holds {len(history)} trained epochs but not their training state (its "
                             f"backup/ folder) to go on from: give --epochs {len(history)} to finish with its kept "
                             "model, or use another --workdir")
    done = min(done or 0, len(history))
    history = history[:done]
    target = min(done + stop_after, epochs) if stop_after else epochs
    seen = [h[monitor] for h in history if monitor in h] if best.exists() else []
    # The backup resumes the weights and the optimizer at epoch ``done``; the batches too, or every
    # sitting would start over with the first epoch's order and augmented faces.
    if hasattr(train_ds, "start_at"):
        train_ds.start_at(done)
    sitting = SittingLog(workdir / "sittings.jsonl", _sitting_line(done, epochs, command))
    callbacks = [
        keras.callbacks.TerminateOnNaN(),  # a diverged run ends at its first NaN batch, not after every epoch
        EpochSeconds(),
        KeepBest(best, monitor, mode, (max if mode == "max" else min)(seen) if seen else None, keep),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        sitting,  # after the CSVLogger: the line never names an epoch the history lacks
        # Last, and kept after the last epoch, so that a sitting ended by --stop_after can be resumed.
        AtomicBackup(str(workdir / "backup"), delete_checkpoint=False),
    ]
    if snapshot_from:
        callbacks.insert(1, EpochWeights(workdir, snapshot_from, keep))
    # shuffle=False: the batches are shuffled per epoch, seeded, by the dataset itself (models.feed);
    # Keras' own shuffling of their order restarts with every sitting.
    model.fit(train_ds, validation_data=val_ds, epochs=target, callbacks=callbacks,
              class_weight=class_weight, verbose=2, shuffle=False)
    trained = read_history(workdir)
    diverged = [int(h["epoch"]) + 1 for h in trained if not _finite_losses(h)]
    if diverged or len(trained) < target or not best.exists():
        # TerminateOnNaN ended it, or no epoch had a finite loss to keep
        raise TrainingDiverged(f"{workdir}: the training diverged (its loss became NaN"
                               + (f" at epoch {diverged[0]}" if diverged else "")
                               + "); train again with a lower --lr in a new --workdir")
    return best, sitting.seconds


def _finite_losses(logs: dict) -> bool:
    """Whether an epoch's training and validation losses are numbers (a diverged run's are NaN)."""
    return all(math.isfinite(logs.get(k, 0.0)) for k in ("loss", "val_loss"))


def _sitting_line(first: int, schedule: int, command: str | None = None) -> dict:
    """The ``sittings.jsonl`` line of a sitting that starts after epoch ``first``: of which schedule,
    by which command, where (``SittingLog`` adds the epochs it finished and its seconds)."""
    import platform

    import keras

    line = {"epochs": [first, first], "schedule": schedule, "seconds": 0.0,
            "backend": keras.backend.backend(), "device": _device_name(), "host": platform.node()}
    if command:
        line["command"] = command
    return line


def read_sittings(workdir: Path) -> list[dict]:
    """The sittings ``fit_resumable`` logged in ``workdir`` (backend, device, epochs, seconds)."""
    path = workdir / "sittings.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _device_name() -> str:
    """The accelerator the backend trains on ("cpu" without one)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            return "cpu" if device.platform == "cpu" else f"{device.platform}: {device.device_kind}"
        if backend == "torch":
            import torch

            return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return f"gpu: {gpus[0].name}" if gpus else "cpu"
    except Exception:  # noqa: BLE001 - a label only
        pass
    return "unknown"


def read_history(workdir: Path) -> list[dict]:
    """One dict per finished epoch of ``workdir``'s run, over all its sittings."""
    import csv

    path = workdir / "history.csv"
    if not path.exists():
        return []
    rows: dict[int, dict] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("epoch", "epoch") == "epoch":
                continue
            rows[int(row["epoch"])] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [rows[k] for k in sorted(rows)]


def write_outputs(model_path: Path | str, out: Path, name: str, record: dict, model=None) -> Path:
    """Saves the model of ``model_path`` (or ``model``), without optimizer state, to ``out/name.keras``
    with its sidecar ``out/name.json``, each file written whole. A file there already holding the same
    network and weights is kept as it is: Keras stamps each save with its date, so saving it again
    would change its sha256 (a shipped model's is pinned) for the same model."""
    import keras

    from models.registry import replaced_whole

    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.keras"
    # Loading uncompiled drops the optimizer's moments: a third of the size of the checkpoint.
    model = model if model is not None else keras.models.load_model(model_path, compile=False)
    if _same_model(target, model):
        LOG.info("%s holds this model already; kept", target)
    else:
        with replaced_whole(target) as part:
            model.save(part)
    return write_sidecar(target, record)


def _same_model(path: Path, model) -> bool:
    """Whether the ``.keras`` file ``path`` holds ``model``'s network with its weights."""
    import keras

    if not path.is_file():
        return False
    try:
        kept = keras.models.load_model(path, compile=False)
    except Exception:  # a file cut short or of another kind: written anew
        return False
    return kept.to_json() == model.to_json() and len(kept.weights) == len(model.weights) and all(
        np.array_equal(a, b) for a, b in zip(kept.get_weights(), model.get_weights()))


def write_sidecar(target: Path, record: dict) -> Path:
    """Adds the sha256 and size of the saved model ``target`` to ``record`` and writes it beside it
    as ``target.json`` (whole); returns ``target``."""
    from models.registry import replaced_whole

    record["sha256"] = sha256_of(target)
    record["bytes"] = target.stat().st_size
    with replaced_whole(target.with_suffix(".json")) as part:
        Path(part).write_text(json.dumps(record, indent=2) + "\n")
    LOG.info("wrote %s (sha256 %s)", target, record["sha256"])
    return target


def emotion_predict(model, images: np.ndarray, tta: bool | str, batch_size: int = 256) -> np.ndarray:
    """Softmax (N, C) for uint8 (N, 48, 48) faces; with ``tta`` (``models.tta``: True or "flip", or
    "multi"), averaged over the views. The views are made of float32 pixels, as the pipeline's model
    handler makes them (zooming uint8 faces would round the interpolated pixels)."""
    from models.tta import views

    return np.mean([model.predict(v[..., None], batch_size=batch_size, verbose=0)
                    for v in views(np.asarray(images, np.float32), tta)], axis=0)


def warm_start(base, init: str | None, task: str) -> dict | None:
    """Copies the weights of model ``init`` (a name in models/weights, or a ``.keras`` path with its
    sidecar; sha256 checked) into ``base``, the recipe's freshly built network, and returns what
    the sidecar records of the start: its name, sha256 and the commands that trained it. None
    without ``init``. The optimizer and its schedule start afresh: a warm restart."""
    if not init:
        return None
    from models.card import provenance
    from models.registry import load_checked, resolve

    spec = resolve(init, task)
    source = load_checked(spec)
    try:
        base.set_weights(source.get_weights())
    except ValueError as e:
        raise ValueError(f"--init {init}: its network is not the one this recipe builds (give its --arch, "
                         f"--widths and classes): {e}") from None
    LOG.info("starting from %s (sha256 %s)", spec.name, spec.sha256[:12])
    return provenance(spec)


def _wrap_adversarial(base, args: argparse.Namespace):
    """``base`` itself, or the adversarial training wrapper around it."""
    if not args.adv_multiplier:
        return base
    from models.adversarial import AdversarialRegularization

    return AdversarialRegularization(base, args.adv_multiplier, args.adv_step)


def _batches(args: argparse.Namespace, task: str, x, targets, training: bool):
    """The recipe's batches: training ones shuffled and (unless --no_augment) augmented."""
    from models.augment import AUGMENTATION
    from models.feed import Batches

    augment = AUGMENTATION[task] if training and not args.no_augment else None
    return Batches(x, targets, args.batch_size, shuffle=training, seed=args.seed, augment=augment,
                   workers=args.workers)


def emotion_faces(args: argparse.Namespace) -> tuple[fdata.EmotionTargets, fdata.EmotionTargets]:
    """(training faces, PublicTest faces) of the recipe's label set, cleaning, soft labels and limit."""
    data_dir = Path(args.data_dir)
    train = fdata.emotion_targets(fdata.load_fer(data_dir / "fer2013" / "fer2013_Training.npz"), args.label_set,
                                  clean=args.clean, soft=getattr(args, "soft_labels", False))
    # PublicTest is never cleaned: every recipe is scored on the same faces.
    test = fdata.emotion_targets(fdata.load_fer(data_dir / "fer2013" / "fer2013_PublicTest.npz"), args.label_set)
    if args.limit:
        train = fdata.EmotionTargets(*(a[:args.limit] for a in train))
        test = fdata.EmotionTargets(*(a[:args.limit] for a in test))
    return train, test


def emotion_record(model, test: fdata.EmotionTargets, classes: tuple[str, ...], fgsm_eps: float,
                   tta: bool = True) -> dict:
    """PublicTest figures of an emotion model: plain, with flip and multi TTA (unless not ``tta``),
    temperature, accuracy under FGSM."""
    from models.adversarial import accuracy_under_fgsm
    from models.calibration import calibration_record
    from models.tta import means_by_mode, views

    if tta:
        probs = means_by_mode([emotion_predict(model, v, tta=False)
                               for v in views(np.asarray(test.images, np.float32), "multi")])
    else:
        probs = {"none": emotion_predict(model, test.images, tta=False)}
    by_mode = {mode: calibration_record(p, test.labels, test.filenames, "PublicTest") for mode, p in probs.items()}
    calibration = by_mode["none"]
    return {
        "public_test": classification_report(test.labels, probs["none"], classes),
        **{key: classification_report(test.labels, probs[mode], classes)
           for key, mode in (("public_test_tta", "flip"), ("public_test_tta_multi", "multi")) if mode in probs},
        # Fitted on the faces the recipe selects on; ece_after_cross_fitted fits each half on the other.
        "temperature": calibration["temperature"],
        "calibration": calibration,
        # One per TTA mode, fitted on the mean probabilities over its views (what the pipeline averages).
        "temperatures": {mode: c["temperature"] for mode, c in by_mode.items()},
        "calibration_by_tta": by_mode,
        "public_test_fgsm": {"eps": fgsm_eps,
                             "accuracy": accuracy_under_fgsm(model, test.images, test.labels, fgsm_eps)},
    }


def train_emotion(args: argparse.Namespace) -> dict:
    import keras

    from models.networks import emotion_net

    keras.utils.set_random_seed(args.seed)
    classes = fdata.LABEL_SETS[args.label_set][0]
    rng = np.random.default_rng(args.seed)
    train, test = emotion_faces(args)
    x_tr, t_tr, y_tr = train.images, train.targets, train.labels
    x_te, t_te = test.images, test.targets
    distill = None
    if args.teacher:
        from models.distill import mix_targets, soften, teacher_targets

        teacher, distill = teacher_targets(args.teacher, x_tr, classes, args.teacher_tta, Path(args.workdir))
        distill.update(weight=args.distill, temperature=args.teacher_temperature,
                       train_accuracy=float(np.mean(teacher.argmax(1) == y_tr)))
        LOG.info("teachers %s agree with %.1f%% of the training labels", args.teacher, 100 * distill["train_accuracy"])
        t_tr = mix_targets(t_tr, soften(teacher, args.teacher_temperature), args.distill)
    faces = len(x_tr)
    if args.oversample:
        idx = _oversample(y_tr, args.oversample, rng)
        x_tr, t_tr, y_tr = x_tr[idx], t_tr[idx], y_tr[idx]
    class_weight = inverse_frequency_weights(y_tr, len(classes)) if args.class_weight else None

    steps = int(np.ceil(len(x_tr) / args.batch_size))

    def build():
        return emotion_net(num_classes=len(classes), arch=args.arch, widths=tuple(args.widths), dropout=args.dropout)

    base = build()
    init = warm_start(base, args.init, "emotion")
    model = _wrap_adversarial(base, args)
    model.compile(
        optimizer=keras.optimizers.AdamW(cosine_schedule(args.lr, steps, args.epochs, 1.0),
                                         weight_decay=args.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    LOG.info("emotion: %d train / %d test faces, %d params", len(x_tr), len(x_te), base.count_params())
    best, seconds = fit_resumable(model, _batches(args, "emotion", x_tr[..., None], t_tr, True),
                                  _batches(args, "emotion", x_te[..., None], t_te, False), args.epochs,
                                  Path(args.workdir), "val_accuracy", "max", class_weight, args.stop_after,
                                  keep=base if model is not base else None, command=args.command,
                                  snapshot_from=args.swa_from)
    history = read_history(Path(args.workdir))
    swa = None
    if args.swa_from:
        best, swa = _swa_emotion(args, best, len(history), _batches(args, "emotion", x_tr[..., None], t_tr, True),
                                 test, build)
    model = keras.models.load_model(best, compile=False)
    record = {
        "task": "emotion", "classes": list(classes), "input": [48, 48, 1], "template": list(fdata.FER_TEMPLATE), "params": model.count_params(),
        "command": args.command, "recipe": args.recipe, "train_faces": int(faces),
        **({"train_samples": int(len(x_tr))} if len(x_tr) != faces else {}),  # with the oversampled copies
        "train_seconds_this_sitting": round(seconds, 1), "train_seconds": train_seconds(history), "history": history,
        "sittings": read_sittings(Path(args.workdir)), **({"init": init} if init else {}),
        **({"swa": swa} if swa else {}), **({"distill": distill} if distill else {}),
        **emotion_record(model, test, classes, args.adv_step),
    }
    write_outputs(best, Path(args.out), args.name, record)
    LOG.info("PublicTest accuracy %.4f (flip TTA %.4f); temperature %.3f", record["public_test"]["accuracy"],
             record["public_test_tta"]["accuracy"], record["temperature"])
    return record


def _swa_emotion(args: argparse.Namespace, best: Path, epochs: int, train_batches, test: fdata.EmotionTargets,
                 build) -> tuple[Path, dict | None]:
    """(the run's model, the sidecar's ``swa`` record) after weight averaging (``models.swa``): the
    mean of the weights kept from epoch ``--swa_from`` to ``epochs``, batch-norm statistics
    recomputed on ``train_batches``, replaces ``best`` (the best single epoch) when it scores
    higher on PublicTest, the data every recipe selects on. ``build`` makes the recipe's network."""
    import keras

    from models.swa import average_weights, recalibrate_batch_norm, snapshot_paths

    workdir = Path(args.workdir)
    paths = snapshot_paths(workdir, args.swa_from, epochs)
    if len(paths) < 2:
        LOG.warning("--swa_from %d: the weights of %d epochs are kept in %s; averaging needs 2 or more",
                    args.swa_from, len(paths), workdir)
        return best, None

    def accuracy(model) -> float:
        return float(np.mean(emotion_predict(model, test.images, tta=False).argmax(1) == test.labels))

    average = build()
    average_weights(average, list(paths.values()))
    seen = recalibrate_batch_norm(average, train_batches)
    record = {"from_epoch": args.swa_from, "epochs": sorted(paths), "batch_norm_faces": seen,
              "accuracy": accuracy(average),
              "best_epoch_accuracy": accuracy(keras.models.load_model(best, compile=False))}
    record["kept"] = "average" if record["accuracy"] > record["best_epoch_accuracy"] else "best epoch"
    LOG.info("weights of epochs %s averaged: PublicTest %.4f against %.4f for the best epoch; keeping the %s",
             record["epochs"], record["accuracy"], record["best_epoch_accuracy"], record["kept"])
    if record["kept"] == "best epoch":
        return best, record
    path = workdir / "swa.keras"
    average.save(path)
    return path, record


def train_seconds(history: list[dict]) -> float | None:
    """Seconds of training over all sittings (None when the epochs were not timed)."""
    times = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    return round(sum(times), 1) if times and len(times) == len(history) else None


def age_gender_predict(model, images: np.ndarray, tta: bool | str = False, batch_size: int = 256):
    """(age years (N,), P(female) (N,)) for uint8 RGB (N, S, S, 3) faces; with ``tta``, averaged over
    the views (``models.tta``), made of float32 pixels as in ``emotion_predict``."""
    from models.tta import views

    outs = [model.predict(v, batch_size=batch_size, verbose=0) for v in views(np.asarray(images, np.float32), tta)]
    return (np.mean([o["age"][:, 0] for o in outs], axis=0), np.mean([o["gender"][:, 0] for o in outs], axis=0))


def age_gender_record(model, val: fdata.UtkData) -> dict:
    """Validation figures of an age/gender model on the faces ``val``: plain, with flip and multi TTA."""
    from models.tta import means_by_mode, views

    per_view = [age_gender_predict(model, v) for v in views(np.asarray(val.images, np.float32), "multi")]
    age, p_female = (means_by_mode([p[k] for p in per_view]) for k in (0, 1))
    return {key: age_gender_report(val.age, val.gender, age[mode], p_female[mode], val.race)
            for key, mode in (("validation", "none"), ("validation_tta", "flip"), ("validation_tta_multi", "multi"))}


def train_age_gender(args: argparse.Namespace) -> dict:
    import keras

    from models.networks import age_gender_net

    keras.utils.set_random_seed(args.seed)
    utk = fdata.load_utkface(Path(args.data_dir) / "utkface" / "utkface_train.npz", size=args.size)
    val = fdata.validation_mask(utk.filenames)
    tr = np.flatnonzero(~val)
    va = np.flatnonzero(val)
    if args.limit:
        tr, va = tr[:args.limit], va[:args.limit]

    def dataset(idx, training):
        targets = {"age": utk.age[idx, None].astype(np.float32), "gender": utk.gender[idx, None].astype(np.float32)}
        return _batches(args, "age-gender", utk.images[idx], targets, training)

    steps = int(np.ceil(len(tr) / args.batch_size))
    base = age_gender_net(input_size=args.size, arch=args.arch, widths=tuple(args.widths), dropout=args.dropout,
                          mean_age=float(utk.age[tr].mean()))
    init = warm_start(base, args.init, "age-gender")
    model = _wrap_adversarial(base, args)
    model.compile(
        optimizer=keras.optimizers.AdamW(cosine_schedule(args.lr, steps, args.epochs, 1.0),
                                         weight_decay=args.weight_decay),
        # Huber on years (L1 beyond 5 years), weighted so both heads contribute gradients of similar size.
        loss={"age": keras.losses.Huber(delta=5.0), "gender": keras.losses.BinaryCrossentropy()},
        loss_weights={"age": args.age_loss_weight, "gender": 1.0},
        metrics={"age": [keras.metrics.MeanAbsoluteError(name="mae")],
                 "gender": [keras.metrics.BinaryAccuracy(name="accuracy")]},
    )
    LOG.info("age-gender: %d train / %d validation faces, %d params", len(tr), len(va), base.count_params())
    best, seconds = fit_resumable(model, dataset(tr, True), dataset(va, False), args.epochs, Path(args.workdir),
                                  "val_loss", "min", stop_after=args.stop_after,
                                  keep=base if model is not base else None, command=args.command)
    model = keras.models.load_model(best, compile=False)
    history = read_history(Path(args.workdir))
    record = {
        "task": "age-gender", "input": [args.size, args.size, 3], "template": list(fdata.UTK_TEMPLATE), "params": model.count_params(),
        "command": args.command, "recipe": args.recipe, "train_faces": int(len(tr)),
        "train_seconds_this_sitting": round(seconds, 1), "train_seconds": train_seconds(history), "history": history,
        "sittings": read_sittings(Path(args.workdir)), **({"init": init} if init else {}),
        **age_gender_record(model, fdata.UtkData(*(a[va] for a in utk))),
    }
    write_outputs(best, Path(args.out), args.name, record)
    LOG.info("validation age MAE %.2f, gender %.4f", record["validation"]["age_mae"],
             record["validation"]["gender_accuracy"])
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facebeam train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True)
    for task, defaults in (
        ("emotion", dict(epochs=14, lr=2e-3, dropout=0.4, name="emotion", widths=[32, 64, 128, 256])),
        ("age-gender", dict(epochs=12, lr=2e-3, dropout=0.3, name="age_gender", widths=[32, 64, 128, 256])),
    ):
        s = sub.add_parser(task, help=f"train the {task} model")
        s.add_argument("--data_dir", default=str(fdata.default_data_dir()), help="folder holding fer2013/ and utkface/")
        s.add_argument("--workdir", default=f"runs/{defaults['name']}", help="checkpoints; rerun to resume")
        s.add_argument("--out", default="runs/out", help="where the best model and its record go")
        s.add_argument("--name", default=defaults["name"], help="file name (without .keras) of the model")
        s.add_argument("--epochs", type=number(int, at_least=1), default=defaults["epochs"],
                       help="epochs in the schedule")
        s.add_argument("--stop_after", type=number(int, at_least=0), default=0,
                       help="end this sitting after this many more epochs (0: the rest of the schedule); rerun to "
                            "go on")
        s.add_argument("--batch_size", type=number(int, at_least=1), default=128, help="training batch size")
        s.add_argument("--lr", type=number(above=0), default=defaults["lr"], help="peak learning rate (AdamW, cosine)")
        s.add_argument("--weight_decay", type=number(at_least=0), default=1e-4, help="AdamW weight decay")
        s.add_argument("--dropout", type=number(at_least=0, below=1), default=defaults["dropout"],
                       help="dropout before the head")
        s.add_argument("--arch", default="vgg", choices=("vgg", "small", "resnet"), help="backbone")
        s.add_argument("--widths", type=number(int, at_least=1), nargs="+", default=defaults["widths"],
                       help="filters per block")
        s.add_argument("--init", default=None,
                       help="start from this model's weights (a name in models/weights, or a .keras path with its "
                            "sidecar) with a fresh schedule: a warm restart of a finished model; same network")
        s.add_argument("--no_augment", action="store_true", help="train without augmentation")
        s.add_argument("--seed", type=number(int, at_least=0, at_most=2 ** 32 - 1), default=1,
                       help="random seed (data order, init, augmentation)")
        s.add_argument("--threads", type=number(int, at_least=0), default=0, help="TF intra-op threads (0: all cores)")
        s.add_argument("--workers", type=number(int, at_least=1), default=1,
                       help="threads preparing (augmenting) batches")
        s.add_argument("--limit", type=number(int, at_least=0), default=0,
                       help="use only the first N faces (smoke runs)")
        s.add_argument("--adv_multiplier", type=number(at_least=0), default=0.0,
                       help="weight of the adversarial loss (0: off); e.g. 0.3 with --adv_step 0.01")
        s.add_argument("--adv_step", type=number(above=0), default=FGSM_EPS,
                       help="adversarial step on the [0, 1] pixel scale (also the FGSM eps the emotion record reports)")
        if task == "emotion":
            s.add_argument("--label_set", default="7", choices=sorted(fdata.LABEL_SETS), help="7, 6 or 5 classes")
            s.add_argument("--class_weight", action="store_true", help="weight the loss by inverse class frequency")
            s.add_argument("--oversample", type=number(at_least=0), default=0.0,
                           help="repeat minority classes up to this fraction of the largest class")
            s.add_argument("--clean", action="store_true", help="drop FER+ 'not a face' images")
            s.add_argument("--soft_labels", action="store_true", help="train on FER+ vote distributions")
            s.add_argument("--label_smoothing", type=number(at_least=0, below=1), default=0.0, help="label smoothing")
            s.add_argument("--swa_from", type=number(int, at_least=0), default=0,
                           help="keep each epoch's weights from this (1-based) one on and make their average, "
                                "batch-norm statistics recomputed, the model where it beats the best epoch (0: off)")
            s.add_argument("--teacher", nargs="+", default=None, metavar="MODEL",
                           help="distil these emotion models (names in models/weights, or .keras paths with "
                                "sidecars): train on a mix of the labels and their mean output (models.distill)")
            s.add_argument("--teacher_tta", default="multi", choices=TTA_MODES,
                           help="views each teacher's output is averaged over (an ensemble with views of its own: "
                                "those only)")
            s.add_argument("--teacher_temperature", type=number(above=0), default=1.0,
                           help="soften (above 1) or sharpen the teachers' output before mixing")
            s.add_argument("--distill", type=number(at_least=0, at_most=1), default=0.5,
                           help="weight of the teachers' output in the training targets, the labels' is 1 minus it")
        else:
            s.add_argument("--size", type=number(int, at_least=16), default=64, help="input side in pixels")
            s.add_argument("--age_loss_weight", type=number(at_least=0), default=0.05, help="weight of the age loss")
    from models.embedding import add_arguments

    add_arguments(sub.add_parser("emotion-embedding", help="small classifier on an emotion model's embedding"))
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The recipe's arguments, with the exact ``command`` and the ``recipe`` settings a sidecar records."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "swa_from", 0) and args.swa_from >= args.epochs:  # found now, not after the training
        parser.error(f"--swa_from {args.swa_from} leaves fewer than two epochs of the {args.epochs} to average: give "
                     "one below --epochs, or 0 for none")
    args.command = "python -m models.train " + shlex.join(argv)
    args.recipe = {k: v for k, v in vars(args).items()
                   if k not in ("command", "data_dir", "workdir", "out", "threads", "workers", "stop_after")}
    return args


# Settings a later sitting in the same --workdir may change: a longer schedule, another file name.
_MAY_CHANGE = ("epochs", "name")


class RecipeMismatch(ValueError):
    """A --workdir holding a run trained with other settings."""


class TrainingDiverged(ValueError):
    """A run whose loss became NaN or infinite: nothing it trained is kept as a model."""


def check_recipe(workdir: Path, recipe: dict) -> None:
    """Records ``recipe`` (``parse_args``' settings) in ``workdir`` at its first sitting; later
    sittings, once an epoch is trained, must give the same ones (``--epochs`` and ``--name`` aside),
    or their record would describe a model trained otherwise. Raises RecipeMismatch naming the
    settings that differ."""
    path = workdir / "recipe.json"
    recipe = json.loads(json.dumps(recipe))
    # Until an epoch is trained the folder holds no run: a command corrected after a failed start goes on.
    if read_history(workdir) and not path.is_file():
        raise RecipeMismatch(f"{workdir} holds trained epochs but not the recipe.json they were trained with, "
                             "against which this command's settings are checked: copy the whole folder, or use "
                             "another --workdir")
    if path.is_file() and read_history(workdir):
        kept = json.loads(path.read_text())
        changed = sorted(k for k in set(kept) | set(recipe) if k not in _MAY_CHANGE and kept.get(k) != recipe.get(k))
        if changed:
            raise RecipeMismatch(f"{workdir} holds a run trained with other settings ("
                             + ", ".join(f"{k}: {kept.get(k)!r} there, {recipe.get(k)!r} now" for k in changed)
                             + "); rerun with its settings (only --epochs may grow) or use another --workdir")
        return
    from models.registry import replaced_whole

    workdir.mkdir(parents=True, exist_ok=True)
    with replaced_whole(path) as part:
        Path(part).write_text(json.dumps(recipe, indent=2) + "\n")


def check_out(out: Path | str, name: str, inputs: Iterable[tuple[str, str | None]] = ()) -> Path:
    """The folder ``--out`` for ``name``'s files, checked before any work: one the user can make or
    write to, and not the place of a shipped model (its sha256 is pinned, and a retrained model differs
    in every weight, after which the pipeline refuses the file) or of a model the run reads (``inputs``:
    (flag, model) pairs such as ``--init``; the next sitting would read the new file for the old)."""
    from models.registry import SHIPPED, WEIGHTS_DIR

    out = Path(out)
    target = (out / f"{name}.keras").resolve()
    if name in SHIPPED and target == (WEIGHTS_DIR / f"{name}.keras").resolve():
        raise ValueError(f"--out {out} --name {name} would replace the shipped model {name}, whose sha256 "
                         "facebeam pins: write it elsewhere (the default --out is runs/out)")
    for flag, model in inputs:
        if model and Path(model).suffix == ".keras" and Path(model).resolve() == target:
            raise ValueError(f"--out {out} --name {name} would replace {model}, which {flag} reads: give the "
                             "new model another --name or --out")
    # Nothing is made here, so that a run refused later leaves no folder behind; write_outputs makes it.
    there = out.absolute()
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir() or not os.access(there, os.W_OK | os.X_OK):  # found now, not after the training
        raise PermissionError(f"--out {out}: not a folder this user can write to")
    return out


def run(args: argparse.Namespace) -> dict:
    """Trains the recipe of ``parse_args``' result and returns its sidecar record."""
    inputs = [("--init", getattr(args, "init", None)), ("--base", getattr(args, "base", None)),
              *(("--teacher", t) for t in getattr(args, "teacher", None) or ())]
    check_out(args.out, args.name, inputs)
    if not (Path(args.data_dir)).is_dir():
        raise FileNotFoundError(f"--data_dir {args.data_dir}: no such folder (it holds fer2013/ and utkface/, "
                                "see models/data.py)")
    # The models the run reads are part of its recipe by content: a file retrained under the same name
    # would otherwise meet the epochs trained on the old one (a head on another base's features).
    from models.registry import resolve

    task = "age-gender" if args.task == "age-gender" else "emotion"  # --init's; teachers and bases are emotion's
    read = {flag: [resolve(m, task if flag == "--init" else "emotion").sha256 for f, m in inputs if f == flag and m]
            for flag in dict.fromkeys(f for f, m in inputs if m)}
    check_recipe(Path(args.workdir), {**args.recipe, **({"input_sha256": read} if read else {})})
    if args.task == "emotion-embedding":
        from models.embedding import train_emotion_embedding

        return train_emotion_embedding(args)
    return (train_emotion if args.task == "emotion" else train_age_gender)(args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    # TensorFlow's own allocator on CPU keeps the memory it frees for the next step; with the
    # system's, every step's activations were fresh pages: 1.96 -> 1.61 s per step of 128 faces
    # (2 cores), a third of the CPU time spent in the kernel before.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    set_threads(args.threads)
    from models.registry import ModelIntegrityError

    try:
        run(args)
    except (ValueError, OSError, ModelIntegrityError) as e:  # RecipeMismatch and TrainingDiverged too
        print(f"models.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
