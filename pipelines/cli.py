"""The ``facebeam`` command: subcommands dispatch to their modules' ``main(argv)``."""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["main"]

COMMANDS = {
    "analyze": ("pipelines.analyze", "run the pipeline over photos and videos, write Parquet"),
    "train": ("models.train", "train the emotion or the age-gender model"),
    "evaluate": ("models.evaluate", "figures of a model on a FER2013 or UTKFace npz"),
    "calibrate": ("models.calibration", "fit a softmax temperature for an emotion model, ECE before/after"),
    "search": ("models.search", "grid search over the emotion recipe's learning rate, widths and dropout"),
    "ablate": ("models.ablate", "ablation rows of the emotion recipe on one epoch budget"),
    "ensemble": ("models.ensemble", "average emotion models over test-time views, as one model"),
    "live": ("pipelines.live", "real-time emotion, age and gender on a camera, file or stream"),
    "report": ("pipelines.report", "self-contained HTML report of an output directory"),
    "sql": ("pipelines.sql", "run SQL (DuckDB) over an output directory's tables"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: facebeam COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "'facebeam COMMAND --help' describes each command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"facebeam: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # TensorFlow's C++ start-up notices (CPU features, oneDNN) are noise for users; TF_CPP_MIN_LOG_LEVEL=0 shows them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
