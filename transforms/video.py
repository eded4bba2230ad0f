"""Video helpers (OpenCV, no Beam): probing, frame sampling and splitting into frame ranges.

Sampling at ``rate`` frames/s keeps the first frame of each ``1 / rate`` interval. In a video whose
container says it has a constant frame rate (``constant_frame_rate``) the intervals are of frame
indices at that rate, so the choice of a frame depends on its index alone and a video split into
ranges samples exactly the frames of the whole. Ranges start with a seek, which OpenCV makes in
time (index / rate), so only such a video is split. Any other video is read front to back and its
intervals are of the frames' own presentation times, so that its samples are evenly spaced in time
however its rate varies. Timestamps are the frames' own.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from transforms.imaging import describe_content, resize_by

__all__ = ["MAX_VIDEO_SIDE", "VideoError", "VideoInfo", "Mp4Writer", "probe_video", "declared_frames", "container_fps",
           "frame_time", "video_problem", "constant_frame_rate", "sample_slot", "is_sampled", "split_ranges",
           "truncation", "read_frames"]

# Frame rate assumed when a container reports none (OpenCV gives 0 or NaN for some streams) and the
# first two frames' presentation times do not tell it either.
DEFAULT_FPS = 25.0
# A reported rate from here up is taken for a time base, not a frame rate (Matroska and WebM streams
# report 1000/s, their millisecond clock), and the rate is measured from the frames' own times.
PLAUSIBLE_FPS = 1000.0
# Longest side of the frames of a video facebeam writes: MPEG-4 (mp4v) encoders refuse 8192 pixels and more.
MAX_VIDEO_SIDE = 4096


class VideoError(ValueError):
    """A file that cannot be read as a video; the message says why."""


class VideoInfo(NamedTuple):
    fps: float  # the frame rate sampling counts in
    frame_count: int  # 0 when the container does not say
    width: int
    height: int
    declared_fps: float = 0.0  # the rate the container reports (0: none), which its frame count is counted in


def video_problem(path: str) -> str | None:
    """Why a file OpenCV cannot read is not a usable video, from its leading bytes and container
    structure: empty, not a video at all, or an MP4/QuickTime file cut short. None if nothing is seen."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(512)
            content = describe_content(head)
            if content == "an MP4/QuickTime video":
                return _iso_media_problem(f, size)
    except OSError as e:
        return f"cannot read the file: {e.strerror or e}"
    if content and "video" not in content:
        return f"not a video: the file holds {content}"
    return None


def _iso_media_problem(f, size: int) -> str | None:
    """Walks the top-level boxes of an ISO media file (MP4, MOV; ISO/IEC 14496-12 section 4.2)."""
    pos, boxes, media_bytes = 0, set(), 0
    while pos + 8 <= size:
        box_type, header_len, box_size = _box_header(f, pos, size)
        name = box_type.decode("latin-1")
        if box_size < header_len:
            return f"corrupt MP4/QuickTime file: box {name!r} at byte {pos} has an impossible size"
        if pos + box_size > size:
            return (f"truncated MP4/QuickTime file: box {name!r} is cut short "
                    f"({size - pos} of {box_size} bytes present)")
        boxes.add(box_type)
        if box_type == b"mdat":
            media_bytes += box_size - header_len
        pos += box_size
    if b"moov" not in boxes:
        return "MP4/QuickTime file without its 'moov' index (truncated, or never finished)"
    if b"mdat" in boxes and media_bytes == 0:
        return "MP4/QuickTime file with no media data (0 frames)"
    return None


def _box_header(f, pos: int, end: int) -> tuple[bytes, int, int]:
    """(type, header length, size) of the ISO media box at byte ``pos`` of a file; a box of size 0
    runs to ``end``. Raises struct.error where fewer than 8 bytes are left to read."""
    f.seek(pos)
    header = f.read(16)
    box_size, box_type = struct.unpack(">I4s", header[:8])
    header_len = 8
    if box_size == 1 and len(header) == 16:  # 64-bit size follows the type
        box_size, header_len = struct.unpack(">Q", header[8:16])[0], 16
    elif box_size == 0:  # the box runs to the end of its parent
        box_size = end - pos
    return box_type, header_len, box_size


def constant_frame_rate(path: str) -> bool:
    """True where the container says every frame lasts the same: an AVI (one rate in its header,
    one chunk per frame), or an MP4/QuickTime file whose video track's time-to-sample table (ISO/IEC
    14496-12 section 8.6.1.2) gives every frame but the last one duration. False for the rest
    (Matroska, WebM, GIF, MPEG, ASF and fragmented MP4 keep times per frame or packet) and for
    files that cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                return True
            if describe_content(head + f.read(500)) != "an MP4/QuickTime video":
                return False
            entries = _video_sample_durations(f, os.path.getsize(path))
    except (OSError, struct.error):
        return False
    if entries and entries[-1][0] == 1:
        entries = entries[:-1]  # the last frame's duration moves no frame's start
    return bool(entries) and len({delta for _, delta in entries}) == 1 and entries[0][1] > 0


# More time-to-sample entries than this is a variable rate for certain (equal ones are merged).
_MAX_STTS_ENTRIES = 4096


def _boxes(f, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of the ISO media boxes in bytes ``[start, end)`` of a file; stops at
    the first box that does not fit."""
    pos = start
    while pos + 8 <= end:
        box_type, header_len, box_size = _box_header(f, pos, end)
        if box_size < header_len or pos + box_size > end:
            return
        yield box_type, pos + header_len, pos + box_size
        pos += box_size


def _child(f, start: int, end: int, box_type: bytes) -> tuple[int, int] | None:
    return next(((s, e) for t, s, e in _boxes(f, start, end) if t == box_type), None)


def _video_sample_durations(f, size: int) -> list[tuple[int, int]]:
    """(sample count, duration) entries of the first video track's 'stts' box; [] where there is none."""
    for box_type, start, end in _boxes(f, 0, size):
        if box_type != b"moov":
            continue
        for trak_type, t_start, t_end in _boxes(f, start, end):
            mdia = _child(f, t_start, t_end, b"mdia") if trak_type == b"trak" else None
            hdlr = mdia and _child(f, *mdia, b"hdlr")
            if not hdlr:
                continue
            f.seek(hdlr[0] + 8)  # version and flags, pre_defined, then the handler type
            if f.read(4) != b"vide":
                continue
            minf = _child(f, *mdia, b"minf")
            stbl = minf and _child(f, *minf, b"stbl")
            stts = stbl and _child(f, *stbl, b"stts")
            if not stts:
                return []
            f.seek(stts[0] + 4)
            (n,) = struct.unpack(">I", f.read(4))
            if n > _MAX_STTS_ENTRIES or stts[0] + 8 + 8 * n > stts[1]:
                return []
            return [struct.unpack(">II", f.read(8)) for _ in range(n)]
    return []


def _open(path: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        problem = video_problem(path)
        raise VideoError(f"cannot open as a video: {problem or 'not a video, truncated, or an unsupported codec'}")
    return cap


def declared_frames(cap: cv2.VideoCapture) -> int:
    """The frame count an opened capture's container declares; 0 where it does not say (streams)."""
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if count and math.isfinite(count) and count > 0 else 0


def container_fps(cap: cv2.VideoCapture) -> float:
    """The frame rate an opened capture's container reports; 0 where it gives none."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and math.isfinite(fps) and fps > 0 else 0.0


def probe_video(path: str, max_pixels: int = 0) -> VideoInfo:
    """Frame rate, frame count and size; raises VideoError if no frame decodes, or before decoding
    one when the frames have more than ``max_pixels`` pixels (0: no limit).

    The frame rate is the container's; where it reports none, or a time base for one (see
    ``PLAUSIBLE_FPS``), it is measured between the first two frames' presentation times."""
    cap = _open(path)
    try:
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if max_pixels and width * height > max_pixels:
            # A GIF of a few bytes may declare a 20000x20000 screen, which FFmpeg would decode.
            raise VideoError(f"frames of {width}x{height} pixels exceed --max_pixels={max_pixels}; refused "
                             "before decoding (raise the limit to read it)")
        declared_fps = container_fps(cap)
        count = declared_frames(cap)
        ok, frame = cap.read()
        if not ok or frame is None:
            problem = video_problem(path)
            raise VideoError(f"video has no decodable frames{f': {problem}' if problem else ''}")
        fps = declared_fps if declared_fps < PLAUSIBLE_FPS else 0.0
        if not fps:
            first = cap.get(cv2.CAP_PROP_POS_MSEC)
            gap = cap.get(cv2.CAP_PROP_POS_MSEC) - first if cap.grab() else 0.0
            fps = 1000.0 / gap if math.isfinite(gap) and gap > 0 else DEFAULT_FPS
        return VideoInfo(float(fps), count, frame.shape[1], frame.shape[0], declared_fps)
    finally:
        cap.release()


def sample_slot(index: int, fps: float, rate: float) -> int:
    """The sampling interval (0, 1, 2, ...) frame ``index`` falls in; every frame when rate <= 0."""
    if rate <= 0 or rate >= fps:
        return index
    # The small epsilon keeps exact multiples (e.g. frame 25 at 25 fps, 1/s) in their own interval.
    return int(math.floor(index * rate / fps + 1e-9))


def is_sampled(index: int, fps: float, rate: float) -> bool:
    """True for the first frame of each sampling interval."""
    return index == 0 or sample_slot(index, fps, rate) != sample_slot(index - 1, fps, rate)


def split_ranges(frame_count: int, chunk_frames: int, max_ranges: int = 0) -> list[tuple[int, int | None]]:
    """``[start, end)`` frame ranges of about ``chunk_frames`` each, at most ``max_ranges`` of them (0: no
    cap; longer ranges then). The last range is open (end None), so frames past a container's
    declared count are read as they would be without ranges; one open range when the count is unknown."""
    if frame_count <= 0 or chunk_frames <= 0 or frame_count <= chunk_frames:
        return [(0, None)]
    if max_ranges > 0 and math.ceil(frame_count / chunk_frames) > max_ranges:
        chunk_frames = math.ceil(frame_count / max_ranges)
    starts = list(range(0, frame_count, chunk_frames))
    return [(s, e) for s, e in zip(starts, starts[1:])] + [(starts[-1], None)]


def truncation(index: int, declared: int, fps: float, reached_s: float | None = None,
               declared_fps: float = 0.0) -> str | None:
    """Why a stream that ends after ``index`` frames, the last starting at ``reached_s`` seconds, is
    cut short of the ``declared`` frames of its container, or None.

    Compared in time: some containers estimate their count from the duration at a nominal rate a
    variable-rate stream does not keep, and up to 2 seconds or 5% short is not a truncation. The
    declared count lasts ``declared / declared_fps`` seconds at the rate the container reports
    (``fps`` where it reports none), which is the rate OpenCV counted it in."""
    if declared <= 0:
        return None
    reached = index / fps if reached_s is None else max(reached_s, 0.0) + 1 / fps  # the end of the last frame
    duration = declared / (declared_fps or fps)
    if duration - reached <= max(2.0, 0.05 * duration):
        return None
    return (f"truncated video: the stream ends after {index} frames ({reached:.1f} s) of the {declared} "
            f"({duration:.1f} s) its container declares")


def read_frames(path: str, fps: float, rate: float, max_frames: int, start: int = 0, end: int | None = None,
                declared: int = 0, declared_fps: float = 0.0) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yields (frame index, timestamp s, RGB uint8 frame) for the sampled frames in ``[start, end)``.

    Frames are decoded one at a time; ``max_frames`` (0: no limit) caps the sampled frames of the
    whole video, counted from its start, so ranges honour it too. The timestamp is the frame's own
    (its presentation time, right for a variable frame rate), or ``index / fps`` where the stream
    has none. A video without a constant frame rate is sampled by those times (see the module's
    text). Raises VideoError when the stream ends far short of the ``declared`` frame count (at the
    container's ``declared_fps``, see ``truncation``). Split only what ``constant_frame_rate`` says.
    """
    by_index = constant_frame_rate(path)
    cap = _open(path)
    try:
        index, reached_s, first_s, last_slot = 0, None, None, -1
        if start > 0:
            # Seek where frame indices are times (a constant rate), and trust it only if the decoder
            # lands exactly; otherwise walk from the start.
            if (by_index and cap.set(cv2.CAP_PROP_POS_FRAMES, start)
                    and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == start):
                index, last_slot = start, sample_slot(start - 1, fps, rate)
            else:
                cap.release()
                cap = _open(path)
        while end is None or index < end:
            if by_index and max_frames and sample_slot(index, fps, rate) >= max_frames:
                return
            ok = cap.grab()
            if not ok:
                problem = truncation(index, declared, fps, reached_s, declared_fps)
                if problem:
                    raise VideoError(problem)
                return
            reached_s = frame_time(cap, index, fps)
            if by_index:
                slot = sample_slot(index, fps, rate)
            else:
                # Slots of 1 / rate seconds of presentation time from the first frame's.
                first_s = reached_s if first_s is None else first_s
                slot = index if rate <= 0 else int(math.floor((reached_s - first_s) * rate + 1e-9))
                if max_frames and slot >= max_frames:
                    return
            # The first frame of each slot; a time that goes back (a damaged stream) is never sampled twice.
            wanted, last_slot = index >= start and slot > last_slot, max(slot, last_slot)
            if wanted:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    raise VideoError(f"frame {index} does not decode")
                yield index, reached_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def frame_time(cap: cv2.VideoCapture, index: int, fps: float) -> float:
    """Seconds from the start of the stream to frame ``index``, just grabbed: its presentation time,
    or ``index / fps`` where the stream has none."""
    ms = cap.get(cv2.CAP_PROP_POS_MSEC)
    if index > 0 and not (ms and math.isfinite(ms) and ms > 0):  # no presentation time in the stream
        return index / fps
    return round(ms / 1000.0, 6)


class Mp4Writer:
    """BGR uint8 frames to an mp4v .mp4 at ``fps`` frames/s. The encoder opens on the first frame,
    whose size is the video's; frames over ``MAX_VIDEO_SIDE`` pixels (which the encoder refuses) are
    written scaled down. ``frames`` counts the frames written. Use as a context manager, or call ``close``."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps = path, fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._scale = 1.0

    def write(self, bgr: np.ndarray, times: int = 1) -> None:
        """Writes ``bgr`` as the next ``times`` frames (a frame held while the source skips some)."""
        if self._writer is None:
            self._scale = min(1.0, MAX_VIDEO_SIDE / max(bgr.shape[:2]))
            bgr = resize_by(bgr, self._scale)
            h, w = bgr.shape[:2]
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not writer.isOpened():
                writer.release()
                raise VideoError(f"cannot write a {w}x{h} mp4v video to {self.path!r} (give an .mp4 path in a "
                                 "writable directory)")
            self._writer = writer
        else:
            bgr = resize_by(bgr, self._scale)
        for _ in range(times):
            self._writer.write(bgr)
        self.frames += times

    def close(self) -> None:
        """Finishes the file; closing again does nothing."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
