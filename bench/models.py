"""What the models cost per face: each model alone and the handler's call (plain, and with each test-time
augmentation mode of ``models.tta``), per runtime and batch size.

    python -m bench.models [--batch 1 --batch 64] [--repeat 20] [--out bench/models.json]
    python -m bench.models --emotion runs/out/emotion_e4.keras --batch 64 --out runs/bench/e4.json

Times ``FaceModels.predict`` (both models, as the pipeline calls them) and each model alone, on random
pixels, for every runtime of ``models.handler.RUNTIMES`` that this machine has, after one warm-up call
per shape; the median of ``--repeat`` calls counts. Writes JSON and a Markdown table next to it.
``--emotion`` and ``--age_gender`` time other models than the defaults (names or ``.keras`` paths).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: traces, interpreters, allocations
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def measure(batches: list[int], repeat: int, runtimes: list[str], emotion: str | None = None,
            age_gender: str | None = None) -> list[dict]:
    from models.handler import FaceModelHandler
    from models.registry import DEFAULT_MODELS, resolve
    from models.tta import TTA_MODES

    specs = (resolve(emotion or DEFAULT_MODELS["emotion"], "emotion"),
             resolve(age_gender or DEFAULT_MODELS["age-gender"], "age-gender"))
    rng = np.random.default_rng(0)
    rows = []
    for runtime in runtimes:
        try:
            loaded = FaceModelHandler(*specs, runtime=runtime).load_model()
        except ImportError as e:  # e.g. no LiteRT wheel for this platform
            print(f"{runtime}: skipped ({e})", flush=True)
            continue
        if runtime == "tensorflow":
            import tensorflow as tf

            alone = [tf.function(lambda x, m=m: m(x, training=False)) for m in (loaded.emotion, loaded.age_gender)]
        else:
            alone = list(loaded.lite)
        for batch in batches:
            x = [rng.uniform(0, 255, (batch, *spec.input_shape)).astype(np.float32) for spec in specs]
            both = _median_ms(lambda m=loaded, x=x: m.predict(*x), repeat)
            row = {"runtime": runtime, "batch": batch, "ms_per_face": round(both / batch, 3)}
            for tta in TTA_MODES[1:]:
                row[f"ms_per_face_tta_{tta}"] = round(
                    _median_ms(lambda m=loaded, x=x, t=tta: m.predict(*x, t), repeat) / batch, 3)
            for spec, model, xi in zip(specs, alone, x):
                row[f"{spec.name}_ms_per_face"] = round(_median_ms(lambda: model(xi), repeat) / batch, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del loaded
    return rows


def to_markdown(results: dict) -> str:
    names = [k for k in results["rows"][0] if k.endswith("_ms_per_face")] if results["rows"] else []
    ttas = [k for k in results["rows"][0] if k.startswith("ms_per_face_tta_")] if results["rows"] else []
    lines = ["# facebeam model cost\n\n",
             f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
             f"TensorFlow {results['machine']['tensorflow']}; {results['when']}; the median of "
             f"{results['repeat']} calls on random pixels, after a warm-up call.\n\n",
             "| runtime | batch | both models (the handler's call), ms per face | "
             + "".join(f"the same with --tta {k.rsplit('_', 1)[1]} | " for k in ttas)
             + " | ".join(n.replace("_ms_per_face", "") + " alone, ms per face" for n in names) + " |\n",
             "|---|---:|---:|" + "---:|" * (len(ttas) + len(names)) + "\n"]
    for r in results["rows"]:
        lines.append(f"| {r['runtime']} | {r['batch']} | {r['ms_per_face']:.2f} | "
                     + "".join(f"{r[k]:.2f} | " for k in ttas)
                     + " | ".join(f"{r[n]:.2f}" for n in names) + " |\n")
    return "".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, action="append", help="batch size; repeatable (default 1, 16, 64)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per figure (the median counts)")
    parser.add_argument("--runtime", action="append", choices=("litert", "tensorflow"),
                        help="runtime to time; repeatable (default both)")
    parser.add_argument("--emotion", default=None, help="emotion model to time (default: the pipeline's)")
    parser.add_argument("--age_gender", default=None, help="age-gender model to time (default: the pipeline's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "models.json"), help="results JSON (.md next to it)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    rows = measure(args.batch or [1, 16, 64], args.repeat, args.runtime or ["tensorflow", "litert"], args.emotion,
                   args.age_gender)
    results = {"rows": rows, "repeat": args.repeat, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "tensorflow": tf.__version__}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
