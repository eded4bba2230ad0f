"""Ablations of the emotion recipe: one named row per training technique, all on one epoch budget.

    python -m models.ablate emotion --epochs 12 --workdir runs/ablate --out runs/ablate/results.json
    python -m models.ablate emotion --epochs 12 --only baseline adversarial temperature
    python -m models.card emotion_v2 --ablations runs/ablate/results.json

Every trained row is ``models.train emotion --epochs N`` with the row's flags, trained into
``WORKDIR/<row>/`` (see ``models.runs``: an interrupted row resumes, a finished one is read back).
``tta``, ``temperature`` and ``embedding_mlp`` build on the baseline, which is trained first when
needed. Each finished row is cached as ``WORKDIR/rows/<row>.json``, and ``--out`` lists every row
cached in the work folder, in the order of ``ROWS``. Other flags (``--widths 16 32``,
``--batch_size 64``) go to every trained row's ``models.train emotion``.

Figures are FER2013 PublicTest's, over the row's own classes: ``label_set_6`` and ``label_set_5``
are scored on their 6 or 5 classes, not comparable with the 7-class rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NamedTuple

from models.args import number
from models.runs import SUMMARY_KEYS, report_figures, run_recipe, summarize

LOG = logging.getLogger("facebeam.train")

__all__ = ["Row", "ROWS", "ablate", "main"]


class Row(NamedTuple):
    """An ablation: ``kind`` train (its own recipe), tta / temperature (re-scores the baseline) or
    embedding (a classifier on the baseline's embedding); ``flags`` for models.train; ``what`` it changes."""

    kind: str
    flags: tuple[str, ...]
    what: str


ROWS: dict[str, Row] = {
    "baseline": Row("train", (), "the emotion recipe as it is (VGG, augmentation, 7 classes)"),
    "no_augment": Row("train", ("--no_augment",), "without augmentation"),
    "tta": Row("tta", (), "baseline scored with flip TTA; no training"),
    "class_weight": Row("train", ("--class_weight",), "loss weighted by inverse class frequency"),
    "oversample": Row("train", ("--oversample", "0.5"), "minority classes repeated up to half the largest"),
    "adversarial": Row("train", ("--adv_multiplier", "0.3", "--adv_step", "0.01"),
                       "adversarial regularization, multiplier 0.3, step 0.01"),
    "label_set_6": Row("train", ("--label_set", "6"), "6 classes: disgust merged into angry"),
    "label_set_5": Row("train", ("--label_set", "5"), "5 classes: without disgust and fear"),
    "clean": Row("train", ("--clean",), "FER+ 'not a face' images left out of training"),
    "soft_labels": Row("train", ("--soft_labels",), "trained on FER+ vote distributions"),
    "arch_small": Row("train", ("--arch", "small"), "one convolution per block"),
    "arch_resnet": Row("train", ("--arch", "resnet"), "residual blocks"),
    "embedding_mlp": Row("embedding", (), "MLP on the baseline's frozen 128-d embedding"),
    "temperature": Row("temperature", (), "baseline with a fitted temperature; ECE before -> after"),
}


class _Settings(NamedTuple):
    epochs: int
    workdir: Path
    data_dir: str | None
    limit: int
    seed: int
    train_args: tuple[str, ...]


def _common(s: _Settings) -> list[str]:
    """The flags every recipe of the run shares."""
    flags = ["--epochs", str(s.epochs), "--limit", str(s.limit), "--seed", str(s.seed)]
    return flags + (["--data_dir", s.data_dir] if s.data_dir else [])


def _row_argv(name: str, s: _Settings) -> list[str]:
    """The models.train command line (without folders) that makes row ``name``'s model."""
    row = ROWS[name]
    if row.kind == "embedding":
        base = s.workdir / "baseline" / "model.keras"
        return ["emotion-embedding", "--base", str(base), *_common(s)]
    if row.kind in ("tta", "temperature"):
        return _row_argv("baseline", s)
    return ["emotion", *_common(s), *s.train_args, *row.flags]


def _row(name: str, s: _Settings) -> dict:
    """Row ``name``'s figures, trained (or read back) now."""
    row = ROWS[name]
    if row.kind in ("embedding", "tta", "temperature"):
        _cached("baseline", s)
    record = run_recipe(_row_argv(name, s), s.workdir / ("baseline" if row.kind in ("tta", "temperature") else name))
    out = {"name": name, "what": row.what, **summarize(record)}
    if row.kind == "tta":
        out.update(report_figures(record["public_test_tta"]), train_seconds=0.0, accuracy_perturbed=None,
                   perturb_eps=None)
    elif row.kind == "temperature":
        cal = record["calibration"]
        # The honest "after": each half of PublicTest calibrated with the T fitted on the other half.
        out.update(train_seconds=0.0, temperature=cal["temperature"], ece=cal["ece_before"],
                   ece_after=cal.get("ece_after_cross_fitted", cal["ece_after"]),
                   ece_after_same_faces=cal["ece_after"], accuracy_perturbed=None, perturb_eps=None)
    return out


def _cached(name: str, s: _Settings) -> dict:
    """Row ``name`` from ``WORKDIR/rows/``, or made now and cached there."""
    path = s.workdir / "rows" / f"{name}.json"
    argv = _row_argv(name, s)
    if path.exists():
        row = json.loads(path.read_text())
        if row["argv"] == argv:
            return row
        raise ValueError(f"row {name} in {s.workdir} was made by {row['argv']}, not {argv}; "
                         "use another --workdir or delete the row's folder and file")
    row = {**_row(name, s), "argv": argv}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2) + "\n")
    LOG.info("row %s: accuracy %.4f", name, row["accuracy"])
    return row


def ablate(names: list[str], s: _Settings) -> dict:
    """Makes the rows ``names`` (cached ones are read back) and returns the results of every cached
    row made with these settings: the table states one budget, so a row made with others is left out."""
    for name in names:
        _cached(name, s)
    rows = []
    for name in ROWS:
        path = s.workdir / "rows" / f"{name}.json"
        if path.exists():
            row = json.loads(path.read_text())
            if row["argv"] == _row_argv(name, s):
                rows.append(row)
            else:
                LOG.warning("row %s in %s was made by %s, with other settings: left out of the results", name,
                            s.workdir, row["argv"])
    return {"task": "emotion", "epochs": s.epochs, "seed": s.seed, "limit": s.limit,
            "train_args": list(s.train_args), "summary_keys": list(SUMMARY_KEYS), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="facebeam ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("emotion",), help="which recipe to ablate")
    p.add_argument("--epochs", type=number(int, at_least=1), required=True,
                   help="the epoch budget every trained row shares")
    p.add_argument("--workdir", default="runs/ablate", help="one folder per row, and the cached rows")
    p.add_argument("--out", default=None, help="results JSON (default WORKDIR/results.json)")
    p.add_argument("--only", nargs="+", choices=list(ROWS), default=None, help="make only these rows")
    p.add_argument("--data_dir", default=None, help="folder holding fer2013/ (default: models.data's)")
    p.add_argument("--limit", type=number(int, at_least=0), default=0,
                   help="use only the first N faces of each file (smoke runs)")
    p.add_argument("--seed", type=int, default=1, help="the seed every row shares")
    p.add_argument("--threads", type=number(int, at_least=0), default=0, help="TF intra-op threads (0: all cores)")
    args, extra = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    from models.train import set_threads

    set_threads(args.threads)
    workdir = Path(args.workdir)
    settings = _Settings(args.epochs, workdir, args.data_dir, args.limit, args.seed, tuple(extra))
    try:
        results = ablate(args.only or list(ROWS), settings)
    except (ValueError, FileNotFoundError) as e:
        print(f"models.ablate: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
