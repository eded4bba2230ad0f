"""Recipes run as rows of a table (``models.search``, ``models.ablate``): train or reuse, then summarise.

A row's recipe trains into its own folder (checkpoints in ``checkpoints/``, the model as
``model.keras`` with its sidecar ``model.json``). A finished row is read back from its sidecar; an
unfinished one resumes at its last finished epoch; a folder trained with other settings is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

LOG = logging.getLogger("facebeam.train")

__all__ = ["run_recipe", "summarize", "report_figures", "SUMMARY_KEYS"]

# What every row of a results table reports (None where it does not apply).
SUMMARY_KEYS = ("classes", "accuracy", "macro_f1", "disgust_recall", "fear_recall", "ece", "accuracy_tta",
                "accuracy_perturbed", "perturb_eps", "train_seconds", "epochs")

# Set by run_recipe itself: a row's folder decides them.
_OWN_FLAGS = ("--workdir", "--out", "--name", "--stop_after")


def run_recipe(argv: list[str], directory: Path) -> dict:
    """The sidecar record of ``models.train`` ``argv`` (task first) trained into ``directory``."""
    from models import train

    # argparse takes a flag's unique prefix too (--stop for --stop_after)
    clash = [a for a in argv if len(a.split("=")[0]) > 2 and a.startswith("--")
             and any(flag.startswith(a.split("=")[0]) for flag in _OWN_FLAGS)]
    if clash:
        raise ValueError(f"{clash} are set per row; leave them out of the recipe's flags")
    args = train.parse_args([*argv, "--workdir", str(directory / "checkpoints"), "--out", str(directory),
                             "--name", "model"])
    sidecar = directory / "model.json"
    if sidecar.exists():
        record = json.loads(sidecar.read_text())

        def settings(recipe: dict) -> dict:  # a row's schedule may grow, as models.train allows
            return {k: v for k, v in recipe.items() if k not in train._MAY_CHANGE}

        if settings(record["recipe"]) != settings(json.loads(json.dumps(args.recipe))):
            raise ValueError(f"{directory} was trained with other settings ({record['command']}); "
                             "use another work folder or delete this one")
        if len(record.get("history", [])) >= args.epochs:
            LOG.info("%s: done, read from %s", directory.name, sidecar)
            return record
    import keras

    # Each row builds its own graphs: without this, one process running many rows keeps them all.
    keras.backend.clear_session()
    LOG.info("%s: %s", directory.name, args.command)
    return train.run(args)


def report_figures(report: dict) -> dict:
    """Accuracy, macro-F1, disgust and fear recall (None without that class) and ECE of one
    classification report (``models.metrics.classification_report``)."""
    per_class = report["per_class"]
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "disgust_recall": per_class["disgust"]["recall"] if "disgust" in per_class else None,
        "fear_recall": per_class["fear"]["recall"] if "fear" in per_class else None,
        "ece": report["ece"],
    }


def summarize(record: dict) -> dict:
    """The SUMMARY_KEYS of an emotion sidecar: PublicTest figures over the model's own classes."""
    fgsm = record.get("public_test_fgsm") or {}
    return {
        "classes": len(record["classes"]),
        **report_figures(record["public_test"]),
        "accuracy_tta": record["public_test_tta"]["accuracy"],
        "accuracy_perturbed": fgsm.get("accuracy"),
        "perturb_eps": fgsm.get("eps"),
        "train_seconds": record.get("train_seconds"),
        "epochs": len(record.get("history", [])),
    }
