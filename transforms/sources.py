"""ReadSources: input patterns -> listed files -> decoding tasks -> decoded frames.

Directories are read recursively for the supported extensions; explicit files and glob patterns
keep everything they match, so that a file of an unsupported type shows up as an error rather than
vanishing. Any Beam FileSystems URI works (``gs://`` with the GCP extra installed).

Local disks are listed here (``list_input``) rather than by Beam's LocalFileSystem, whose
``os.walk`` silently drops broken symbolic links and link loops (their size cannot be read), never
enters linked directories, and lists named pipes that would block forever when opened. The rules:

- A link to a file is read under the link's name.
- A link to a directory is followed, unless its target lies inside the directory being read or was
  read already: a loop ends there, and no directory is read twice.
- A broken link, a link loop, something that is not a regular file (a named pipe, a socket, a
  device) and a name that is not valid UTF-8 are inputs that fail at stage ``read`` when their
  name has a supported extension (inside a directory) or matches the pattern; a subdirectory that
  cannot be listed fails the same way under its own path (ending in ``/``).

Each file is hashed (sha256 of its bytes) as it is read; with ``ReadOptions.known_content`` a file
whose content an earlier run analysed is skipped and reported as such.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from typing import Iterable, Iterator, Mapping, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from models.registry import sha256_of
from transforms import imaging, progress, video
from transforms.common import DeadLettersToErrors, count
from transforms.records import ErrorRecord, Frame, SourceFile, SourceTask

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ReadSources",
    "ReadResult",
    "ReadOptions",
    "ReadError",
    "Listed",
    "SourceContent",
    "expand_inputs",
    "list_input",
    "local_copy",
    "walk_local",
    "source_type_of",
]

LOG = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Animated GIFs are read as videos (OpenCV decodes them frame by frame).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".gif", ".mpg", ".mpeg", ".wmv"})
# The least a range of a video is planned to hold: the ranges of a file are capped at its size over this.
MIN_RANGE_BYTES = 256 * 1024


class ReadError(ValueError):
    """An input that cannot be read at all; the message says why."""


class ReadOptions(NamedTuple):
    """How sources are decoded: video sampling rate (frames/s, 0 = every frame), frame cap per video
    (0 = none), video range length in seconds for parallel decoding, the pixel limit per image, and
    ``known_content``: sha256 -> run_id of the run holding the results for content analysed before
    (``--skip_existing``), whose files are skipped."""

    video_fps: float = 1.0
    max_frames_per_video: int = 0
    video_chunk_seconds: float = 60.0
    max_pixels: int = 100_000_000
    known_content: Mapping[str, str] | None = None


class ReadResult(NamedTuple):
    """ReadSources' outputs: ``files`` (SourceFile), ``frames`` (Frame), ``frame_counts``
    ((uri, frames decoded) per task), ``errors`` (ErrorRecord) and ``contents`` ((uri, SourceContent)
    for every file that was read)."""

    files: beam.PCollection
    frames: beam.PCollection
    frame_counts: beam.PCollection
    errors: beam.PCollection
    contents: beam.PCollection


class Listed(NamedTuple):
    """A file found for an input: its URI, size in bytes (0 when unknown), and ``problem``: why it
    cannot be read (a broken link, a link loop, not a regular file, ...), None when it can."""

    uri: str
    size_bytes: int = 0
    problem: str | None = None


class SourceContent(NamedTuple):
    """What reading a file told: the sha256 of its bytes (hex) and, when an earlier run analysed
    that content, that run's id (the file is then skipped)."""

    sha256: str
    previous_run_id: str | None = None


def source_type_of(path: str) -> str | None:
    """'image', 'video' or None, from the file extension (case-insensitive)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def _is_local(uri: str) -> bool:
    return FileSystems.get_scheme(uri) is None


def expand_inputs(inputs: Iterable[str]) -> list[tuple[str, bool]]:
    """(pattern, is_directory) for each ``--input``; raises ValueError for one that matches nothing.

    A local directory stays a path (read by ``walk_local``); a remote one becomes a recursive
    pattern. An existing local path is taken literally, even with ``*?[`` in its name. Only the
    first input of each is looked up here, on the launching machine; the full listing happens
    inside the pipeline.
    """
    patterns = []
    for raw in inputs:
        text = str(raw)
        if _is_local(text):
            is_dir = os.path.isdir(text)
            pattern = os.path.abspath(text)
        else:
            is_dir = text.endswith("/")
            pattern = FileSystems.join(text, "**") if is_dir else text
        try:
            found = next(iter(list_input(pattern, is_dir)), None)
        except Exception as e:  # an unreachable bucket, a bad URI: say so up front
            raise ValueError(f"--input {text!r}: cannot list it ({e})") from e
        if found is None:
            what = "holds no image or video file" if is_dir else "matches no file"
            raise ValueError(f"--input {text!r} {what}; check the path or pattern")
        patterns.append((pattern, is_dir))
    return patterns


def list_input(pattern: str, is_dir: bool) -> Iterator[Listed]:
    """The files of one ``expand_inputs`` entry, lazily.

    Local: a directory is walked for its media files (``walk_local``); an existing path is that one
    file; anything else is a glob pattern in Beam's syntax (``*`` within a directory, ``**`` across
    them). Other file systems go through ``FileSystems.match``.
    """
    if not _is_local(pattern):
        for meta in FileSystems.match([pattern])[0].metadata_list:
            if is_dir and source_type_of(meta.path) is None:
                continue
            yield Listed(meta.path, int(meta.size_in_bytes))
        return
    if is_dir or os.path.isdir(pattern):
        for entry in walk_local(pattern):
            if source_type_of(entry.uri) is not None or entry.uri.endswith(os.sep):
                yield entry
        return
    if os.path.lexists(pattern):
        yield _examine(pattern)[1]
        return
    yield from _glob_local(pattern)


def _glob_local(pattern: str) -> Iterator[Listed]:
    """Beam's pattern semantics (``FileSystem.translate_pattern``) over ``walk_local``, descending
    only as deep as the pattern can reach."""
    if pattern.endswith(os.sep):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:  # no wildcard and nothing there
        return
    base = os.path.dirname(prefix)
    rest = pattern[len(base):].lstrip(os.sep)
    depth = None if "**" in rest else rest.count(os.sep)
    matches = re.compile(FileSystem.translate_pattern(pattern)).match
    for entry in walk_local(base, depth):
        if matches(entry.uri) or entry.uri.endswith(os.sep):
            yield entry


def _printable(path: str) -> str:
    """The path as valid UTF-8: undecodable bytes of a file name appear as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _entry(path: str, size: int = 0, problem: str | None = None) -> Listed:
    """A Listed whose URI is valid UTF-8 (Beam's coders and Parquet strings need it)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return Listed(_printable(path), 0, problem or "file name is not valid UTF-8; rename the file to read it")
    return Listed(path, size, problem)


_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"))


def _examine(path: str) -> tuple[os.stat_result | None, Listed]:
    """The status of ``path`` (links followed) and its Listed entry, with a problem where it has one."""
    try:
        st = os.stat(path)
    except OSError as e:
        if not os.path.islink(path):
            return None, _entry(path, 0, f"cannot examine the file: {e.strerror or e}")
        if e.errno == errno.ELOOP:
            return None, _entry(path, 0, "symbolic link loop: the link resolves back to itself")
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return None, _entry(path, 0, f"broken symbolic link: its target {_printable(target)!r} does not exist")
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return st, _entry(path, st.st_size if stat.S_ISREG(st.st_mode) else 0)
    kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "a special file")
    return st, _entry(path, 0, f"not a regular file: it is {kind}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk_local(root: str, max_depth: int | None = None) -> Iterator[Listed]:
    """Every entry under the local directory ``root`` that is not a directory, lazily, by name
    within each directory, files before subdirectories.

    ``max_depth``: how many directory levels below ``root`` to enter (None: all). Links to
    directories are followed unless their target lies inside ``root`` or was entered already, so a
    loop ends. Broken links, link loops, special files and subdirectories that cannot be listed
    come out with a ``problem`` instead of vanishing (a directory as its path plus ``/``).
    """
    root = os.path.abspath(root)
    try:
        st = os.stat(root)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    root_real = os.path.realpath(root)
    entered = {(st.st_dev, st.st_ino)}
    stack = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as it:
                names = sorted(e.name for e in it)
        except OSError as e:
            yield _entry(directory.rstrip(os.sep) + os.sep, 0, f"directory cannot be listed: {e.strerror or e}")
            continue
        subdirs = []
        for name in names:
            path = os.path.join(directory, name)
            st, entry = _examine(path)
            if st is None or not stat.S_ISDIR(st.st_mode):
                yield entry
                continue
            key = (st.st_dev, st.st_ino)
            if (max_depth is not None and depth >= max_depth) or key in entered:
                continue  # too deep for the pattern, a loop, or a directory read already
            if os.path.islink(path) and _inside(os.path.realpath(path), root_real):
                LOG.debug("not following %s: its target is read under its own name", path)
                continue
            entered.add(key)
            subdirs.append(path)
        stack.extend((d, depth + 1) for d in reversed(subdirs))


def _to_source_file(entry: Listed) -> SourceFile:
    """The sources-table identity of a listed file (type 'unknown' for unsupported ones)."""
    return SourceFile(entry.uri, source_type_of(entry.uri) or "unknown", int(entry.size_bytes))


# Tag of the ErrorRecords a DoFn classifies itself, where the stage of its dead letters would be wrong.
_FAILED = "failed"


class _PlanTasksFn(beam.DoFn):
    """Listed -> SourceTask(s): an image is one task; a video is hashed, then split into frame ranges.

    Fails (stage ``read``) for a file with a listing problem, of an unsupported type, or that cannot
    be read; a video OpenCV cannot open goes to 'failed' at stage ``decode``, as images do. The
    content of each video goes to 'contents' as soon as it is known.
    """

    CONTENTS = "contents"
    FAILED = _FAILED

    def __init__(self, options: ReadOptions):
        self._options = options

    def process(self, entry: Listed):
        planned = False
        try:
            for task in self._plan(entry):
                planned = planned or isinstance(task, SourceTask)
                yield task
        finally:
            if not planned:  # failed or skipped here: nothing left to do for this file
                progress.file_done()

    def _plan(self, entry: Listed):
        # 1. What the listing found wrong, or a type we do not read.
        if entry.problem:
            raise ReadError(entry.problem)
        kind = source_type_of(entry.uri)
        if kind is None:
            ext = os.path.splitext(entry.uri)[1] or "(none)"
            raise ValueError(f"unsupported file type {ext}: facebeam reads images "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}) and videos ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        # 2. An image is read once, in Decode, where it is also hashed.
        if kind == "image":
            yield SourceTask(entry.uri, "image")
            return
        # 3. A video: one streamed pass for the hash, then skip it or probe it and plan its ranges.
        with local_copy(entry.uri) as path:
            try:
                digest = sha256_of(path)
            except OSError as e:
                raise ReadError(f"cannot read the file: {e.strerror or e}") from None
            previous = (self._options.known_content or {}).get(digest)
            yield beam.pvalue.TaggedOutput(self.CONTENTS, (entry.uri, SourceContent(digest, previous)))
            if previous:
                count("skipped")
                return
            try:
                info = video.probe_video(path, self._options.max_pixels)
            except video.VideoError as e:
                count("errors_decode")
                yield beam.pvalue.TaggedOutput(self.FAILED, ErrorRecord(entry.uri, "decode", f"VideoError: {e}"))
                return
            # Ranges start with a seek in time, which finds frame k of the whole at a constant rate only.
            constant = video.constant_frame_rate(path)
        chunk = int(round(self._options.video_chunk_seconds * info.fps)) if constant else 0
        # No more ranges than the file's size allows for (a small file may declare billions of frames).
        size = entry.size_bytes or 0
        ranges = video.split_ranges(info.frame_count, chunk, 1 + size // MIN_RANGE_BYTES if size else 0)
        for k, (start, end) in enumerate(ranges):
            yield SourceTask(entry.uri, "video", start, end, info.fps, last=k == len(ranges) - 1,
                             declared_frames=info.frame_count, declared_fps=info.declared_fps)


class local_copy:
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
    """SourceTask -> Frame(s), one at a time; the frames decoded per task go to 'frame_counts'.

    An image's bytes are read once: hashed (to 'contents'; skipped when an earlier run analysed
    them), then decoded. A file that cannot be read goes to 'failed' at stage ``read``.
    """

    FRAME_COUNTS = "frame_counts"
    CONTENTS = "contents"
    FAILED = _FAILED

    def __init__(self, options: ReadOptions):
        self._options = options

    def process(self, task: SourceTask):
        try:
            yield from self._decode(task)
        finally:
            # Frames go on to detection as they are yielded (fused stages; the detector thread is at most
            # a frame behind), so the file is done here.
            if task.last:
                progress.file_done()

    def _decode(self, task: SourceTask):
        n = 0
        if task.source_type == "image":
            # 1. Read the bytes; an unreadable file is a read error, not a decode error.
            try:
                with FileSystems.open(task.uri) as f:
                    data = f.read()
            except OSError as e:
                count("errors_read")
                yield beam.pvalue.TaggedOutput(self.FAILED, ErrorRecord(
                    task.uri, "read", f"{type(e).__name__}: cannot read the file: {e.strerror or e}"))
                return
            # 2. Hash them; content analysed by an earlier run is skipped.
            digest = hashlib.sha256(data).hexdigest()
            previous = (self._options.known_content or {}).get(digest)
            yield beam.pvalue.TaggedOutput(self.CONTENTS, (task.uri, SourceContent(digest, previous)))
            if previous:
                count("skipped")
                return
            # 3. Decode.
            image = imaging.decode_image(data, self._options.max_pixels)
            del data
            n = 1
            yield Frame(task.uri, "image", None, None, image)
        else:
            with local_copy(task.uri) as path:
                for index, ts, image in video.read_frames(
                        path, task.fps, self._options.video_fps, self._options.max_frames_per_video,
                        task.start_frame, task.end_frame, task.declared_frames, task.declared_fps):
                    n += 1
                    yield Frame(task.uri, "video", index, ts, image)
        count("frames", n)
        yield beam.pvalue.TaggedOutput(self.FRAME_COUNTS, (task.uri, n))


class ReadSources(beam.PTransform):
    """(pattern, is_directory) pairs -> ReadResult of files, frames, frame counts, errors and contents.

    Frames are not reshuffled: each one is detected where it is decoded, so a long video never
    sits in memory or in a shuffle as raw frames; the work is spread by reshuffling files and
    video ranges instead.
    """

    def __init__(self, patterns: list[tuple[str, bool]], options: ReadOptions = ReadOptions()):
        super().__init__()
        self._patterns = patterns
        self._options = options

    def expand(self, pbegin) -> ReadResult:
        listed = (
            pbegin
            | "Inputs" >> beam.Create(self._patterns)
            | "List" >> beam.FlatMapTuple(list_input)
            | "KeyByUri" >> beam.Map(lambda e: (e.uri, e))
            # a file matched by two inputs is one input
            | "Dedupe" >> beam.CombinePerKey(lambda entries: next(iter(entries)))
            | "Values" >> beam.Values()
            | "SpreadFiles" >> beam.Reshuffle()
        )
        files = listed | "SourceFiles" >> beam.Map(_to_source_file)
        planned = (
            listed
            # partial=True keeps a video's content hash when probing it fails afterwards.
            | "Plan" >> beam.ParDo(_PlanTasksFn(self._options)).with_exception_handling(
                main_tag="tasks", dead_letter_tag="errors", partial=True)
            .with_outputs(_PlanTasksFn.CONTENTS, _PlanTasksFn.FAILED, main="tasks")
        )
        decoded = (
            planned.tasks
            | "SpreadTasks" >> beam.Reshuffle()
            # partial=True streams a video's frames instead of buffering them all per element.
            | "Decode" >> beam.ParDo(_DecodeFn(self._options)).with_exception_handling(
                main_tag="frames", dead_letter_tag="errors", partial=True)
            .with_outputs(_DecodeFn.FRAME_COUNTS, _DecodeFn.CONTENTS, _DecodeFn.FAILED, main="frames")
        )
        errors = (
            (planned.errors | "PlanErrors" >> DeadLettersToErrors("read"),
             planned[_PlanTasksFn.FAILED],
             decoded[_DecodeFn.FAILED],
             decoded.errors | "DecodeErrors" >> DeadLettersToErrors("decode"))
            | "Errors" >> beam.Flatten()
        )
        contents = (
            (planned[_PlanTasksFn.CONTENTS], decoded[_DecodeFn.CONTENTS])
            | "Contents" >> beam.Flatten()
        )
        return ReadResult(files, decoded.frames, decoded[_DecodeFn.FRAME_COUNTS], errors, contents)
