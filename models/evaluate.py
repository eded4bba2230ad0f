"""facebeam evaluate: a model's figures on any file of the FER2013 or UTKFace npz layouts.

    python -m models.evaluate emotion --data ../shared/data/fer2013/fer2013_PublicTest.npz --json
    python -m models.evaluate age-gender --data ../shared/data/utkface/utkface_train.npz --split validation

Emotion: accuracy, per-class precision/recall/F1, confusion, ECE; ``--temperature T`` scores the
probabilities softened by a fitted temperature (``models.calibration``), ``--perturb EPS`` adds the
accuracy on FGSM-perturbed faces (``models.adversarial``, EPS on the [0, 1] pixel scale). Age-gender: age MAE, age-group
accuracy, gender accuracy, and the same broken down by age band, gender and race (the bias table).
``--plot DIR`` writes PNG figures (confusion matrix and reliability diagram; age scatter and errors
by age group). ``--record`` writes the recipe's figures of a model into its sidecar, for its card.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from models import data as fdata
from models.metrics import age_gender_report, classification_report, reliability_bins
from models.registry import DEFAULT_MODELS, ModelIntegrityError, load_checked, resolve
from models.tta import TTA_MODES, tta_mode

__all__ = ["evaluate_emotion", "evaluate_age_gender", "main"]


def evaluate_emotion(model, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], tta: bool | str = False,
                     temperature: float | None = None, perturb: float = 0.0):
    """(report dict, probabilities (N, C)) for uint8 (N, 48, 48) faces and int labels.

    ``temperature``: probabilities after temperature scaling; ``perturb``: also report
    ``accuracy_perturbed``, the accuracy on FGSM copies of the faces with eps ``perturb``.
    """
    from models.train import emotion_predict

    probs = emotion_predict(model, images, tta=tta)
    if temperature is not None:
        from models.calibration import apply_temperature

        probs = apply_temperature(probs, temperature)
    report = classification_report(labels, probs, classes)
    report["tta"] = tta_mode(tta)
    if temperature is not None:
        report["temperature"] = temperature
    if perturb:
        from models.adversarial import accuracy_under_fgsm

        report["accuracy_perturbed"] = accuracy_under_fgsm(model, images, labels, perturb, tta=tta)
        report["perturb_eps"] = perturb
    return report, probs


def evaluate_age_gender(model, data: fdata.UtkData, tta: bool | str = False):
    """(report dict, predicted ages (N,), P(female) (N,))."""
    from models.train import age_gender_predict

    age, p_female = age_gender_predict(model, data.images, tta=tta)
    report = age_gender_report(data.age, data.gender, age, p_female, data.race)
    report["tta"] = tta_mode(tta)
    return report, age, p_female


def _plot_emotion(report: dict, labels, probs, classes, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    m = np.array(report["confusion"], float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion (row-normalised), accuracy {report['accuracy']:.3f}")
    fig.colorbar(im)
    fig.tight_layout()
    paths = [directory / "confusion.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    mean_conf, acc, count = reliability_bins(labels, probs)
    used = count > 0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.bar(mean_conf[used], acc[used], width=1 / 15, alpha=0.7, edgecolor="black")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, ECE {report['ece']:.3f}")
    fig.tight_layout()
    paths.append(directory / "reliability.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def _plot_age_gender(report: dict, data: fdata.UtkData, age: np.ndarray, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.scatter(data.age, age, s=3, alpha=0.3)
    a.plot([0, 100], [0, 100], "--", color="grey")
    a.set_xlabel("true age")
    a.set_ylabel("predicted age")
    a.set_title(f"age, MAE {report['age_mae']:.2f}")
    groups = [(g, v) for g, v in report["by_age_group"].items() if v.get("n")]
    b.bar([g for g, _ in groups], [v["age_mae"] for _, v in groups])
    b.set_ylabel("age MAE (years)")
    b.set_title(f"by age group; gender accuracy {report['gender_accuracy']:.3f}")
    b.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    path = directory / "age_gender.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _text(task: str, report: dict) -> str:
    if task == "emotion":
        scaled = f" (temperature {report['temperature']:.3f})" if "temperature" in report else ""
        lines = [f"faces {report['n']}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}, "
                 f"ECE {report['ece']:.4f}{scaled}"]
        if "accuracy_perturbed" in report:
            lines.append(f"accuracy under FGSM eps {report['perturb_eps']}: {report['accuracy_perturbed']:.4f}")
        lines.append("class      precision recall  f1     support")
        lines += [f"{c:<10} {v['precision']:.3f}     {v['recall']:.3f}   {v['f1']:.3f}  {v['support']}"
                  for c, v in report["per_class"].items()]
        return "\n".join(lines)
    lines = [f"faces {report['n']}: age MAE {report['age_mae']:.2f}, age-group accuracy "
             f"{report['age_group_accuracy']:.4f}, gender accuracy {report['gender_accuracy']:.4f}",
             "group            faces  age MAE  gender acc"]
    for key in ("by_age_group", "by_gender", "by_race"):
        for name, g in report.get(key, {}).items():
            if g.get("n"):
                lines.append(f"{key[3:] + ' ' + name:<16} {g['n']:>5}  {g['age_mae']:>7.2f}  {g['gender_accuracy']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(prog="facebeam evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("emotion", "age-gender"), help="which model to evaluate")
    p.add_argument("--data", required=True, help="npz in the FER2013 (emotion) or UTKFace (age-gender) layout")
    p.add_argument("--model", default=None, help="shipped model name or .keras path (default: the shipped one)")
    p.add_argument("--split", choices=("all", "validation", "train"), default="all",
                   help="age-gender: every face, or the held-back validation split (hash of the file name)")
    p.add_argument("--tta", nargs="?", const="flip", default="none", choices=TTA_MODES,
                   help="test-time augmentation: 'flip' (the default of a bare --tta) averages with the mirrored "
                        "faces, 'multi' with zoomed copies too (6 views)")
    p.add_argument("--temperature", type=float, default=None,
                   help="emotion: divide log-probabilities by this fitted temperature (python -m models.calibration)")
    p.add_argument("--calibrated", action="store_true",
                   help="emotion: apply the temperature the model's sidecar records for the --tta mode, as "
                        "'facebeam analyze' does (its probabilities exactly)")
    p.add_argument("--perturb", type=float, default=0.0, metavar="EPS",
                   help="emotion: also report accuracy on FGSM-perturbed faces, EPS on the [0, 1] pixel scale")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="directory for PNG figures")
    p.add_argument("--record", action="store_true",
                   help="instead: score the model as its recipe does and write the figures into its sidecar, which "
                        "its card renders (emotion: every --tta mode with a temperature fitted for each, as python -m "
                        "models.calibration --record; age-gender: the validation split with every --tta mode)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.record:
        return _record(p, args)
    other = ((("--split", args.split, "all"),) if args.task == "emotion" else
             (("--temperature", args.temperature, None), ("--calibrated", args.calibrated, False),
              ("--perturb", args.perturb, 0.0)))
    given = [flag for flag, value, default in other if value != default]
    if given:
        p.error(f"{' '.join(given)}: not an option of {args.task} (see --help), which would score without it")
    try:
        if args.task == "emotion":
            spec = resolve(args.model or DEFAULT_MODELS["emotion"], "emotion")
            if args.temperature is not None and not 0 < args.temperature < math.inf:
                raise ValueError(f"--temperature must be a positive number, not {args.temperature}")
            if not 0 <= args.perturb < math.inf:
                raise ValueError(f"--perturb must be a number 0 or above, not {args.perturb}")
            if args.calibrated and args.temperature is not None:
                raise ValueError("give --temperature or --calibrated, not both")
            temperature = spec.temperature_for(args.tta) if args.calibrated else args.temperature
            classes = tuple(spec.classes or fdata.LABEL_SETS["7"][0])
            images, labels = fdata.fer_faces(fdata.load_fer(args.data), classes)
            if not len(labels):
                raise ValueError(f"{args.data}: no faces of the model's classes ({', '.join(classes)}) to score")
            fdata.check_face_size(args.data, images, spec.name, spec.input_shape)
            report, probs = evaluate_emotion(load_checked(spec), images, labels, classes, args.tta,
                                             temperature, args.perturb)
            plots = _plot_emotion(report, labels, probs, classes, Path(args.plot)) if args.plot else []
        else:
            spec = resolve(args.model or DEFAULT_MODELS["age-gender"], "age-gender")
            split = None if args.split == "all" else args.split == "validation"
            utk = fdata.load_utkface(args.data, size=spec.input_shape[0], validation=split)
            if not len(utk.age):
                raise ValueError(f"{args.data}: no faces to score" + (f" in the {args.split} split" if split is not None
                                                                      else ""))
            report, age, _ = evaluate_age_gender(load_checked(spec), utk, args.tta)
            plots = _plot_age_gender(report, utk, age, Path(args.plot)) if args.plot else []
    except (ValueError, OSError, ModelIntegrityError) as e:  # a damaged .npz too (models.data)
        print(f"facebeam evaluate: error: {e}", file=sys.stderr)
        return 2
    report["model"] = spec.tag
    report["data"] = str(args.data)
    if plots:
        report["plots"] = [str(p) for p in plots]
    print(json.dumps(report) if args.json else _text(args.task, report))
    return 0


def _record(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--record``: the recipe's figures of the model on ``--data`` into its sidecar."""
    settings = (("--tta", args.tta, "none"), ("--temperature", args.temperature, None),
                ("--calibrated", args.calibrated, False), ("--perturb", args.perturb, 0.0), ("--plot", args.plot, None))
    given = [flag for flag, value, default in settings if value != default]
    if given or args.split == "train":
        p.error(f"--record scores the model as its recipe does; it takes no {' '.join(given) or '--split train'}")
    model = args.model or DEFAULT_MODELS[args.task]
    command = f"facebeam evaluate {args.task} --model {model} --data {args.data} --record"
    if args.task == "emotion":
        from models.calibration import record_sidecar

        return record_sidecar(model, args.data, args.json, prog="facebeam evaluate", command=command)
    from models.registry import record_in_sidecar
    from models.train import age_gender_record

    try:
        spec = resolve(model, "age-gender")
        utk = fdata.load_utkface(args.data, size=spec.input_shape[0], validation=True)
        if not len(utk.age):
            raise ValueError(f"{args.data}: no faces in the validation split")
        record = age_gender_record(load_checked(spec), utk)
        sidecar = record_in_sidecar(spec, record, command)
    except (ValueError, OSError, ModelIntegrityError) as e:
        print(f"facebeam evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": spec.tag, **record}))
    else:
        for key, r in record.items():
            print(f"{key:<21} age MAE {r['age_mae']:.3f}, age-group accuracy {r['age_group_accuracy']:.4f}, "
                  f"gender accuracy {r['gender_accuracy']:.4f}")
        print(f"wrote {sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
