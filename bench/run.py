"""facebeam's benchmark: the pipeline against a sequential loop and against detection alone.

    python -m bench.run --n 100 [--n 1000] [--out bench/results.json]

For each N it builds a corpus of N files from the example photos and clips (repeated with small
variations, see ``bench.corpus``), then times, each in a fresh process (``bench.measure``):

1. ``pipeline``: facebeam end to end on Beam's default local runner;
2. ``sequential``: the same detector and models in a plain loop, one model call per face;
3. ``detection``: decode + detection alone, in one loop;
4. ``detection_threads``: decode + detection alone, spread over as many threads as the pipeline has
   workers (one detector each).

It writes the figures as JSON (``--out``) and as a Markdown table next to it (``.md``), the N
values side by side. ``speedup_vs_sequential`` is facebeam's faces/s over the loop's;
``ratio_to_detection_limit`` is facebeam's end-to-end time over the faster of the two decode +
detect runs (the detection-bound limit); ``ratio_to_detection_loop`` is over the one-loop run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.corpus import build_corpus, find_sources, link_corpus
from bench.measure import MODES, model_specs, pipeline_workers

ROOT = Path(__file__).resolve().parent.parent
TARGET_SPEEDUP = 3.0
TARGET_RATIO = 1.15


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="corpus size in files; repeatable (default 100)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"),
                        help="results JSON (the table goes next to it, as .md)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per mode and N, in rotating order; the fastest counts (default 1)")
    parser.add_argument("--repeat_modes", default=None,
                        help="comma-separated modes that --repeat applies to; the others run once (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus variations")
    parser.add_argument("--media", action="append", default=None,
                        help="folder holding photos/ and clips/ to build the corpus from; repeatable "
                             "(default: examples/ and ../shared/media/ where it exists)")
    parser.add_argument("--corpus_dir", default=None,
                        help="where to write the corpus, kept (default: a temporary folder, removed)")
    parser.add_argument("--beam_arg", action="append", default=[],
                        help="extra Beam flag for the pipeline run, e.g. --beam_arg=--direct_num_workers=2 "
                             "--beam_arg=--direct_running_mode=multi_processing; repeatable")
    return parser.parse_args(argv)


def _measure(mode: str, corpus: Path, beam_args: list[str]) -> dict:
    """Runs one mode in a fresh Python process; its figures come back as JSON."""
    with tempfile.TemporaryDirectory(prefix="facebeam-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.measure", mode, str(corpus), str(out), *beam_args]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def _rates(r: dict) -> dict:
    secs = r["seconds"]
    r["images_per_s"] = round(r["files"] / secs, 3)
    r["frames_per_s"] = round(r["frames"] / secs, 3)
    if "faces" in r:
        r["faces_per_s"] = round(r["faces"] / secs, 3)
    return r


def _cpu_known(*runs: dict) -> bool:
    """Whether each run knows its CPU seconds (``bench.measure`` gives None where it cannot tell)."""
    return all(r.get("cpu_seconds") is not None for r in runs)


def _summarise(n: int, runs: dict) -> dict:
    entry = {"n": n, **runs}
    pipe, seq, det = runs.get("pipeline"), runs.get("sequential"), runs.get("detection")
    limit = min((r for r in (det, runs.get("detection_threads")) if r), key=lambda r: r["seconds"], default=None)
    if pipe and seq:
        entry["speedup_vs_sequential"] = round(pipe["faces_per_s"] / seq["faces_per_s"], 3)
        if _cpu_known(pipe, seq):
            entry["speedup_vs_sequential_cpu"] = round(
                (pipe["faces"] / pipe["cpu_seconds"]) / (seq["faces"] / seq["cpu_seconds"]), 3)
        entry["faces_match"] = pipe["faces"] == seq["faces"]
    if pipe and limit:
        # The limit is the fastest that decode + detection alone went on this machine, in one loop or
        # on as many threads as the pipeline's workers.
        entry["detection_limit_mode"] = limit["mode"]
        entry["ratio_to_detection_limit"] = round(pipe["seconds"] / limit["seconds"], 3)
        if _cpu_known(pipe, limit):
            entry["ratio_to_detection_limit_cpu"] = round(pipe["cpu_seconds"] / limit["cpu_seconds"], 3)
    if pipe and det:
        entry["ratio_to_detection_loop"] = round(pipe["seconds"] / det["seconds"], 3)
    if pipe and "detector calls" in pipe.get("inside", {}) and pipe.get("workers", 1) == 1:
        # The same ratio within the pipeline run itself (its own decode + detector time), immune to the
        # load changing between separate runs.
        own = pipe["stages"].get("decode", 0.0) + pipe["inside"]["detector calls"]
        entry["ratio_to_own_decode_detect"] = round(pipe["seconds"] / own, 3)
        # The pipeline decodes while the detector works: against the detector alone, decode counts too.
        entry["ratio_to_own_detector"] = round(pipe["seconds"] / pipe["inside"]["detector calls"], 3)
    return entry


def _machine() -> dict:
    import numpy
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def _fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _repeats(results: dict) -> str:
    repeated = results.get("repeat_modes")
    if results["repeat"] <= 1 or not repeated or set(repeated) >= set(results.get("modes", MODES)):
        return f"{results['repeat']} run(s) per mode"
    return f"{results['repeat']} runs of {', '.join(repeated)}, one of each other mode"


def _runtimes(runs: list[dict]) -> str:
    found = sorted({r["pipeline"].get("model_runtime") for r in runs if "pipeline" in r} - {None, ""})
    return "/".join(found) or "–"


def _conversion(results: dict) -> str:
    c = results.get("model_conversion")
    if not c or c["runtime"] != "litert":
        return ""
    return (f" (converted for LiteRT once before timing, {c['seconds']:.1f} s with loading, and cached "
            "as on any machine after its first run)")


def to_markdown(results: dict) -> str:
    """The results as Markdown tables, one column per N."""
    runs = results["runs"]
    head = "| | " + " | ".join(f"N = {r['n']}" for r in runs) + " |\n|---|" + "---:|" * len(runs) + "\n"

    def row(label, get, digits=2):
        cells = []
        for r in runs:
            try:
                cells.append(_fmt(get(r), digits))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("–")
        return f"| {label} | " + " | ".join(cells) + " |\n"

    def seconds(r, m):
        text = f"{r[m]['seconds']:.1f} ({_fmt(r[m]['cpu_seconds'], 1)})"
        if len(r[m].get("all_seconds", [])) > 1:
            text += " of " + ", ".join(f"{x:.1f}" for x in r[m]["all_seconds"])
        return text

    machine = results["machine"]
    lines = ["# facebeam benchmark\n\n",
             f"Machine: {machine['cpus']} CPUs, load average (1, 5, 15 min) {results['load_before']} before and "
             f"{results['load_after']} after; Python {machine['python']}, TensorFlow {machine['tensorflow']}; "
             f"{results['when']}; {_repeats(results)}, the fastest shown. Models: "
             f"{', '.join(results['models'].values())}, run by {_runtimes(runs)}{_conversion(results)}.\n\n",
             f"Corpus: {results['corpus']}.\n\n",
             f"Baseline: {results['baseline']}.\n\n",
             "## Throughput\n\n", head,
             row("files (photos + clips)", lambda r: r["pipeline"]["files"]),
             row("frames (photos + sampled video frames)", lambda r: r["pipeline"]["frames"]),
             row("faces (pipeline / sequential)", lambda r: f"{r['pipeline']['faces']} / {r['sequential']['faces']}")]
    for mode, label in (("pipeline", "facebeam pipeline"), ("sequential", "sequential loop"),
                        ("detection", "decode + detect only, one loop"),
                        ("detection_threads", "decode + detect only, threads")):
        if not any(mode in r for r in runs):
            continue
        lines.append(row(f"{label}: seconds (CPU seconds)", lambda r, m=mode: seconds(r, m)))
        lines.append(row(f"{label}: CPU share (CPU seconds ÷ seconds)",
                         lambda r, m=mode: r[m]["cpu_seconds"] / r[m]["seconds"] if _cpu_known(r[m]) else None))
        if not mode.startswith("detection"):
            lines.append(row(f"{label}: faces/s", lambda r, m=mode: r[m]["faces_per_s"]))
        lines += [row(f"{label}: images/s", lambda r, m=mode: r[m]["images_per_s"]),
                  row(f"{label}: frames/s", lambda r, m=mode: r[m]["frames_per_s"]),
                  row(f"{label}: peak RSS MiB", lambda r, m=mode: r[m]["peak_rss_mib"], 0)]
    lines += [row("model time per face, pipeline (batched, beside the detector thread) ms",
                  lambda r: 1000 * r["pipeline"]["inside"]["model calls"] / r["pipeline"]["faces"], 1),
              row("model time per face, sequential (one call per face and model) ms",
                  lambda r: 1000 * r["sequential"]["stages"]["infer"] / r["sequential"]["faces"], 1),
              row(f"**speedup vs sequential** (faces/s; target ≥ {TARGET_SPEEDUP})",
                  lambda r: r["speedup_vs_sequential"]),
              row("speedup vs sequential, CPU seconds per face", lambda r: r["speedup_vs_sequential_cpu"]),
              row("detection limit: the faster decode + detect run", lambda r: r["detection_limit_mode"]),
              row(f"**ratio to detection limit** (seconds; target ≤ {TARGET_RATIO})",
                  lambda r: r["ratio_to_detection_limit"]),
              row("ratio to detection limit, CPU seconds", lambda r: r["ratio_to_detection_limit_cpu"]),
              row("ratio to the one-loop decode + detect run, seconds", lambda r: r["ratio_to_detection_loop"]),
              row("pipeline seconds ÷ its own decode + detector seconds", lambda r: r["ratio_to_own_decode_detect"]),
              row("pipeline seconds ÷ its own detector seconds", lambda r: r["ratio_to_own_detector"])]
    for mode, title in (("pipeline", "Pipeline stages, seconds summed over its worker threads (Beam execution-time "
                                     "metrics, sampled); the detector thread's rows run beside the others"),
                        ("sequential", "Sequential loop stages, seconds"),
                        ("detection", "Decode + detect, one loop: stages, seconds"),
                        ("detection_threads", "Decode + detect, threads: stages, thread-seconds")):
        names = []
        for r in runs:
            for k in r.get(mode, {}).get("stages", {}):
                if k not in names:
                    names.append(k)
        if names:
            lines += [f"\n## {title}\n\n", head]
            lines += [row(k, lambda r, m=mode, k=k: r[m]["stages"].get(k)) for k in names]
    lines.append(
        "\nEach mode runs in its own process, one after the other, so each meets its own background load: "
        "a CPU share well below the process's usual one means it waited for the CPU, and ratios of "
        "seconds between modes then move by tens of percent. The CPU-second rows compare the work done, "
        "and the last two ratios compare the pipeline with the decode and detector time, and with the "
        "detector's time alone, measured inside the same run. CPU seconds are the run's process's and "
        "those of the worker processes it started (Beam's multi_processing mode), counted as each ends; "
        "– where a worker's could not be counted.\n")
    return "".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    sizes = sorted(set(args.n or [100]))
    modes, repeat_modes = _choose_modes(args.modes, args.repeat_modes, args.beam_arg)
    corpus_root = Path(args.corpus_dir) if args.corpus_dir else Path(tempfile.mkdtemp(prefix="facebeam-bench-corpus-"))
    sources = find_sources(args.media) if args.media else find_sources()
    context = {
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "repeat": args.repeat,
        "modes": modes,
        "repeat_modes": sorted(repeat_modes),
        "models": _model_tags(args.beam_arg),
        "model_conversion": _convert_models(args.beam_arg),
    }
    runs: list[dict] = []
    try:
        print(f"building a corpus of {max(sizes)} files from {len(sources)} sources in {corpus_root}", flush=True)
        paths = build_corpus(max(sizes), corpus_root / "pool", args.seed, sources)
        for n in sizes:
            corpus = link_corpus(paths[:n], corpus_root / f"n{n}")
            runs.append(_summarise(n, _run_modes(n, corpus, modes, args.repeat, args.beam_arg, repeat_modes)))
            # written after every N, so that a later failure keeps the sizes already measured
            _write(Path(args.out), _results(runs, sources, context))
    finally:
        if not args.corpus_dir:
            shutil.rmtree(corpus_root, ignore_errors=True)
    print(to_markdown(_results(runs, sources, context)))
    return 0


def _choose_modes(modes_arg: str, repeat_modes_arg: str | None, beam_args: list[str]) -> tuple[list[str], set[str]]:
    """The modes that will run (``--modes`` in order, each once) and those of them that ``--repeat``
    applies to. Exits with a message, before any corpus is built, on an unknown mode or when no mode
    is left to run: ``detection_threads`` is left out with one pipeline worker, where it would be the
    one-loop run itself."""
    modes = list(dict.fromkeys(m.strip() for m in modes_arg.split(",") if m.strip()))
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    repeat_modes = {m.strip() for m in repeat_modes_arg.split(",") if m.strip()} if repeat_modes_arg else set(modes)
    if repeat_modes - set(MODES):
        raise SystemExit(f"unknown modes {sorted(repeat_modes - set(MODES))}; choose from {MODES}")
    if not modes:
        raise SystemExit(f"--modes names no mode; choose from {','.join(MODES)}")
    if "detection_threads" in modes and pipeline_workers(beam_args) == 1:
        modes.remove("detection_threads")
        if not modes:
            raise SystemExit("nothing to run: --modes detection_threads is left out with one pipeline worker, "
                             "where it is the one-loop run ('detection'); add e.g. "
                             "--beam_arg=--direct_num_workers=2 or choose other --modes")
        print("detection_threads left out: with one pipeline worker it is the one-loop run ('detection')",
              file=sys.stderr, flush=True)
    return modes, repeat_modes & set(modes)


def _run_modes(n: int, corpus: Path, modes: list[str], repeat: int, beam_args: list[str],
               repeat_modes: set[str] | None = None) -> dict:
    """Each mode ``repeat`` times in rotating order (those in ``repeat_modes``, the others once); the
    fastest run of each mode, with all its times."""
    if "detection_threads" in modes and pipeline_workers(beam_args) == 1:
        modes = [m for m in modes if m != "detection_threads"]  # one thread: the one-loop run itself
    if not modes:
        raise ValueError("no modes to run")
    samples: dict[str, list[dict]] = {mode: [] for mode in modes}
    for r in range(max(repeat, 1)):
        k = r % len(modes)
        for mode in modes[k:] + modes[:k]:
            if r and repeat_modes is not None and mode not in repeat_modes:
                continue
            t0 = time.perf_counter()
            samples[mode].append(_rates(_measure(mode, corpus, beam_args)))
            print(f"N={n} {mode}: {samples[mode][-1]['seconds']:.1f} s "
                  f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
    results = {}
    for mode, runs_of_mode in samples.items():
        results[mode] = min(runs_of_mode, key=lambda x: x["seconds"])
        results[mode]["all_seconds"] = [x["seconds"] for x in runs_of_mode]
    return results


def _convert_models(beam_args: list[str]) -> dict:
    """Converts the models the pipeline will run (``beam_args``' or the defaults) for LiteRT before any
    timing, as the first use on a machine does (cached, see ``models.litert``): the figures are those
    of every later run. Returns what it took."""
    from models.handler import FaceModelHandler
    from models.litert import cache_dir

    t0 = time.perf_counter()
    models = FaceModelHandler(*model_specs(beam_args)).load_model()
    return {"runtime": models.runtime, "seconds": round(time.perf_counter() - t0, 2), "cache": str(cache_dir())}


def _model_tags(beam_args: list[str]) -> dict[str, str]:
    """name@sha256 of the models every mode times, by task."""
    return {spec.task: spec.tag for spec in model_specs(beam_args)}


def _results(runs: list[dict], sources, context: dict) -> dict:
    last = runs[-1]
    n_photos = sum(s.kind == "photo" for s in sources)
    names = ", ".join(s.path.name for s in sources)
    met_speedup = {r["n"]: r.get("speedup_vs_sequential", 0) >= TARGET_SPEEDUP for r in runs}
    met_ratio = {r["n"]: r.get("ratio_to_detection_limit", float("inf")) <= TARGET_RATIO for r in runs}
    return {
        "speedup_vs_sequential": last.get("speedup_vs_sequential"),
        "ratio_to_detection_limit": last.get("ratio_to_detection_limit"),
        "speedup_vs_sequential_cpu": last.get("speedup_vs_sequential_cpu"),
        "ratio_to_detection_limit_cpu": last.get("ratio_to_detection_limit_cpu"),
        "ratio_to_detection_loop": last.get("ratio_to_detection_loop"),
        "ratio_to_own_decode_detect": last.get("ratio_to_own_decode_detect"),
        "ratio_to_own_detector": last.get("ratio_to_own_detector"),
        "at_n": last["n"],
        "targets": {
            "speedup_vs_sequential": {"target": f">= {TARGET_SPEEDUP}", "met": met_speedup},
            "ratio_to_detection_limit": {"target": f"<= {TARGET_RATIO}", "met": met_ratio},
        },
        "runs": runs,
        "corpus": (f"{n_photos} photos and {len(sources) - n_photos} clips ({names}), "
                   "repeated with a random crop, flip, brightness/contrast and JPEG/MPEG-4 re-encoding; "
                   "one file in four is a clip, sampled at 1 frame/s"),
        "baseline": ("OpenCV decode, make_detector('mtcnn'), faces_in_frame, then per face one eager "
                     "Keras call per model (emotion, age-gender), rows written once at the end"),
        "machine": _machine(),
        **context,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def _write(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(to_markdown(results))


if __name__ == "__main__":
    sys.exit(main())
