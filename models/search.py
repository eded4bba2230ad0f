"""A small grid search over the emotion recipe's learning rate, widths and dropout.

    python -m models.search emotion --lr 1e-3 2e-3 --widths 32,64,128,256 48,96,192,384 \\
        --dropout 0.3 0.5 --epochs 10 --workdir runs/search

Every combination is ``models.train emotion`` trained into ``WORKDIR/<combination>/`` (see
``models.runs``): run the same command again to resume an interrupted search; finished combinations
are read back from their sidecars. Any other flag (``--batch_size 64``, ``--limit 512``, ``--data_dir``)
goes to every combination. After each combination the table is written as ``WORKDIR/results.json``
and ``WORKDIR/results.md``: PublicTest accuracy, macro-F1, disgust and fear recall, training time.
The selection is on PublicTest, as every recipe here selects its epoch (FER2013's own split).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

from models.args import number
from models.card import fmt_optional
from models.runs import SUMMARY_KEYS, run_recipe, summarize
from models.train import TrainingDiverged

LOG = logging.getLogger("facebeam.train")

__all__ = ["search", "markdown", "combination_name", "main"]


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths are comma-separated integers, like 32,64,128,256; got {text!r}")
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive integers; got {text!r}")
    return widths


def combination_name(lr: float, widths: list[int], dropout: float) -> str:
    """A combination's folder name, e.g. ``lr0.002_w32-64-128-256_d0.4``."""
    return f"lr{lr:g}_w{'-'.join(map(str, widths))}_d{dropout:g}"


def search(task: str, lrs: list[float], widths: list[list[int]], dropouts: list[float], epochs: int,
           workdir: Path, extra: list[str]) -> dict:
    """Trains (or reads back) every combination and writes the results table after each one."""
    table = {"task": task, "epochs": epochs, "grid": {"lr": lrs, "widths": widths, "dropout": dropouts},
             "train_args": extra, "rows": []}
    for lr, w, dropout in itertools.product(lrs, widths, dropouts):
        name = combination_name(lr, w, dropout)
        argv = [task, "--epochs", str(epochs), "--lr", str(lr), "--widths", *map(str, w),
                "--dropout", str(dropout), *extra]
        try:
            figures = summarize(run_recipe(argv, workdir / name))
        except TrainingDiverged as e:  # a row of the table, not the end of the search
            LOG.warning("%s: %s", name, e)
            figures = {**dict.fromkeys(SUMMARY_KEYS), "diverged": True}
        table["rows"].append({"name": name, "lr": lr, "widths": w, "dropout": dropout, **figures})
        _write(table, workdir)
    return table


def markdown(table: dict) -> str:
    """The results as a Markdown table, best PublicTest accuracy first."""
    lines = [f"# Search: {table['task']}, {table['epochs']} epochs per combination", "",
             "PublicTest (FER2013) figures of each combination's best epoch; all share the epoch budget"
             + (f" and the flags `{' '.join(table['train_args'])}`." if table["train_args"] else "."), "",
             "| lr | widths | dropout | accuracy | macro F1 | disgust recall | fear recall | ECE | training (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(table["rows"], key=lambda r: (r["accuracy"] is None, -(r["accuracy"] or 0.0))):
        seconds = r["train_seconds"]
        figures = ("diverged (loss NaN) | - | - | - | - | -" if r.get("diverged") else
                   f"{fmt_optional(r['accuracy'], '{:.1%}')} | {r['macro_f1']:.3f} | "
                   f"{fmt_optional(r['disgust_recall'])} | {fmt_optional(r['fear_recall'])} | {r['ece']:.3f} | "
                   f"{fmt_optional(None if seconds is None else seconds / 60, '{:.1f}')}")
        lines.append(f"| {r['lr']:g} | {'-'.join(map(str, r['widths']))} | {r['dropout']:g} | {figures} |")
    return "\n".join(lines) + "\n"


def _write(table: dict, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    (workdir / "results.md").write_text(markdown(table))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="facebeam search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("emotion",), help="which recipe to search")
    p.add_argument("--lr", type=number(above=0), nargs="+", default=[2e-3], help="peak learning rates")
    p.add_argument("--widths", type=_widths, nargs="+", default=[[32, 64, 128, 256]],
                   help="filters per block, one comma-separated list per choice")
    p.add_argument("--dropout", type=number(at_least=0, below=1), nargs="+", default=[0.4],
                   help="dropout rates before the head")
    p.add_argument("--epochs", type=number(int, at_least=1), required=True,
                   help="epochs of every combination's schedule")
    p.add_argument("--workdir", default="runs/search", help="one folder per combination, and the results")
    p.add_argument("--threads", type=number(int, at_least=0), default=0, help="TF intra-op threads (0: all cores)")
    args, extra = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    from models.train import set_threads

    set_threads(args.threads)
    try:
        table = search(args.task, args.lr, args.widths, args.dropout, args.epochs, Path(args.workdir), extra)
    except (ValueError, FileNotFoundError) as e:
        print(f"models.search: error: {e}", file=sys.stderr)
        return 2
    print(markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
