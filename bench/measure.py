"""The three timed runs over one corpus directory, each meant to run in a fresh process.

    python -m bench.measure {pipeline|sequential|detection} CORPUS_DIR RESULT_JSON [BEAM FLAGS...]

- ``pipeline``: facebeam end to end, ``pipelines.analyze.run`` on Beam's default local runner; per-stage
  times from Beam's execution-time metrics (milliseconds per transform).
- ``sequential``: the same detector and models in a plain loop, one model call per face and model
  (as deepface and fer apply their models), decoding with OpenCV.
- ``detection``: decode + detection alone, at the pipeline's detection scale, in one loop: the
  detection-bound limit.
- ``detection_threads``: the same, spread over as many threads as the pipeline has workers: the
  limit of the detector on all the cores the pipeline uses.

Heavy libraries are imported before the clock starts, in every mode alike; model and detector
loading are inside the timed region. CPU seconds are those of the process and of the child processes it
waited for in the timed region (Beam's ``multi_processing`` workers); None where a child was still there
at the end, its CPU time not yet known. The result JSON also holds the process's peak RSS.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["MODES", "measure"]

MODES = ("pipeline", "sequential", "detection", "detection_threads")
PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png"}

# Beam transform-name prefixes -> benchmark stage, first match wins.
STAGE_OF_TRANSFORM = (
    ("DetectFaces/Detect", "detect+align"),
    ("ReadSources/Decode", "decode"),
    ("ReadSources/", "list+plan"),
    ("PredictAttributes/ModelInputs", "model inputs"),
    ("PredictAttributes/RunInference", "infer"),
    ("PredictAttributes/", "infer"),
    ("WriteResults/", "rows+write"),
)


def _peak_rss_mib(with_children: bool) -> dict[str, float]:
    """Peak resident memory of this process (and of its worker processes, for a multi-process runner)."""
    peak = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if with_children:
        peak["peak_rss_workers_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return peak


def _children_cpu() -> float:
    """CPU seconds (user + system) of the child processes waited for so far, with their own waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _live_children() -> list[int] | None:
    """This process's child processes not yet waited for (running, or exited and not reaped), from
    /proc/PID/task/TID/children; None where the system does not say."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    if not (tasks / str(os.getpid()) / "children").exists():
        return None  # no /proc, or a kernel that does not list children
    pids: set[int] = set()
    for task in tasks.iterdir():  # a child is listed under the thread that started it
        try:
            pids.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:  # a thread that ended meanwhile (its children move to another thread)
            continue
    return sorted(pids)


class _CpuClock:
    """CPU seconds of this process and of the child processes that it starts and waits for meanwhile.

    ``time.process_time`` alone counts this process only and misses the work of Beam's
    ``multi_processing`` workers, child processes. The kernel adds a child's CPU time to
    ``RUSAGE_CHILDREN`` only once the child has been waited for, which Beam's runner does before ``run``
    returns (``SubprocessSdkWorker.run`` waits for its worker, and the runner closes its workers when
    the pipeline ends). A child still there at the start or at the end has CPU time that is missed or
    that belongs elsewhere: the figure is then None, as not known, rather than too small. Where the
    system does not list children (no /proc), the figure is trusted.
    """

    def __init__(self):
        self._live_before = _live_children()
        self._own0, self._children0 = time.process_time(), _children_cpu()

    def stop(self) -> dict:
        """``cpu_seconds`` (None where not known) and the children's share of it, ``cpu_seconds_children``."""
        own, children = time.process_time() - self._own0, _children_cpu() - self._children0
        live = sorted(set(self._live_before or []) | set(_live_children() or []))
        if live:
            return {"cpu_seconds": None, "cpu_seconds_children": None,
                    "cpu_seconds_note": f"not known: child processes {live} not waited for in the timed run"}
        return {"cpu_seconds": round(own + children, 3), "cpu_seconds_children": round(children, 3)}


def _media(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.is_file())


def _frames(path: Path, decode):
    """(frame_index, timestamp, RGB image) for a photo or the frames the pipeline samples from a clip."""
    from transforms import video

    if path.suffix.lower() in PHOTO_EXTENSIONS:
        yield None, None, decode(path)
        return
    info = video.probe_video(str(path))
    # the pipeline's defaults: 1 frame per second, no cap
    yield from video.read_frames(str(path), info.fps, 1.0, 0)


def _decode_cv2(path: Path):
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_facebeam(path: Path):
    from transforms import imaging

    return imaging.decode_image(path.read_bytes())


class _Clock:
    """Seconds spent per named stage (summed over threads when several time into it)."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def timed(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.totals[stage] += time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.totals.items()}


def _beam_msecs(result) -> dict[str, float]:
    """Seconds of processing per transform, from the runner's execution-time monitoring infos."""
    from apache_beam.coders import VarIntCoder

    seconds: dict[str, float] = defaultdict(float)
    infos = getattr(result, "monitoring_infos", None)
    if infos is None:
        return {}
    coder = VarIntCoder()
    for info in infos():
        if info.urn == "beam:metric:ptransform_execution_time:total_msecs:v1":
            seconds[info.labels.get("PTRANSFORM", "?")] += coder.decode(info.payload) / 1000
    return dict(seconds)


def _by_stage(per_transform: dict[str, float]) -> dict[str, float]:
    stages: dict[str, float] = defaultdict(float)
    for name, secs in per_transform.items():
        stage = next((s for prefix, s in STAGE_OF_TRANSFORM if name.startswith(prefix)), "shuffles+other")
        stages[stage] += secs
    return {k: round(v, 3) for k, v in sorted(stages.items())}


def _warm_imports():
    for name in ("apache_beam", "cv2", "keras", "mtcnn", "pyarrow.parquet", "tensorflow", "pipelines.analyze"):
        importlib.import_module(name)


class _Spy:
    """Adds the time spent in chosen methods to named totals while active (the runner is in-process)."""

    def __init__(self, targets: dict[str, list[tuple[type, str]]]):
        self._targets = targets
        self._saved: list[tuple[type, str, object]] = []
        self.totals: dict[str, float] = defaultdict(float)

    def __enter__(self):
        for name, methods in self._targets.items():
            for cls, attr in methods:
                orig = getattr(cls, attr)
                self._saved.append((cls, attr, orig))

                def timed(*args, _orig=orig, _name=name, **kwargs):
                    t0 = time.perf_counter()
                    try:
                        return _orig(*args, **kwargs)
                    finally:
                        self.totals[_name] += time.perf_counter() - t0

                setattr(cls, attr, timed)
        return self

    def __exit__(self, *exc):
        for cls, attr, orig in reversed(self._saved):
            setattr(cls, attr, orig)


def run_pipeline(corpus: Path, extra_args: list[str]) -> dict:
    """facebeam end to end on ``corpus``; faces counted from the Parquet output."""
    import pyarrow.parquet as pq

    from models.handler import FaceModelHandler, FaceModels
    from pipelines import analyze
    from transforms import faces

    # Time inside the fused steps, to split them (only seen with the in-process runner).
    spy = _Spy({
        "detector calls": [(faces._Mtcnn, "__call__"), (faces._Haar, "__call__")],
        "detect + align": [(faces, "faces_in_frame")],
        "detector load": [(faces._Mtcnn, "__init__"), (faces._Haar, "__init__")],
        "model calls": [(FaceModels, "predict")],
        "model load": [(FaceModelHandler, "load_model")],
    })
    runtimes = []  # what ran the models (models.handler.RUNTIMES), as each load resolved it

    def load_model(self, _load=FaceModelHandler.load_model):
        models = _load(self)
        runtimes.append(models.runtime)
        return models

    with tempfile.TemporaryDirectory(prefix="facebeam-bench-out-") as out, \
            mock.patch.object(FaceModelHandler, "load_model", load_model), spy:
        argv = ["--input", str(corpus), "--output", out, "--overwrite", *extra_args]
        cpu_clock = _CpuClock()
        t0 = time.perf_counter()
        result, output = analyze.run(argv)
        wall = time.perf_counter() - t0
        cpu = cpu_clock.stop()
        face_files = sorted(Path(output).glob("faces-*.parquet"))
        source_files = sorted(Path(output).glob("sources-*.parquet"))
        n_faces = sum(pq.read_metadata(f).num_rows for f in face_files)
        sources = pq.read_table(source_files, columns=["status", "frames"]).to_pylist() if source_files else []
    per_transform = _beam_msecs(result)
    stages = _by_stage(per_transform)
    top = sorted(per_transform.items(), key=lambda kv: -kv[1])[:12]
    inside = {k: round(v, 3) for k, v in spy.totals.items()}
    if "detect+align" in stages and "detector calls" in inside:
        # The detector runs in a thread of its own, a frame ahead (transforms.faces._DetectFacesFn): Beam's
        # time for the Detect step is this thread waiting for it; the detector thread's own time runs
        # beside the other stages.
        stages["detect: waiting for the detector thread"] = stages.pop("detect+align")
        stages["detector thread: detector calls"] = inside["detector calls"]
        stages["detector thread: align + crop"] = round(
            max(inside.get("detect + align", 0.0) - inside["detector calls"], 0.0), 3)
    if "infer" in stages and "model calls" in inside:
        stages["infer: model calls"] = inside["model calls"]
        stages["infer: batching + rest"] = round(max(stages.pop("infer") - inside["model calls"], 0.0), 3)
    workers = pipeline_workers(extra_args)
    if workers == 1:
        stages["outside transforms: start-up, setup, runner"] = round(wall - sum(per_transform.values()), 3)
    # else the stage times add up the workers' threads: their sum exceeds the wall time
    return {
        "workers": workers,
        "seconds": round(wall, 3),
        **cpu,
        "files": len(sources),
        "frames": sum(s["frames"] or 0 for s in sources),
        "faces": n_faces,
        "errors": sum(s["status"] == "error" for s in sources),
        "stages": stages,
        "inside": inside,
        "top_transforms": {name: round(secs, 3) for name, secs in top},
        "beam_args": extra_args,
        "model_runtime": ",".join(sorted(set(runtimes))),
    }


def run_sequential(corpus: Path, beam_args: list[str] | None = None) -> dict:
    """Detector + aligner + one call per face and model, in a plain loop; rows written once at the end.
    The models are those of ``beam_args`` (see ``model_specs``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.handler import FaceModelHandler
    from transforms.faces import DetectOptions, faces_in_frame, make_detector
    from transforms.inference import model_inputs
    from transforms.records import Frame

    clock = _Clock()
    cpu_clock = _CpuClock()
    t0 = time.perf_counter()
    specs = model_specs(beam_args or [])
    detector = clock.timed("load", make_detector, "mtcnn")
    models = clock.timed("load", FaceModelHandler(*specs, runtime="tensorflow").load_model)  # eager Keras calls below
    options = DetectOptions()
    rows, files, frames = [], 0, 0
    for path in _media(corpus):
        files += 1
        decoded = _frames(path, _decode_cv2)
        while True:
            item = clock.timed("decode", next, decoded, None)
            if item is None:
                break
            index, ts, image = item
            frames += 1
            frame = Frame(str(path), "image" if index is None else "video", index, ts, image)
            crops = clock.timed("detect+align", faces_in_frame, frame, detector, options)
            for face in crops:
                x_emotion = clock.timed("model inputs", model_inputs, face.crop, specs[0])[None, ..., None]
                x_age = clock.timed("model inputs", model_inputs, face.crop, specs[1])[None]
                x_emotion, x_age = x_emotion.astype(np.float32), x_age.astype(np.float32)
                emotion = clock.timed("infer", lambda: np.asarray(models.emotion(x_emotion, training=False))[0])
                out = clock.timed("infer", models.age_gender, x_age, training=False)
                rows.append({"source_uri": face.source_uri, "face_index": face.face_index,
                             "emotion": int(np.argmax(emotion)), "age": float(np.asarray(out["age"])[0, 0]),
                             "p_female": float(np.asarray(out["gender"])[0, 0])})
    with tempfile.TemporaryDirectory(prefix="facebeam-bench-seq-") as out_dir:
        clock.timed("write", pq.write_table, pa.Table.from_pylist(rows), os.path.join(out_dir, "faces.parquet"))
    wall = time.perf_counter() - t0
    cpu = cpu_clock.stop()
    return {"seconds": round(wall, 3), **cpu, "files": files, "frames": frames,
            "faces": len(rows), "stages": clock.rounded()}


def run_detection(corpus: Path, workers: int = 1) -> dict:
    """Decode (facebeam's decoder) + MTCNN at the pipeline's detection scale, nothing else.

    ``workers`` > 1: the files are shared out over that many threads, one detector each (as each
    pipeline worker holds one): the detector's own limit on a machine with several cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    from transforms import imaging
    from transforms.faces import DetectOptions, make_detector

    clock = _Clock()
    local = threading.local()
    options = DetectOptions()

    def one_file(path: Path) -> tuple[int, int]:
        """(frames, detections) of one file."""
        if getattr(local, "detector", None) is None:
            local.detector = clock.timed("load", make_detector, "mtcnn")
        detector = local.detector
        frames = detections = 0
        decoded = _frames(path, _decode_facebeam)
        while True:
            item = clock.timed("decode", next, decoded, None)
            if item is None:
                break
            image = item[2]
            frames += 1
            h, w = image.shape[:2]
            scale = imaging.detection_scale(w, h, options.min_face_size, options.max_side, detector.min_face)
            found = clock.timed("detect (resize + detector)", lambda: detector(imaging.resize_by(image, scale)))
            detections += len(found)
        return frames, detections

    cpu_clock = _CpuClock()
    t0 = time.perf_counter()
    if workers <= 1:
        per_file = [one_file(path) for path in _media(corpus)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            per_file = list(pool.map(one_file, _media(corpus)))
    wall = time.perf_counter() - t0
    cpu = cpu_clock.stop()
    # with several threads the stage totals add up thread time, more than the wall time
    return {"seconds": round(wall, 3), **cpu, "files": len(per_file),
            "frames": sum(f for f, _ in per_file), "detections": sum(d for _, d in per_file), "workers": workers,
            "stages": clock.rounded()}


def model_specs(beam_args: list[str]) -> tuple:
    """The (emotion, age-gender) models the pipeline runs with ``beam_args`` (``--emotion_model``,
    ``--age_gender_model``; the shipped defaults otherwise), so every mode times the same models."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from models.registry import resolve
    from pipelines.analyze import AnalyzeOptions, build_argv

    a = PipelineOptions(build_argv(list(beam_args))).view_as(AnalyzeOptions)
    return resolve(a.emotion_model, "emotion"), resolve(a.age_gender_model, "age-gender")


def pipeline_workers(beam_args: list[str]) -> int:
    """The pipeline's worker count in ``beam_args`` (``--direct_num_workers``; 0 means one per CPU)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from pipelines.analyze import build_argv

    n = PipelineOptions(build_argv(list(beam_args))).view_as(DirectOptions).direct_num_workers
    return (os.cpu_count() or 1) if n == 0 else max(n or 1, 1)


def measure(mode: str, corpus: Path, extra_args: list[str] | None = None) -> dict:
    """Runs one mode in this process and returns its figures, peak RSS included."""
    _warm_imports()
    if mode == "pipeline":
        result = run_pipeline(corpus, list(extra_args or []))
    elif mode == "sequential":
        result = run_sequential(corpus, list(extra_args or []))
    elif mode == "detection":
        result = run_detection(corpus)
    elif mode == "detection_threads":
        result = run_detection(corpus, pipeline_workers(extra_args or []))
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    result["mode"] = mode
    result.update(_peak_rss_mib("multi_processing" in " ".join(extra_args or [])))
    return result


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    mode, corpus, out = argv[0], Path(argv[1]), Path(argv[2])
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    result = measure(mode, corpus, argv[3:])
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
