"""facebeam live: emotion, age group and gender drawn onto a camera, a video file or a stream.

    facebeam live --source 0                                   # first camera, in a window
    facebeam live --source clip.mp4 --no_display --record annotated.mp4 --log faces.parquet
    facebeam live --source rtsp://camera.local/stream --detector haar

Not a Beam pipeline: one process reads frames with OpenCV, detects and aligns the faces as
``analyze`` does (``transforms.faces``), runs the same models on all faces of a frame in one batch,
follows each face with an IoU tracker and smooths its labels over time (``transforms.tracking``).

Live sources (cameras, stream URLs) are read on a background thread that keeps only the newest
frame: when the analysis is slower than the source, the frames in between are dropped instead of
queueing up. Files are read in order, every frame or every ``--every``-th.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from models.handler import RUNTIMES, FaceAttributes, FaceModelHandler
from models.labels import EMOTIONS
from models.registry import DEFAULT_MODELS, default_specs, resolve
from models.tta import TTA_HELP, TTA_MODES
from transforms import drawing
from transforms.faces import DETECTORS, DetectOptions, check_detect_options, faces_in_frame, make_detector
from transforms.inference import model_inputs
from transforms.records import FaceCrop, Frame
from transforms.sinks import FACES_SCHEMA, RunInfo, face_row
from transforms.tracking import MAX_SHIFT, Smoother, Tracker
from transforms.video import DEFAULT_FPS, Mp4Writer, container_fps, declared_frames, frame_time, truncation

__all__ = [
    "LiveOptions", "LiveFace", "LiveStats", "SourceFrame", "LatestFrame", "LiveAnalyzer", "FaceLog",
    "parse_source", "is_live_source", "source_uri", "display_available", "label_text", "draw_faces",
    "run_live", "build_parser", "options_from_args", "format_stats", "main",
]

LOG = logging.getLogger("facebeam.live")

WINDOW_TITLE = "facebeam live (q to quit)"
# BGR colours of the overlay.


class LiveOptions(NamedTuple):
    """Settings of a live run.

    ``min_face_size``: smallest face side kept, pixels of the source frame; ``max_side``: longest
    side the detector sees (frames are detected on a downscaled copy, 0 = never); ``every``: process
    every n-th frame of a file; ``max_frames``: stop after this many frames read (0 = the whole
    source); ``emotion_half_life_s`` / ``age_half_life_s``: half-lives of the per-face moving averages
    of the emotion probabilities and of age and P(female) (0 = no smoothing); ``min_iou`` /
    ``max_missed``: tracker settings; ``record`` / ``log``: output .mp4 and .parquet paths or None.
    """

    detector: str = "mtcnn"
    min_face_size: float = 40.0
    min_confidence: float = 0.9
    max_side: int = 640
    every: int = 1
    max_frames: int = 0
    emotion_half_life_s: float = 0.5
    age_half_life_s: float = 2.0
    min_iou: float = 0.3
    max_missed: int = 5
    display: bool = True
    record: str | None = None
    log: str | None = None
    row_group_rows: int = 512


class SourceFrame(NamedTuple):
    """A frame as read: its index in the source, its time in seconds, BGR uint8 pixels (H, W, 3)."""

    index: int
    timestamp_s: float
    bgr: np.ndarray


class LiveFace(NamedTuple):
    """A face of one processed frame: ``track_id`` is stable across frames; ``face`` holds its box
    ``[x1, y1, x2, y2]`` and landmarks (``crop`` is None); ``attrs`` are the smoothed model outputs."""

    track_id: int
    face: FaceCrop
    attrs: FaceAttributes


class LiveStats(NamedTuple):
    """What a run did: frames read from the source and analysed, faces found, wall seconds of the
    frame loop, and the seconds spent detecting and running the models."""

    frames_read: int
    frames_processed: int
    faces: int
    seconds: float
    detect_s: float
    infer_s: float
    problem: str | None = None  # why a file ended far short of its declared length

    @property
    def fps(self) -> float:
        """Frames analysed per second of wall time."""
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0


# ---- sources -----------------------------------------------------------------------------------

def parse_source(text: str) -> int | str:
    """A camera index (for digits), a stream URL, or the absolute path of an existing file or device
    (named exactly as given: a file name may begin or end with a space)."""
    text = str(text)
    if not text.strip():
        raise ValueError("--source is empty; give a camera index (0), a video file or a stream URL")
    if text.strip().isdigit():
        return int(text)
    if "://" in text:
        return text.strip()
    if not os.path.exists(text):
        raise ValueError(f"--source {text!r} is not a camera index, an existing file or a URL (scheme://...)")
    return os.path.abspath(text)


def is_live_source(source: int | str, cap: cv2.VideoCapture | None = None) -> bool:
    """True for cameras, devices and network streams (frames arrive in real time), False for files.

    A URL is a stream unless it is a ``file://`` one or, given its opened ``cap``, its container
    declares a frame count: a video file served over HTTP is read in order, every frame, as a file."""
    if isinstance(source, int):
        return True
    if "://" in source:
        return not source.startswith("file://") and (cap is None or declared_frames(cap) == 0)
    return not os.path.isfile(source)


def source_uri(source: int | str) -> str:
    """The ``source_uri`` written into the log: ``camera:N`` for a camera index, else the source."""
    return f"camera:{source}" if isinstance(source, int) else source


def _open_capture(source: int | str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"cannot open {source_uri(source)!r} as a video source "
                         "(no such camera, an unreadable file or codec, or an unreachable stream)")
    return cap


def _capture_fps(cap: cv2.VideoCapture) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS


class LatestFrame:
    """A one-frame mailbox between a reader thread and the analysis: ``put`` replaces what was not
    taken yet (counted in ``dropped``), ``take`` waits for the newest frame; after ``close`` and
    once empty, ``take`` returns None."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._closed = False
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def take(self, timeout: float | None = None):
        """The newest item, or None when closed and empty (or on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item


class _FileReader:
    """Frames of a file in order, each at its own presentation time (``transforms.video.frame_time``:
    right for a variable frame rate); frames for which ``wanted(index)`` is False are skipped
    undecoded. ``problem`` says why a stream ended far short of its declared length (a damaged file)."""

    def __init__(self, cap: cv2.VideoCapture, fps: float, max_frames: int, wanted):
        self._cap, self._fps, self._max_frames, self._wanted = cap, fps, max_frames, wanted
        self._declared, self._declared_fps = declared_frames(cap), container_fps(cap)
        self.frames_read = 0
        self.problem: str | None = None

    def __iter__(self) -> Iterator[SourceFrame]:
        reached_s = None
        while not self._max_frames or self.frames_read < self._max_frames:
            index = self.frames_read
            if not self._cap.grab():
                self.problem = truncation(index, self._declared, self._fps, reached_s, self._declared_fps)
                return
            self.frames_read += 1
            reached_s = frame_time(self._cap, index, self._fps)
            if not self._wanted(index):
                continue
            ok, bgr = self._cap.retrieve()
            if not ok or bgr is None:
                LOG.warning("frame %s does not decode; skipped", index)
                continue
            yield SourceFrame(index, reached_s, bgr)

    def close(self) -> None:
        pass


class _LiveReader:
    """Reads a live source on a thread as fast as it delivers; iterating yields the newest frame."""

    def __init__(self, cap: cv2.VideoCapture, max_frames: int):
        self._cap, self._max_frames = cap, max_frames
        self._slot = LatestFrame()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="facebeam-live-reader", daemon=True)
        self.frames_read = 0
        self.problem: str | None = None  # a live source has no declared length to fall short of
        self._thread.start()

    def _read(self) -> None:
        start = None
        try:
            while not self._stop.is_set() and (not self._max_frames or self.frames_read < self._max_frames):
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                now = time.monotonic()
                start = now if start is None else start
                self._slot.put(SourceFrame(self.frames_read, now - start, bgr))
                self.frames_read += 1
        except cv2.error as e:
            LOG.error("reading the source failed: %s", e)
        finally:
            self._slot.close()

    def __iter__(self) -> Iterator[SourceFrame]:
        while True:
            frame = self._slot.take()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            LOG.warning("the source did not stop within 5 s")


# ---- analysis ----------------------------------------------------------------------------------

class LiveAnalyzer:
    """One frame at a time: detect and align -> one model batch -> track -> smooth.

    ``detector`` is a ``transforms.faces.make_detector`` callable; ``handler`` and ``models`` are a
    ``FaceModelHandler`` (or any handler with ``specs`` and ``run_inference``) and its loaded models.
    """

    def __init__(self, detector, handler, models, options: LiveOptions, uri: str):
        self._detector, self._handler, self._models = detector, handler, models
        self._detect = DetectOptions(options.detector, options.min_face_size, options.min_confidence,
                                     options.max_side)
        self._uri = uri
        # Linked by overlap, then by nearness as ``analyze`` links sampled frames (--every, dropped frames).
        self._tracker = Tracker(options.min_iou, options.max_missed, MAX_SHIFT)
        n = len(EMOTIONS)
        # One smoothed vector per face: n emotion probabilities, age, P(female).
        self._smoother = Smoother([options.emotion_half_life_s] * n + [options.age_half_life_s] * 2)
        self.detect_s = 0.0
        self.infer_s = 0.0

    def warm_up(self, height: int = 240, width: int = 320) -> None:
        """Runs the detector and the models once on blank input, so the first frame is not slow."""
        self._detector(np.zeros((height, width, 3), np.uint8))
        blank = np.zeros((128, 128, 3), np.uint8)
        self._handler.run_inference([tuple(model_inputs(blank, spec) for spec in self._handler.specs)], self._models)

    def analyze(self, index: int, timestamp_s: float, rgb: np.ndarray) -> list[LiveFace]:
        """The faces of an RGB uint8 (H, W, 3) frame, left to right, with smoothed attributes."""
        # 1. detect and align, as the batch pipeline does
        t0 = time.perf_counter()
        crops = faces_in_frame(Frame(self._uri, "video", index, timestamp_s, rgb), self._detector, self._detect)
        t1 = time.perf_counter()
        self.detect_s += t1 - t0
        if not crops:
            self._tracker.update(np.zeros((0, 4)))
            self._smoother.retain(self._tracker.active_ids)
            return []
        # 2. all faces of the frame through the models in one batch
        batch = [tuple(model_inputs(c.crop, spec) for spec in self._handler.specs) for c in crops]
        raw = [r.inference for r in self._handler.run_inference(batch, self._models)]
        self.infer_s += time.perf_counter() - t1
        # 3. link to the faces of earlier frames, then smooth each track's labels over time
        ids = self._tracker.update(np.array([c.box for c in crops], np.float64))
        values = np.array([[*a.emotion, a.age, a.p_female] for a in raw], np.float64)
        smooth = self._smoother.update(ids, values, timestamp_s)
        self._smoother.retain(self._tracker.active_ids)
        n = len(EMOTIONS)
        return [
            LiveFace(int(track_id), crop._replace(crop=None, track_id=int(track_id)),
                     FaceAttributes(s[:n].astype(np.float32), float(s[n]), float(s[n + 1])))
            for track_id, crop, s in zip(ids, crops, smooth)
        ]


# ---- drawing, window, outputs ------------------------------------------------------------------

def label_text(track_id: int, attrs: FaceAttributes) -> str:
    """The text drawn over a face, e.g. ``#3 happy | 20-29 | female``."""
    return drawing.label_text(attrs, track_id)


def draw_faces(bgr: np.ndarray, faces: list[LiveFace], fps: float | None = None) -> np.ndarray:
    """Draws each face's box and label (and the fps, bottom left) onto BGR uint8 ``bgr`` in place; returns it."""
    for f in faces:
        drawing.draw_labelled_box(bgr, f.face.box, label_text(f.track_id, f.attrs))
    if fps is not None:
        drawing.draw_text(bgr, f"{fps:.1f} fps", (4, bgr.shape[0] - 6))
    return bgr


def display_available(env=None, platform: str | None = None) -> bool:
    """False where no window can open: Linux/BSD without an X11 or Wayland display."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "darwin")):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


class _Window:
    """cv2.imshow when it works; OpenCV builds without a GUI (opencv-python-headless) turn it off."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def show(self, bgr: np.ndarray) -> bool:
        """Shows a frame; False when the viewer asked to stop (q, Esc, or the window closed)."""
        if not self.enabled:
            return True
        try:
            cv2.imshow(WINDOW_TITLE, bgr)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                return False
            return cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error as e:
            LOG.warning("cannot show a window (%s); continuing without display", str(e).strip().splitlines()[-1])
            self.enabled = False
            return True

    def close(self) -> None:
        if self.enabled:
            try:
                cv2.destroyWindow(WINDOW_TITLE)
                cv2.waitKey(1)
            except cv2.error:
                pass


class FaceLog:
    """Faces-table rows (``transforms.sinks.FACES_SCHEMA``) written to one Parquet file as they come.

    Rows are buffered and written as a row group every ``row_group_rows`` rows, so memory stays
    flat however long the run. They go to a hidden file beside ``path`` (a name ``faces-*.parquet``
    never matches), which takes the name on ``close``: a file already at ``path`` is replaced by a
    whole log only, and kept by ``close(discard=True)``. Use as a context manager, or call ``close``.
    """

    def __init__(self, path: str, run: RunInfo, row_group_rows: int = 512):
        import pyarrow.parquet as pq

        if row_group_rows < 1:
            raise ValueError(f"row_group_rows must be >= 1, got {row_group_rows}")
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self._path, self._part = path, os.path.join(folder, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
        self._writer = pq.ParquetWriter(self._part, FACES_SCHEMA, compression="snappy")
        self._closed = False
        self._run = run
        self._rows: list[dict] = []
        self._size = row_group_rows
        self.rows_written = 0

    def write(self, faces: list[LiveFace]) -> None:
        self._rows.extend(face_row(f.face, f.attrs, self._run) for f in faces)
        if len(self._rows) >= self._size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=FACES_SCHEMA))
            self.rows_written += len(self._rows)
            self._rows = []

    def close(self, discard: bool = False) -> None:
        """Writes the last rows and gives the log its name; ``discard``: drops it instead."""
        if self._closed:
            return
        self._closed = True
        try:
            if not discard:
                self._flush()
            self._writer.close()
            if not discard:
                os.replace(self._part, self._path)
        finally:
            if os.path.exists(self._part):
                os.unlink(self._part)

    def __enter__(self) -> FaceLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the loop ----------------------------------------------------------------------------------

def _check(options: LiveOptions, source: int | str | None = None) -> None:
    """Refuses settings that would fail or quietly find nothing, and outputs that would overwrite
    the ``source`` (a ``parse_source`` result)."""
    check_detect_options(DetectOptions(options.detector, options.min_face_size, options.min_confidence,
                                       options.max_side), max_side_flag="--max_side")
    if options.every < 1:
        raise ValueError(f"--every must be >= 1, got {options.every}")
    if options.max_frames < 0:
        raise ValueError("--max_frames must be >= 0 (0: no limit)")
    if source is not None and not (isinstance(source, str) and "://" in source):  # a URL is judged once open
        _check_every(options, is_live_source(source))
    if options.record and not options.record.lower().endswith((".mp4", ".m4v", ".mov")):
        raise ValueError(f"--record {options.record!r}: give an .mp4 path (the video is written with mp4v)")
    # FFmpeg reads a file: URL as the path after the scheme, taken literally
    source_file = source[len("file:"):] if isinstance(source, str) and source.lower().startswith("file:") else source
    for flag, path in (("--log", options.log), ("--record", options.record)):
        if path and os.path.isdir(path):
            raise ValueError(f"{flag} {path!r} is a directory; give the path of the file to write")
        if path and isinstance(source_file, str) and _same_file(path, source_file):
            raise ValueError(f"{flag} {path!r} is the source itself; writing it would destroy the video")
    if options.log and options.record and _same_file(options.log, options.record):
        raise ValueError(f"--log and --record name the same file {options.record!r}; each writes a file of its own")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def _check_every(options: LiveOptions, live: bool) -> None:
    if options.every > 1 and live:
        raise ValueError("--every applies to video files; live sources drop frames by themselves when behind")


def _default_run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("live-%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def run_live(source: int | str, options: LiveOptions = LiveOptions(), handler=None, models=None, detector=None,
             run_id: str | None = None, live: bool | None = None) -> LiveStats:
    """Analyses ``source`` (a ``parse_source`` result) frame by frame until it ends, ``max_frames``
    frames were read, the viewer quits, or Ctrl-C or SIGTERM.

    ``handler``/``models`` default to the shipped models (loaded here); pass already loaded ones to
    reuse them. ``detector`` defaults to ``make_detector(options.detector)``. ``live`` (default: from
    the source) chooses between reading on a thread that drops stale frames and reading in order.
    The recording has one frame per source frame up to the last analysed one, at the source's
    (average) frame rate: frames in between show the latest labels (files) or repeat the last
    analysed frame (live sources, whose skipped frames are never decoded). Logged times are the
    frames' own: presentation times for files, seconds since the first frame for live sources.
    """
    _check(options, source)
    uri = source_uri(source)
    # The source opens first, so that a wrong --source fails before the models load.
    cap = _open_capture(source)
    try:
        live = is_live_source(source, cap) if live is None else live
        _check_every(options, live)
        if handler is None:
            handler = FaceModelHandler(*default_specs())
        if models is None:
            models = handler.load_model()
        if detector is None:
            detector = make_detector(options.detector)
        specs = handler.specs
        run = RunInfo(run_id or _default_run_id(), specs[0].tag, specs[1].tag)
        analyzer = LiveAnalyzer(detector, handler, models, options, uri)
        analyzer.warm_up()
        log = FaceLog(options.log, run, options.row_group_rows) if options.log else None
    except BaseException:
        cap.release()
        raise
    fps = _capture_fps(cap)
    window = _Window(options.display and display_available())
    show_all = bool(options.record) or window.enabled
    recorder = Mp4Writer(options.record, fps) if options.record else None
    if live:
        reader = _LiveReader(cap, options.max_frames)
    else:
        every = options.every
        reader = _FileReader(cap, fps, options.max_frames, lambda i: show_all or i % every == 0)
    LOG.info("reading %s (%s, %.1f fps), detector %s", uri, "live" if live else "file", fps, options.detector)

    processed = faces_total = 0
    last_written = -1
    faces: list[LiveFace] = []
    start = time.perf_counter()
    try:
        with _terminate_as_interrupt():
            for frame in reader:
                # 1. analyse the frames due (every frame of a live source that reaches us)
                if live or frame.index % options.every == 0:
                    rgb = cv2.cvtColor(frame.bgr, cv2.COLOR_BGR2RGB)
                    faces = analyzer.analyze(frame.index, frame.timestamp_s, rgb)
                    processed += 1
                    faces_total += len(faces)
                    if log is not None:
                        log.write(faces)
                # 2. draw the latest labels; show and record
                elapsed = time.perf_counter() - start
                annotated = draw_faces(frame.bgr, faces, processed / elapsed if elapsed > 0 else None)
                if recorder is not None:
                    recorder.write(annotated, frame.index - last_written)
                    last_written = frame.index
                if not window.show(annotated):
                    LOG.info("stopped from the window")
                    break
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (docker stop, timeout)
        LOG.info("interrupted; closing the outputs")
    finally:
        seconds = time.perf_counter() - start
        reader.close()
        cap.release()
        window.close()
        if recorder is not None:
            recorder.close()
        if log is not None:
            log.close(discard=reader.frames_read == 0)  # an earlier log at the path is not emptied
    if reader.frames_read == 0:
        raise ValueError(f"no frame could be read from {uri!r}")
    return LiveStats(reader.frames_read, processed, faces_total, seconds, analyzer.detect_s, analyzer.infer_s,
                     reader.problem)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, ``systemctl stop``, ``timeout``) stops the loop as Ctrl-C does, so the
    recording and the log are closed whole (a Parquet file without its footer cannot be read)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    d = LiveOptions()
    p = argparse.ArgumentParser(prog="facebeam live",
                                description="Real-time emotion, age and gender on a camera, a video file or a stream.")
    p.add_argument("--source", required=True,
                   help="camera index (0, 1, ...), video file, or stream URL (rtsp://, http://, ...)")
    p.add_argument("--detector", default=d.detector, choices=DETECTORS, help="face detector (haar is faster)")
    p.add_argument("--record", default=None, metavar="OUT.mp4",
                   help="write the annotated video here (mp4v), at the source's frame rate")
    p.add_argument("--log", default=None, metavar="OUT.parquet",
                   help="write one row per face and analysed frame here, in the faces schema of 'analyze' "
                        "(labels as shown: smoothed per face)")
    p.add_argument("--max_frames", type=int, default=d.max_frames,
                   help="stop after this many frames read from the source (0: until it ends or you quit)")
    p.add_argument("--every", type=int, default=d.every,
                   help="analyse every n-th frame of a video file (live sources drop frames when behind)")
    p.add_argument("--no_display", action="store_true", default=False,
                   help="never open a window (also automatic without a display or a GUI-less OpenCV)")
    p.add_argument("--min_face_size", type=float, default=d.min_face_size,
                   help="smallest face side to report, pixels of the source frame (bigger is faster)")
    p.add_argument("--min_confidence", type=float, default=d.min_confidence, help="smallest MTCNN score to report")
    p.add_argument("--max_side", type=int, default=d.max_side,
                   help="detect on a copy whose longest side is at most this (0: full size)")
    p.add_argument("--emotion_half_life", type=float, default=d.emotion_half_life_s,
                   help="seconds for a new emotion to take half the weight of a face's label (0: no smoothing)")
    p.add_argument("--age_half_life", type=float, default=d.age_half_life_s,
                   help="seconds for new age and gender estimates to take half the weight (0: no smoothing)")
    p.add_argument("--min_iou", type=float, default=d.min_iou,
                   help="box overlap (IoU) needed to link a face to the same face in the previous frame")
    p.add_argument("--max_missed", type=int, default=d.max_missed,
                   help="analysed frames a face may go undetected and keep its track and labels")
    p.add_argument("--emotion_model", default=DEFAULT_MODELS["emotion"], help="shipped model name or .keras path")
    p.add_argument("--age_gender_model", default=DEFAULT_MODELS["age-gender"], help="shipped model name or .keras path")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help=TTA_HELP)
    p.add_argument("--model_runtime", default="auto", choices=RUNTIMES,
                   help="what runs the models: litert, tensorflow, or auto (TensorFlow where it sees a GPU)")
    p.add_argument("--run_id", default=None, help="identifier written into every logged row (default: time + random)")
    return p


def options_from_args(args: argparse.Namespace) -> LiveOptions:
    """The LiveOptions of parsed command-line arguments."""
    return LiveOptions(
        detector=args.detector, min_face_size=args.min_face_size, min_confidence=args.min_confidence,
        max_side=args.max_side, every=args.every, max_frames=args.max_frames,
        emotion_half_life_s=args.emotion_half_life, age_half_life_s=args.age_half_life,
        min_iou=args.min_iou, max_missed=args.max_missed, display=not args.no_display,
        record=args.record, log=args.log,
    )


def format_stats(stats: LiveStats) -> str:
    """The summary printed at the end of a run."""
    per = max(stats.frames_processed, 1)
    return (f"frames read {stats.frames_read}, processed {stats.frames_processed}, faces {stats.faces}, "
            f"{stats.fps:.2f} fps (detection {1000 * stats.detect_s / per:.0f} ms/frame, "
            f"models {1000 * stats.infer_s / per:.0f} ms/frame)")


def main(argv: list[str] | None = None) -> int:
    """Runs live mode and prints a summary; exit status 0 on success, 1 when a video file ended far
    short of its declared length (what was read is recorded and logged), 2 for bad arguments or sources."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        source = parse_source(args.source)
        options = options_from_args(args)
        _check(options, source)
        handler = FaceModelHandler(resolve(args.emotion_model, "emotion"),
                                   resolve(args.age_gender_model, "age-gender"), runtime=args.model_runtime,
                                   tta=args.tta)
        stats = run_live(source, options, handler=handler, run_id=args.run_id)
    except (ValueError, OSError) as e:  # OSError: an output that cannot be written, a missing file
        print(f"facebeam live: error: {e}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    for label, path in (("video", args.record), ("log", args.log)):
        if path:
            print(f"{label}: {os.path.abspath(path)}")
    if stats.problem:
        print(f"facebeam live: the source is damaged: {stats.problem}; the frames before it were analysed",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
