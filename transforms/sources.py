"""ReadSources: input patterns -> matched files -> decoding tasks -> decoded frames.

Directories are read recursively for the supported extensions; explicit files and glob patterns
keep everything they match, so that a file of an unsupported type shows up as an error rather than
vanishing. Any Beam FileSystems URI works (``gs://`` with the GCP extra installed).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Iterable, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from transforms import imaging, video
from transforms.common import DeadLettersToErrors, count
from transforms.records import Frame, SourceFile, SourceTask

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ReadSources",
    "ReadResult",
    "ReadOptions",
    "expand_inputs",
    "source_type_of",
]

LOG = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Animated GIFs are read as videos (OpenCV decodes them frame by frame).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".gif", ".mpg", ".mpeg", ".wmv"})


class ReadOptions(NamedTuple):
    """How sources are decoded: video sampling rate (frames/s, 0 = every frame), frame cap per video
    (0 = none), video range length in seconds for parallel decoding, and the pixel limit per image."""

    video_fps: float = 1.0
    max_frames_per_video: int = 0
    video_chunk_seconds: float = 60.0
    max_pixels: int = 100_000_000


class ReadResult(NamedTuple):
    """ReadSources' outputs: ``files`` (SourceFile), ``frames`` (Frame), ``frame_counts``
    ((uri, frames decoded) per task) and ``errors`` (ErrorRecord)."""

    files: beam.PCollection
    frames: beam.PCollection
    frame_counts: beam.PCollection
    errors: beam.PCollection


def source_type_of(path: str) -> str | None:
    """'image', 'video' or None, from the file extension (case-insensitive)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def expand_inputs(inputs: Iterable[str]) -> list[tuple[str, bool]]:
    """(pattern, is_directory) for each ``--input``; raises ValueError for one that matches nothing.

    A directory becomes a recursive pattern. Only one match per input is looked up here, on the
    launching machine; the full listing happens inside the pipeline.
    """
    patterns = []
    for raw in inputs:
        text = str(raw)
        is_dir = os.path.isdir(text) or (FileSystems.get_scheme(text) is not None and text.endswith("/"))
        if is_dir:
            base = os.path.abspath(text) if FileSystems.get_scheme(text) is None else text
            pattern = FileSystems.join(base, "**")
        else:
            pattern = os.path.abspath(text) if FileSystems.get_scheme(text) is None else text
        try:
            found = FileSystems.match([pattern], limits=[1])[0].metadata_list
        except Exception as e:  # an unreachable bucket, a bad URI: say so up front
            raise ValueError(f"--input {text!r}: cannot list it ({e})") from e
        if not found:
            raise ValueError(f"--input {text!r} matches no file; check the path or pattern")
        patterns.append((pattern, is_dir))
    return patterns


def _to_source_file(meta, from_directory: bool) -> list[SourceFile]:
    """A matched file as a SourceFile; a directory keeps only its media files."""
    kind = source_type_of(meta.path)
    if kind is None and from_directory:
        return []  # a directory asks for its media; other files there are not inputs
    return [SourceFile(meta.path, kind or "unknown", int(meta.size_in_bytes))]


class _PlanTasksFn(beam.DoFn):
    """SourceFile -> SourceTask(s): an image is one task; a video is split into frame ranges."""

    def __init__(self, options: ReadOptions):
        self._options = options

    def process(self, source: SourceFile):
        if source.source_type == "unknown":
            ext = os.path.splitext(source.uri)[1] or "(none)"
            raise ValueError(f"unsupported file type {ext}: facebeam reads images "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}) and videos ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        if source.source_type == "image":
            yield SourceTask(source.uri, "image")
            return
        with _local_copy(source.uri) as path:
            info = video.probe_video(path)
        chunk = int(round(self._options.video_chunk_seconds * info.fps))
        for start, end in video.split_ranges(info.frame_count, chunk):
            yield SourceTask(source.uri, "video", start, end, info.fps)


class _local_copy:
    """Context manager giving a local path for a URI (OpenCV reads videos from paths only)."""

    def __init__(self, uri: str):
        self._uri = uri
        self._tmp: str | None = None

    def __enter__(self) -> str:
        if FileSystems.get_scheme(self._uri) is None:
            return self._uri
        suffix = os.path.splitext(self._uri)[1]
        fd, self._tmp = tempfile.mkstemp(suffix=suffix, prefix="facebeam-")
        with os.fdopen(fd, "wb") as out, FileSystems.open(self._uri) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return self._tmp

    def __exit__(self, *exc):
        if self._tmp:
            os.unlink(self._tmp)


class _DecodeFn(beam.DoFn):
    """SourceTask -> Frame(s), one at a time; the frames decoded per task go to 'frame_counts'."""

    FRAME_COUNTS = "frame_counts"

    def __init__(self, options: ReadOptions):
        self._options = options

    def process(self, task: SourceTask):
        n = 0
        if task.source_type == "image":
            with FileSystems.open(task.uri) as f:
                data = f.read()
            image = imaging.decode_image(data, self._options.max_pixels)
            n = 1
            yield Frame(task.uri, "image", None, None, image)
        else:
            with _local_copy(task.uri) as path:
                for index, ts, image in video.read_frames(
                        path, task.fps, self._options.video_fps, self._options.max_frames_per_video,
                        task.start_frame, task.end_frame):
                    n += 1
                    yield Frame(task.uri, "video", index, ts, image)
        count("frames", n)
        yield beam.pvalue.TaggedOutput(self.FRAME_COUNTS, (task.uri, n))


class ReadSources(beam.PTransform):
    """(pattern, is_directory) pairs -> ReadResult of files, frames, frame counts and errors.

    Frames are not reshuffled: each one is detected where it is decoded, so a long video never
    sits in memory or in a shuffle as raw frames; the work is spread by reshuffling files and
    video ranges instead.
    """

    def __init__(self, patterns: list[tuple[str, bool]], options: ReadOptions = ReadOptions()):
        super().__init__()
        self._patterns = patterns
        self._options = options

    def expand(self, pbegin) -> ReadResult:
        matched = []
        for from_dir in (False, True):
            patterns = [pattern for pattern, is_dir in self._patterns if is_dir == from_dir]
            if patterns:
                label = "Directories" if from_dir else "Patterns"
                matched.append(
                    pbegin
                    | f"{label}" >> beam.Create(patterns)
                    | f"Match{label}" >> fileio.MatchAll()
                    | f"Files{label}" >> beam.FlatMap(_to_source_file, from_dir))
        files = (
            matched
            | "AllMatches" >> beam.Flatten()
            | "KeyByUri" >> beam.Map(lambda s: (s.uri, s))
            # a file matched by two inputs is one input
            | "Dedupe" >> beam.CombinePerKey(lambda sources: next(iter(sources)))
            | "Values" >> beam.Values()
            | "SpreadFiles" >> beam.Reshuffle()
        )
        tasks, plan_errors = (
            files
            | "Plan" >> beam.ParDo(_PlanTasksFn(self._options)).with_exception_handling(
                main_tag="tasks", dead_letter_tag="errors")
        )
        decoded = (
            tasks
            | "SpreadTasks" >> beam.Reshuffle()
            # partial=True streams a video's frames instead of buffering them all per element.
            | "Decode" >> beam.ParDo(_DecodeFn(self._options)).with_exception_handling(
                main_tag="frames", dead_letter_tag="errors", partial=True)
            .with_outputs(_DecodeFn.FRAME_COUNTS, main="frames")
        )
        errors = (
            (plan_errors | "PlanErrors" >> DeadLettersToErrors("read"),
             decoded.errors | "DecodeErrors" >> DeadLettersToErrors("decode"))
            | "Errors" >> beam.Flatten()
        )
        return ReadResult(files, decoded.frames, decoded[_DecodeFn.FRAME_COUNTS], errors)
