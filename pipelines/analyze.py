"""facebeam analyze: images and videos in, one Parquet row per face out.

    python -m pipelines.analyze --input photos/ --input 'clips/*.mp4' --output out/

ReadSources -> DetectFaces -> PredictAttributes -> WriteResults. Every flag not listed by
``--help`` goes to Beam (``--runner``, ``--direct_num_workers``, ...). Without ``--runner`` the
pipeline runs on Beam's in-process FnApiRunner, which works offline.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import glob
import logging
import math
import os
import shutil
import sys
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, TestOptions

from models.handler import RUNTIMES, FaceModelHandler
from models.registry import DEFAULT_MODELS, ModelIntegrityError, is_uri, resolve, verify
from models.tta import TTA_HELP, TTA_MODES
from pipelines.summary import format_summary, previous_contents, summarize, table_files
from transforms import progress
from transforms.annotate import Annotate
from transforms.common import WithholdFailedSources
from transforms.faces import DETECTORS, DetectFaces, DetectOptions, check_detect_options, make_detector
from transforms.inference import PredictAttributes
from transforms.sinks import RunInfo, WriteResults
from transforms.tracks import AssignTracks
from transforms.sources import ReadOptions, ReadSources, expand_inputs, list_input

__all__ = ["AnalyzeOptions", "RunFailed", "run", "build", "main", "build_argv"]

LOG = logging.getLogger("facebeam")

DEFAULT_RUNNER = "FnApiRunner"
# Beam's local runners, which run the workers on this machine.
_LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner")
# Runners known to lose data silently: refused, with the reason.
_REFUSED_RUNNERS = {
    "daskrunner": "Beam's DaskRunner drops what DoFns emit in finish_bundle (the last batch of each "
                  "partition, whole Parquet files) while reporting success. Use the local default, "
                  "--runner=PortableRunner (Flink), or --runner=DataflowRunner instead.",
}
# Measured on a 1,000-file run: the worker threads were handed undecodable input between two steps and
# the whole run failed.
_THREADS_REFUSED = ("with several worker threads Beam's local runner failed on 1,000 files (an undecodable "
                    "input stream between two steps, which ends the run). Use --direct_running_mode="
                    "multi_processing for several local workers, or one worker (the default).")
OUTPUT_PREFIXES = ("faces-", "sources-", "tracks-")


class _Switch(argparse.Action):
    """An on/off flag: ``--flag`` turns it on, and so does ``--flag=true``, as a Dataflow Flex Template
    passes its parameters (``--flag=false`` turns it off)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", const=True, default=False, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentError(self, f"expected true or false, not {value!r}")
            value = value.lower() in ("true", "1", "yes")
        setattr(namespace, self.dest, value)


class AnalyzeOptions(PipelineOptions):
    """facebeam's own flags; every other flag is Beam's."""

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("facebeam analyze")
        g.add_argument("--input", action="append", default=None,
                       help="file, directory (recursive), glob pattern or FileSystems URI; repeatable")
        g.add_argument("--output", default=None, help="output directory (local path or URI) for the Parquet tables")
        g.add_argument("--overwrite", action=_Switch,
                       help="replace the tables of an earlier run in --output")
        g.add_argument("--skip_existing", default=None, metavar="PREVIOUS_OUTPUT",
                       help="output directory of an earlier run: files whose content (sha256) it analysed "
                            "(ok or no_face) are not analysed again but reported as 'skipped' with that run's id")
        g.add_argument("--fail_on_error", action=_Switch,
                       help="exit with status 1 when any input failed (after writing the tables and the summary)")
        g.add_argument("--detector", default="mtcnn", choices=DETECTORS, help="face detector (haar is faster)")
        g.add_argument("--min_face_size", type=float, default=20.0,
                       help="smallest face side to report, in pixels of the original image")
        g.add_argument("--min_confidence", type=float, default=0.9, help="smallest MTCNN score to report")
        g.add_argument("--detect_max_side", type=int, default=1920,
                       help="images bigger than this are detected on a downscaled copy (0: never; a --min_face_size "
                            "below 20 then enlarges the copy to at most 4096 px)")
        g.add_argument("--max_pixels", type=int, default=100_000_000,
                       help="images declaring more pixels are refused before decoding")
        g.add_argument("--video_fps", type=float, default=1.0, help="video frames sampled per second (0: all)")
        g.add_argument("--max_frames_per_video", type=int, default=0, help="cap on sampled frames per video (0: none)")
        g.add_argument("--video_chunk_seconds", type=float, default=60.0,
                       help="videos are split into ranges of this length, decoded in parallel (0: one range per video)")
        g.add_argument("--emotion_model", default=DEFAULT_MODELS["emotion"], help="shipped model name or .keras path")
        g.add_argument("--age_gender_model", default=DEFAULT_MODELS["age-gender"],
                       help="shipped model name or .keras path")
        g.add_argument("--min_batch_size", type=int, default=1, help="smallest RunInference batch")
        g.add_argument("--max_batch_size", type=int, default=64, help="largest RunInference batch")
        g.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
        g.add_argument("--flip_tta", action=_Switch, help="the same as --tta flip")
        g.add_argument("--no_calibration", action=_Switch,
                       help="emotion probabilities as the network gives them, without its fitted temperature")
        g.add_argument("--large_model", action=_Switch,
                       help="share one copy of the models between the processes of a worker")
        g.add_argument("--model_copies", type=int, default=None, help="model copies per worker with --large_model")
        g.add_argument("--model_runtime", default="auto", choices=RUNTIMES,
                       help="what runs the models: litert (CPU kernels, a third faster than TensorFlow on CPUs, "
                            "same outputs), tensorflow, or auto: TensorFlow where it sees a GPU, else LiteRT")
        g.add_argument("--tf_threads", type=int, default=0,
                       help="TensorFlow threads per process, and LiteRT threads per model call (0: default)")
        g.add_argument("--num_shards", type=int, default=0, help="Parquet files per table (0: runner decides)")
        g.add_argument("--run_id", default=None, help="identifier written into every row (default: time + random)")
        g.add_argument("--store_crops", action=_Switch,
                       help="keep each face's aligned crop as a small JPEG in the faces table (crop_jpeg)")
        g.add_argument("--quiet", action=_Switch,
                       help="no progress bar, no summary; errors only (see the sources table)")
        g.add_argument("--annotate", action=_Switch,
                       help="write copies of the inputs with faces, boxes and labels drawn, into OUTPUT/annotated/")


def build_argv(argv: list[str]) -> list[str]:
    """Drops a literal '--' (Beam would then ignore --runner) and sets the offline default runner."""
    argv = [a for a in argv if a != "--"]
    if not any(a == "--runner" or a.startswith("--runner=") for a in argv):
        argv.append(f"--runner={DEFAULT_RUNNER}")
    return argv


def _runner_name(opts: PipelineOptions) -> str:
    """The runner's class name, without a module path ("FnApiRunner" for "a.b.FnApiRunner")."""
    return str(opts.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1]


def _check_runner(opts: PipelineOptions) -> None:
    runner = _runner_name(opts)
    if opts.view_as(TestOptions).dry_run and runner != "DataflowRunner":
        raise ValueError(f"--dry_run builds a Dataflow job graph without submitting it: it needs "
                         f"--runner=DataflowRunner (with --runner={runner or DEFAULT_RUNNER} the run would read and write)")
    reason = _REFUSED_RUNNERS.get(runner.lower())
    if reason:
        raise ValueError(f"--runner={opts.view_as(StandardOptions).runner} is not supported: {reason}")
    direct = opts.view_as(DirectOptions)
    if runner in _LOCAL_RUNNERS and direct.direct_running_mode == "multi_threading" \
            and (direct.direct_num_workers or 1) != 1:
        raise ValueError(f"--direct_running_mode=multi_threading is not supported: {_THREADS_REFUSED}")


def _detect_options(a: AnalyzeOptions) -> DetectOptions:
    return DetectOptions(a.detector, a.min_face_size, a.min_confidence, a.detect_max_side)


def _check_unknown_flags(argv: list[str], opts: PipelineOptions) -> None:
    """Refuses a flag that neither Beam nor facebeam knows and that reads like one of facebeam's own
    (``--min-face-size``, ``--min_face_sise``): Beam passes unknown flags on with only a warning, and the
    run would go ahead with the default. Others are left to Beam (a runner may take flags of its own)."""
    parser = argparse.ArgumentParser(add_help=False)
    AnalyzeOptions._add_argparse_args(parser)
    ours = sorted({action.dest for action in parser._actions})
    known = set(opts.get_all_options())
    for arg in argv:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if not name or name in known:
            continue
        near = difflib.get_close_matches(name.replace("-", "_"), ours, n=1, cutoff=0.85)
        if near:
            raise ValueError(f"unknown flag --{name}: did you mean --{near[0]}? (see facebeam analyze --help)")


def _check_flags(a: AnalyzeOptions) -> None:
    """Refuses flag values that would quietly give wrong results (a negative cap reads no frame)."""
    if any(not str(i).strip() for i in a.input):
        raise ValueError("--input is empty (an unset variable?); give a file, directory, glob or URI")
    check_detect_options(_detect_options(a))
    at_least = [("--max_pixels", a.max_pixels, 1),
                ("--video_fps", a.video_fps, 0), ("--max_frames_per_video", a.max_frames_per_video, 0),
                ("--video_chunk_seconds", a.video_chunk_seconds, 0),
                ("--min_batch_size", a.min_batch_size, 1), ("--max_batch_size", a.max_batch_size, a.min_batch_size),
                ("--model_copies", a.model_copies or 1, 1), ("--tf_threads", a.tf_threads, 0),
                ("--num_shards", a.num_shards, 0)]
    for flag, value, low in at_least:
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value} is not a finite number")
        if value < low:
            raise ValueError(f"{flag} {value} is below {low}")
    if a.output and any(c in a.output for c in "*?["):
        raise ValueError(f"--output {a.output}: Beam's file sinks read the output location as a pattern; "
                         "choose a location without *, ? or [")


def _prepare_output(output: str, overwrite: bool) -> str:
    """Absolute output location; refuses to mix with an earlier run unless ``overwrite``."""
    try:
        if FileSystems.get_scheme(output) is None:
            output = os.path.abspath(output)
            os.makedirs(output, exist_ok=True)
        existing = [f for prefix in OUTPUT_PREFIXES for f in table_files(output, prefix.rstrip("-"))]
    except OSError as e:  # a file where the directory should be, no permission
        raise ValueError(f"--output {output}: cannot use it as the output directory ({e})") from e
    if existing and not overwrite:
        raise ValueError(f"{output} already holds a run ({len(existing)} Parquet files); "
                         "pass --overwrite to replace it or choose another --output")
    if existing:
        # The earlier run's annotated copies go with its tables (this run writes its own with --annotate).
        annotated = FileSystems.match([FileSystems.join(output, "annotated", "*-*.jpg"),
                                       FileSystems.join(output, "annotated", "*-*.mp4")])
        FileSystems.delete(existing + [m.path for r in annotated for m in r.metadata_list])
    return output


class RunFailed(RuntimeError):
    """The runner failed the job after it was built (a worker or the runner itself broke, not one
    input: those are rows of the sources table)."""


def run(argv: list[str] | None = None, test_pipeline=None):
    """Builds and runs the pipeline; returns (PipelineResult or None, absolute output location)."""
    argv = build_argv(list(sys.argv[1:] if argv is None else argv))
    opts = PipelineOptions(argv)
    a = opts.view_as(AnalyzeOptions)
    if not a.input:
        raise ValueError("give at least one --input (file, directory, glob or URI)")
    if not a.output:
        raise ValueError("give --output, the directory for the Parquet tables")
    _check_unknown_flags(argv, opts)
    _check_runner(opts)
    _check_flags(a)
    patterns = expand_inputs(a.input)
    known = None
    if a.skip_existing:
        if os.path.abspath(a.skip_existing.rstrip("/")) == os.path.abspath(a.output.rstrip("/")):
            raise ValueError("--skip_existing must name an earlier output, not --output itself: the skipped rows "
                             "point to the earlier run's tables, which must stay where they are")
        known = previous_contents(a.skip_existing)
    emotion = resolve(a.emotion_model, "emotion")
    age_gender = resolve(a.age_gender_model, "age-gender")
    for spec in (emotion, age_gender):
        if not is_uri(spec.path):  # a model file that is not what its sidecar records stops the run here,
            verify(spec)           # not in every worker (one on a URI is checked where it is fetched)
    handler = FaceModelHandler(emotion, age_gender, a.min_batch_size, a.max_batch_size,
                               "flip" if a.flip_tta and a.tta == "none" else a.tta,
                               a.large_model, a.model_copies, a.tf_threads, calibrate=not a.no_calibration,
                               runtime=a.model_runtime)
    # Last of the checks, as --overwrite deletes the earlier tables. A dry run (e.g. building a
    # Dataflow job graph offline) reads and writes nothing.
    output = a.output if opts.view_as(TestOptions).dry_run else _prepare_output(a.output, a.overwrite)
    run_id = a.run_id or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    run_info = RunInfo(run_id, emotion.tag, age_gender.tag)
    read_options = ReadOptions(a.video_fps, a.max_frames_per_video, a.video_chunk_seconds, a.max_pixels, known)
    detect_options = _detect_options(a)

    show_progress = not a.quiet and test_pipeline is None and _runs_in_this_process(opts)
    if show_progress:
        progress.start(_count_inputs(patterns))
    pipeline = test_pipeline or beam.Pipeline(options=opts)
    built = False
    try:
        with pipeline as p:
            build(p, patterns, output, handler, run_info, read_options, detect_options, num_shards=a.num_shards,
                  store_crops=a.store_crops, annotate=a.annotate)
            built = True
    except Exception as e:
        if built:  # the runner failed the job: not a setting to change, whatever the exception's type
            raise RunFailed(f"{type(e).__name__}: {e}") from e
        if getattr(pipeline, "local_tempdir", None):  # Beam removes the local temp directory it made
            shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)  # for the pipeline only when it runs
        raise
    finally:
        progress.close()
    _remove_empty_temp_dirs(output)
    return getattr(pipeline, "result", None), output


def _runs_in_this_process(opts: PipelineOptions) -> bool:
    """True for the local runner with its workers in this process (where a progress bar can follow them)."""
    direct = opts.view_as(DirectOptions)
    return _runner_name(opts) in _LOCAL_RUNNERS and (direct.direct_num_workers or 1) == 1 \
        and direct.direct_running_mode != "multi_processing"


def _count_inputs(patterns: list[tuple[str, bool]]) -> int:
    """The number of distinct inputs the patterns match (listed again, so only for local runs)."""
    return len({entry.uri for pattern, is_dir in patterns for entry in list_input(pattern, is_dir)})


def _remove_empty_temp_dirs(output: str) -> None:
    """Beam's file sinks leave their emptied temp directories behind on local disks."""
    if FileSystems.get_scheme(output) is None:
        for path in glob.glob(os.path.join(output, "beam-temp-*")):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def build(p, patterns, output: str, handler, run_info: RunInfo, read_options: ReadOptions = ReadOptions(),
          detect_options: DetectOptions = DetectOptions(), detector_factory=make_detector, num_shards: int = 0,
          store_crops: bool = False, annotate: bool = False):
    """Wires ReadSources -> DetectFaces -> PredictAttributes -> AssignTracks -> WriteResults into ``p``.

    Returns the PCollections of the written file names (faces, sources, tracks).
    """
    read = p | "ReadSources" >> ReadSources(patterns, read_options)
    faces, detect_errors = read.frames | "DetectFaces" >> DetectFaces(detect_options, detector_factory)
    predicted, inference_errors = faces | "PredictAttributes" >> PredictAttributes(handler, store_crops)
    tracked, tracks = predicted | "AssignTracks" >> AssignTracks(run_info.run_id, rate=read_options.video_fps)
    errors = (read.errors, detect_errors, inference_errors) | "AllErrors" >> beam.Flatten()
    if annotate:
        _ = (
            (tracked, errors)
            | "AnnotateOkSources" >> WithholdFailedSources(key=lambda fa: fa[0].source_uri)
            | "Annotate" >> Annotate(output, read_options))
    return (read.files, read.frame_counts, tracked, errors, tracks, read.contents) | "WriteResults" >> WriteResults(
        output, run_info, num_shards)


def _quiet_beam_root_notices(record: logging.LogRecord) -> bool:
    return record.name != "root" or record.levelno >= logging.ERROR \
        or f"{os.sep}apache_beam{os.sep}" not in record.pathname


def _help_text() -> str:
    """``facebeam analyze --help``: facebeam's own flags (Beam's parser would list none of them)."""
    parser = argparse.ArgumentParser(
        prog="facebeam analyze", description="Images and videos in, one Parquet row per face out.",
        epilog="Every other flag goes to Beam (--runner, --direct_num_workers, ...); without --runner the "
               "pipeline runs on Beam's in-process FnApiRunner, which works offline.")
    AnalyzeOptions._add_argparse_args(parser)
    return parser.format_help()


def main(argv: list[str] | None = None) -> int:
    """Runs the pipeline and prints a summary; exit status 0 when the run completed, 1 with
    ``--fail_on_error`` when any input failed, 2 for a configuration error, 3 when the runner failed
    the job."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Beam also logs some notices on the root logger (a missing platform module, undeclared output
    # tags): kept out of the user's terminal unless they are errors.
    for handler in logging.getLogger().handlers:
        if _quiet_beam_root_notices not in handler.filters:
            handler.addFilter(_quiet_beam_root_notices)
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv[:argv.index("--")] if "--" in argv else argv):
        print(_help_text())
        return 0
    try:
        _, output = run(argv)
    except RunFailed as e:
        LOG.error("the run failed", exc_info=e.__cause__)
        print(f"facebeam analyze: the run failed: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, ModelIntegrityError) as e:
        print(f"facebeam analyze: error: {e}", file=sys.stderr)
        return 2
    opts = PipelineOptions(build_argv(argv))
    if opts.view_as(TestOptions).dry_run:
        print("dry run: the job graph was built; nothing was read or written")
        return 0
    a = opts.view_as(AnalyzeOptions)
    try:
        summary = summarize(output)
    except Exception as e:  # the tables are written; only reading them back failed
        print(f"facebeam analyze: the run finished, but its tables could not be read back from {output} "
              f"for the summary: {e}", file=sys.stderr)
        return 1 if a.fail_on_error else 0
    if not a.quiet:
        print(format_summary(summary, output))
    if summary["error"] and a.fail_on_error:
        print(f"facebeam analyze: {summary['error']} input(s) failed (--fail_on_error)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
