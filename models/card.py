"""Writes a model card (markdown) from a model's JSON sidecar.

    python -m models.card emotion_v2 age_gender_v4
    python -m models.card emotion_v2 --ablations runs/ablate/results.json --search runs/search/results.json
    python -m models.card NAME --tables_in emotion_v2

The sidecar is what ``models.train`` recorded: recipe, exact command, history, sittings, figures,
sha256. ``--ablations`` adds the table of ``models.ablate``'s results to the emotion cards, and
``--search`` that of ``models.search``; ``--tables_in NAME`` points a card without them to NAME's card,
where they were measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from models.registry import DEFAULT_MODELS, WEIGHTS_DIR
from models.tta import view_count

__all__ = ["render", "fmt_optional", "commands_of", "provenance", "main"]

CARDS_DIR = Path(__file__).resolve().parent / "cards"

_DATA = {
    "emotion": (
        "FER2013 (ICML 2013 representation-learning challenge): 48x48 grey faces labelled with 7 emotions. "
        "Trained on the 28,709 Training faces; selected and reported on the 3,589 PublicTest faces. "
        "FER+ crowd votes (Microsoft FERPlus, MIT licence) are used only by the optional cleaning and "
        "soft-label recipes. Terms: FER2013 is distributed for research use; the weights are derived from it."
    ),
    "age-gender": (
        "UTKFace (aligned and cropped faces with age, gender and race labels; non-commercial research use). "
        "21,415 faces; a stable 10% validation split is held back by a hash of the file name "
        "(`models.data.validation_mask`), the rest is trained on. Gender is UTKFace's binary label."
    ),
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _history_table(history: list[dict], keys: list[str]) -> list[str]:
    keys = [k for k in keys if history and k in history[0]]
    lines = ["| epoch | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for h in history:
        lines.append(f"| {int(h['epoch']) + 1} | " + " | ".join(f"{h[k]:.4f}" for k in keys) + " |")
    return lines


def _tta_header(columns: int) -> list[str]:
    """The header of a figures table: plain, then flip TTA and (records from the multi mode on) multi
    TTA where the record has them (an ensemble's views are in the model: it has plain figures only)."""
    titles = ["value", "with flip TTA", "with multi TTA (6 views)"][:columns]
    return ["| measure | " + " | ".join(titles) + " |", "|---|" + "---|" * columns]


def _scored_by(rec: dict) -> list[str]:
    """The line naming the command that scored the figures again after training, where one did."""
    return [f"Scored with `{rec['scored_by']}` (the recipe's scoring, on the same weights).", ""] \
        if rec.get("scored_by") else []


def _emotion_figures(rec: dict) -> list[str]:
    plain = rec["public_test"]
    # Test-time augmentation columns (models.tta); records from before the multi mode have only flip.
    scored = [plain, *[rec[k] for k in ("public_test_tta", "public_test_tta_multi") if k in rec]]
    blanks = " |" * (len(scored) - 1)
    lines = [
        f"## Figures (FER2013 PublicTest, {plain['n']:,} faces)", "",
        *_scored_by(rec),
        *([f"Smoke run: only the first {rec['recipe']['limit']} faces of each file; not a result.", ""]
          if (rec.get("recipe") or {}).get("limit") else []),
        *_tta_header(len(scored)),
        "| accuracy | " + " | ".join(_pct(r["accuracy"]) for r in scored) + " |",
        "| macro F1 | " + " | ".join(f"{r['macro_f1']:.3f}" for r in scored) + " |",
        "| ECE (15 bins) | " + " | ".join(f"{r['ece']:.3f}" for r in scored) + " |",
    ]
    cal, fgsm = rec.get("calibration"), rec.get("public_test_fgsm")
    by_mode = rec.get("calibration_by_tta")
    if by_mode:
        # The pipeline applies the temperature of its --tta mode (FaceModelHandler, unless --no_calibration).
        cells = [by_mode.get(m) for m in ("none", "flip", "multi")[:len(scored)]]
        lines.append("| ECE with the temperature fitted for the views (cross-fitted halves) | " + " | ".join(
            f"{c['ece_after_cross_fitted']:.3f} (T {c['temperature']:.2f})" if c and "ece_after_cross_fitted" in c
            else "" for c in cells) + " |")
    elif cal and "ece_after_cross_fitted" in cal:
        # The pipeline applies this temperature (FaceModelHandler, unless --no_calibration).
        lines.append(f"| ECE with temperature {cal['temperature']:.2f} (cross-fitted halves) | "
                     f"{cal['ece_after_cross_fitted']:.3f} |{blanks}")
    if fgsm:
        lines.append(f"| accuracy under FGSM, eps {fgsm['eps']:g} | {_pct(fgsm['accuracy'])} |{blanks}")
    lines += [
        "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
    ]
    for name, c in plain["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    classes = list(plain["per_class"])
    lines += ["", "Confusion (rows: true, columns: predicted):", "",
              "| | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, row in zip(classes, plain["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _age_gender_figures(rec: dict) -> list[str]:
    v = rec["validation"]
    scored = [v, rec["validation_tta"], *[rec[k] for k in ("validation_tta_multi",) if k in rec]]
    lines = [
        f"## Figures (UTKFace validation split, {v['n']} faces)", "",
        *_scored_by(rec),
        "The kept epoch was chosen on this split (lowest validation loss), as the emotion model's is on "
        "PublicTest, so the figures are slightly optimistic for unseen faces.", "",
        *_tta_header(len(scored)),
        "| age MAE (years) | " + " | ".join(f"{r['age_mae']:.2f}" for r in scored) + " |",
        "| age-group accuracy | " + " | ".join(_pct(r["age_group_accuracy"]) for r in scored) + " |",
        "| gender accuracy | " + " | ".join(_pct(r["gender_accuracy"]) for r in scored) + " |", "",
        "Errors by group (the bias table):", "",
        "| group | faces | age MAE | gender accuracy |", "|---|---|---|---|",
    ]
    for key in ("by_age_group", "by_gender", "by_race"):
        for name, g in v.get(key, {}).items():
            if g.get("n"):
                lines.append(f"| {key[3:]} {name} | {g['n']} | {g['age_mae']:.2f} | {_pct(g['gender_accuracy'])} |")
    return lines


def fmt_optional(x: float | None, fmt: str = "{:.3f}") -> str:
    """``x`` in ``fmt``, or "-" where a figure does not apply (None)."""
    return "-" if x is None else fmt.format(x)


def _ablations(results: dict) -> list[str]:
    """The "Ablations" section from ``models.ablate``'s results JSON."""
    epochs, rows = results["epochs"], results["rows"]
    eps = next((r["perturb_eps"] for r in rows if r.get("perturb_eps")), None)
    lines = [
        "## Ablations (FER2013 PublicTest)", "",
        f"`python -m models.ablate emotion --epochs {epochs}`"
        + (f" with `{' '.join(results['train_args'])}`" if results.get("train_args") else "") + ": "
        f"every trained row has the same budget, a {epochs}-epoch schedule with seed {results['seed']}, "
        "the best epoch on PublicTest kept, and differs from `baseline` only in what its row names. "
        "The baseline is this card's recipe retrained on that budget, so its figures can differ from the ones above. "
        "`tta` and `temperature` re-score the baseline without training; `embedding_mlp` trains a classifier "
        f"on the baseline's frozen embedding for the same {epochs}-epoch schedule (its time excludes the baseline's). "
        "`label_set_6` and `label_set_5` are scored over their own classes (6: disgust merged into angry; "
        "5: without disgust and fear), so their accuracy and macro F1 are not comparable with the 7-class rows. "
        "Training times are each row's wall-clock time (its sidecar's `sittings` name the device); rows trained "
        "side by side on one machine shared it, so the times compare rows of one table, not machines.",
    ]
    if results.get("limit"):
        lines += ["", f"Smoke run: only the first {results['limit']} faces of each file; not a result."]
    lines += [
        "",
        f"| row | what | classes | accuracy | macro F1 | disgust recall | fear recall | ECE | "
        f"accuracy under FGSM{f' (eps {eps:g})' if eps else ''} | training (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ece = fmt_optional(r.get("ece"))
        if r.get("ece_after") is not None:
            ece = f"{ece} -> {r['ece_after']:.3f} (T {r['temperature']:.2f})"
        seconds = r.get("train_seconds")
        minutes = fmt_optional(None if seconds is None else seconds / 60, "{:.1f}")
        lines.append(
            f"| {r['name']} | {r['what']} | {r['classes']} | {fmt_optional(r['accuracy'], '{:.1%}')} | "
            f"{fmt_optional(r['macro_f1'])} | {fmt_optional(r['disgust_recall'])} | {fmt_optional(r['fear_recall'])} | "
            f"{ece} | "
            f"{fmt_optional(r.get('accuracy_perturbed'), '{:.1%}')} | {minutes} |")
    if any(r.get("ece_after") is not None for r in rows):
        lines += ["", "ECE after temperature scaling is cross-fitted: each half of PublicTest (split by a hash "
                      "of the file name) is calibrated with the temperature fitted on the other half."]
    return lines


def _sittings(rec: dict) -> str:
    """Where and how long the run trained: one phrase per sitting that ``models.train`` logged."""
    sittings = rec.get("sittings") or []
    if not sittings:
        return (f"The last sitting took {rec['train_seconds_this_sitting'] / 60:.0f} min "
                "(the device was not recorded).")
    parts = [f"epochs {s['epochs'][0] + 1}-{s['epochs'][1]}"
             + (f" of {_article(s['schedule'])} {s['schedule']}-epoch schedule" if s.get("schedule") else "")
             + f" in {s['seconds'] / 60:.1f} min on {s['device']} (Keras backend {s['backend']})" for s in sittings]
    return "Trained in " + "; ".join(parts) + "."


def _article(n: int) -> str:
    """The article before an epoch count ``n`` read aloud: "an 8-epoch", "an 11-epoch", "a 12-epoch"."""
    return "an" if str(n).startswith("8") or n in (11, 18) else "a"


def commands_of(rec: dict) -> list[str]:
    """The commands that trained the model, in order: one, or one per schedule where a run's schedule
    was extended (rerun with more ``--epochs`` in the same workdir, or in a copy of it: the copy is
    shown as the ``cp -r`` between the two commands); those of the model it started from (``--init``)
    and of the models it was distilled from (``--teacher``) or averages (``models.ensemble``) come first."""
    sittings = rec.get("sittings") or []
    commands = list(dict.fromkeys([*(s["command"] for s in sittings if s.get("command")), rec["command"]]))
    prior = [*(rec.get("init") or {}).get("commands", []),
             *(c for t in (rec.get("distill") or {}).get("teachers", []) for c in t.get("commands", [])),
             *(c for m in (rec.get("ensemble") or {}).get("members", []) for c in m.get("commands", []))]
    lines = [*dict.fromkeys(prior), *commands[:1]]
    for before, after in zip(commands, commands[1:]):
        src, dst = _workdir(before), _workdir(after)
        if src and dst and src != dst:
            lines.append(f"cp -r {shlex.quote(src)} {shlex.quote(dst)}")
        lines.append(after)
    return lines


def provenance(spec, record: dict | None = None) -> dict:
    """What a sidecar records of a model another one is made from (``--init``, ``--teacher``, an
    ensemble's members): its name, sha256 and the commands that trained it. ``spec`` is the model's
    resolved ModelSpec; ``record`` its sidecar, read from beside the file unless given."""
    if record is None:
        record = spec.sidecar()
    return {"name": spec.name, "sha256": spec.sha256, "commands": commands_of(record)}


def _workdir(command: str) -> str | None:
    """The ``--workdir`` a training command names (None where it names none)."""
    args = shlex.split(command)
    for i, a in enumerate(args):
        if a == "--workdir" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
    return None


def _epochs_trained(rec: dict) -> str:
    """How many epochs of which schedule(s) the model was trained, and from which model it started."""
    epochs = len(rec.get("history", []))
    schedules = list(dict.fromkeys(s["schedule"] for s in rec.get("sittings") or [] if s.get("schedule")))
    start = ""
    if rec.get("init"):
        init = rec["init"]
        start = (f"Started from the weights of {init['name']} (sha256 `{init['sha256'][:12]}…`, trained by the "
                 f"command{'s' if len(init['commands']) > 1 else ''} before the `--init` one), with a fresh "
                 "optimizer and schedule (a warm restart). ")
    if len(schedules) > 1:
        return start + (
            f"Epochs trained: {epochs}, in schedules of {', then '.join(map(str, schedules))} epochs: each later "
            "command reran the earlier one's with a longer schedule in the same `--workdir` (or a copy of it), "
            "resuming from its last epoch with the learning rate where the longer cosine schedule has it there "
            "(a warm restart); "
            "the best epoch on the validation data kept.")
    return start + (f"Epochs trained: {epochs} of the {rec['recipe']['epochs']}-epoch schedule, the best on the "
                    "validation data kept.")


def _swa(swa: dict) -> str:
    """What weight averaging (``--swa_from``) gave, against the best single epoch."""
    epochs = swa["epochs"]
    contiguous = epochs == list(range(epochs[0], epochs[-1] + 1))
    span = f"{epochs[0]}-{epochs[-1]}" if contiguous else ", ".join(map(str, epochs))
    return (f"The weights of epochs {span} were averaged (stochastic weight averaging, `--swa_from "
            f"{swa['from_epoch']}`) and the batch-norm statistics recomputed on {swa['batch_norm_faces']:,} training "
            f"faces: PublicTest {swa['accuracy']:.1%} against {swa['best_epoch_accuracy']:.1%} for the best single "
            f"epoch, so the {swa['kept']} was kept.")


def _distill(distill: dict) -> str:
    """What the network was taught by (``--teacher``): the teachers, their views and the targets' mix."""
    teachers = ", ".join(f"{t['name']} (sha256 `{t['sha256'][:12]}…`"
                         + (f"; an ensemble, in its own `{t['own_views']}` views" if t.get("own_views") else "")
                         + ")" for t in distill["teachers"])
    views = {"none": "as they are", "flip": "and their mirror images",
             "multi": "in the six views of `--tta multi`"}[distill["tta"]]
    return (f"Distilled: the targets were {1 - distill['weight']:.2g} x the label + {distill['weight']:.2g} x the "
            f"mean output of {teachers} on the training faces {views}"
            + (f", softened at temperature {distill['temperature']:g}" if distill["temperature"] != 1 else "")
            + f"; the teacher{'s agree' if len(distill['teachers']) > 1 else ' agrees'} with "
            f"{distill['train_accuracy']:.1%} of the training labels.")


def _ensemble(ensemble: dict) -> list[str]:
    """What an ensemble (``models.ensemble``) averages: its members, their own figures, and the views."""
    views = {"none": "the face as it is", "flip": "the face and its mirror image",
             "multi": "six views of the face (as it is and zoomed in and out by 8%, each also mirrored)"}
    members = ensemble["members"]
    lines = [f"An ensemble: the mean softmax of {len(members)} networks, each scored on {views[ensemble['views']]}, "
             f"in one model ({len(members)} x {view_count(ensemble['views'])} passes per face). The commands above "
             "trained the members, in the order of the table, and the last one built the ensemble; each member "
             "resumes from its own `--workdir`.", "",
             "| member | sha256 | PublicTest | with flip TTA | with multi TTA |", "|---|---|---|---|---|"]
    for m in members:
        f = m["public_test"]
        lines.append(f"| {m['name']} | `{m['sha256'][:12]}…` | "
                     + " | ".join(_pct(f[k]) if k in f else "-" for k in ("public_test", "public_test_tta",
                                                                          "public_test_tta_multi")) + " |")
    return lines


def _training(rec: dict, commands: list[str]) -> list[str]:
    """The paragraph on how the network was trained, or an ensemble's table of members."""
    if rec.get("ensemble"):
        return _ensemble(rec["ensemble"])
    return [
        f"{_epochs_trained(rec)}{' ' + _distill(rec['distill']) if rec.get('distill') else ''}"
        f"{' ' + _swa(rec['swa']) if rec.get('swa') else ''} "
        "The command resumes from the last finished epoch in its `--workdir`, so a run may take "
        "several sittings, on any Keras backend (TensorFlow on CPU, or `KERAS_BACKEND=jax` on a GPU). "
        f"{_sittings(rec)} Reproduce with the {'commands' if len(commands) > 1 else 'command'} above "
        "(seeded; thread scheduling and the backend make runs differ slightly)."]


def _search(table: dict) -> list[str]:
    """The "Hyperparameter search" section from ``models.search``'s results JSON."""
    from models.search import markdown

    lines = markdown(table).rstrip("\n").splitlines()
    return ["## Hyperparameter search", "", f"`python -m models.search` over lr {table['grid']['lr']}, "
            f"widths {table['grid']['widths']} and dropout {table['grid']['dropout']}:", *lines[1:]]


def _tables_in(card: str) -> list[str]:
    """The section of an emotion card whose ablation and search tables are in the card of model ``card``."""
    return ["## Ablations and hyperparameter search", "",
            "The ablation of each training technique and the hyperparameter search were measured on the "
            f"{card} recipe; their tables are in [{card}'s card]({card}.md#ablations-fer2013-publictest)."]


def render(name: str, ablations: dict | None = None, search: dict | None = None, tables_in: str | None = None) -> str:
    """The card of model ``name`` (its sidecar in models/weights); emotion cards add ``ablations`` and
    ``search`` tables when given, or point to the card of model ``tables_in`` that has them."""
    rec = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    task = rec["task"]
    commands = commands_of(rec)
    lines = [
        f"# Model card: {name}", "",
        f"- Task: {'emotion (' + ', '.join(rec['classes']) + ')' if task == 'emotion' else 'age (years, regression) and gender (P(female))'}",
        f"- File: `models/weights/{name}.keras` ({rec['bytes'] / 1e6:.1f} MB, {rec['params']:,} parameters)",
        f"- sha256: `{rec['sha256']}`",
        f"- Input: {rec['input'][0]}x{rec['input'][1]}x{rec['input'][2]} pixels in [0, 255], faces framed with the eyes "
        f"{rec['template'][0]:.3f} of the side apart on a line {rec['template'][1]:.3f} from the top "
        "(the median framing of the training data, measured with MTCNN's landmarks)",
        "", "## Data", "", _DATA[task], "",
        "## Recipe", "",
        "```", *commands, "```", "",
        "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in rec["recipe"].items()], "",
        *_training(rec, commands), "",
        *(_emotion_figures(rec) if task == "emotion" else _age_gender_figures(rec)), "",
        *([*_ablations(ablations), ""] if ablations and task == "emotion" else []),
        *([*_search(search), ""] if search and task == "emotion" else []),
        *([*_tables_in(tables_in), ""] if tables_in and not (ablations or search) and task == "emotion" else []),
        *(["## Training history", "",
           *_history_table(rec["history"],
                           ["accuracy", "val_accuracy", "loss", "val_loss"] if task == "emotion" else
                           ["age_mae", "val_age_mae", "gender_accuracy", "val_gender_accuracy"]), ""]
          if rec.get("history") else []),
        "## Limits", "",
        ("FER2013 faces are low-resolution web images with noisy labels; expressions are posed or "
         "spontaneous, mostly frontal. Disgust has ~10x fewer examples than happy, so its recall is the "
         "weakest. Predictions on faces that are small, turned or occluded are less reliable."
         if task == "emotion" else
         "UTKFace is web-collected; ages over 80 and young children are rare, and the label set has two "
         "genders. Apparent age, not true age, is what a face shows. Use the bias table above before "
         "drawing conclusions about any group."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=[DEFAULT_MODELS["emotion"], DEFAULT_MODELS["age-gender"]],
                   help="models in models/weights")
    p.add_argument("--ablations", default=None, help="models.ablate results JSON, rendered into emotion cards")
    p.add_argument("--search", default=None, help="models.search results JSON, rendered into emotion cards")
    p.add_argument("--tables_in", default=None, metavar="NAME",
                   help="an emotion card without --ablations/--search points to model NAME's card for those tables")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    ablations = json.loads(Path(args.ablations).read_text()) if args.ablations else None
    search = json.loads(Path(args.search).read_text()) if args.search else None
    CARDS_DIR.mkdir(exist_ok=True)
    for name in args.names:
        (CARDS_DIR / f"{name}.md").write_text(render(name, ablations, search, args.tables_in))
        print(CARDS_DIR / f"{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
