"""Typed records passed between the pipeline's steps."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["SourceFile", "SourceTask", "Frame", "FaceCrop", "ErrorRecord"]


class SourceFile(NamedTuple):
    """One input file as matched: its URI, ``source_type`` ('image' or 'video') and size in bytes."""

    uri: str
    source_type: str
    size_bytes: int


class SourceTask(NamedTuple):
    """A unit of decoding work: a whole image, or the frames ``[start_frame, end_frame)`` of a video.

    ``end_frame`` is None for "to the end"; ``fps`` is the video's frame rate (0.0 for images).
    """

    uri: str
    source_type: str
    start_frame: int = 0
    end_frame: int | None = None
    fps: float = 0.0
    last: bool = True  # the source's last task (progress reporting counts the file as done)
    declared_frames: int = 0  # the video's frame count as its container declares it (0: unknown)
    declared_fps: float = 0.0  # the frame rate its container reports, which that count is in (0: none)


class Frame(NamedTuple):
    """A decoded picture: ``image`` is RGB uint8 (H, W, 3) in upright orientation.

    Images have ``frame_index`` and ``timestamp_s`` None; video frames carry the frame's index in
    the stream and its time in seconds.
    """

    source_uri: str
    source_type: str
    frame_index: int | None
    timestamp_s: float | None
    image: np.ndarray


class FaceCrop(NamedTuple):
    """One detected face.

    ``box`` is ``(x1, y1, x2, y2)`` float pixels of the original frame; ``landmarks`` is 10 floats
    (x, y of left eye, right eye, nose, mouth left, mouth right) or None; ``crop`` is the aligned
    RGB uint8 (128, 128, 3) face (``imaging.CANONICAL``), or None once it has been handed to a model;
    ``crop_jpeg`` is that crop as JPEG bytes when crops are kept; ``track_id`` links the faces of one
    person across the frames of a video (None for images).
    """

    source_uri: str
    source_type: str
    frame_index: int | None
    timestamp_s: float | None
    face_index: int
    box: tuple[float, float, float, float]
    image_width: int
    image_height: int
    detector: str
    confidence: float | None
    landmarks: tuple[float, ...] | None
    crop: np.ndarray | None
    crop_jpeg: bytes | None = None
    track_id: int | None = None


class ErrorRecord(NamedTuple):
    """A failure, as data: which source, at which stage, and the message."""

    source_uri: str
    stage: str
    error: str
