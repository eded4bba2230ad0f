"""Small JPEG pictures of faces for reports: from the stored crop, or cut from the local source file.

A face's own ``crop_jpeg`` is used when the output has one. Otherwise the box is cut from the
source: an image file is decoded upright (as the pipeline decodes it), a video's frame is read at
``frame_index``. Sources that are not readable local files give None (the report shows a
placeholder), as does a picture whose size differs from the one recorded in the row, since the
box would then point elsewhere.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from transforms import imaging, video

__all__ = ["FaceRef", "face_box", "thumbnail_jpeg", "local_path", "read_picture", "video_frames", "face_thumbnails"]

LOG = logging.getLogger(__name__)


class FaceRef(NamedTuple):
    """Where a face is: its source, the frame (None for images), the box ``[x1, y1, x2, y2]`` in
    pixels of the upright picture of ``image_width`` x ``image_height``, and the stored JPEG crop if any."""

    source_uri: str
    source_type: str
    frame_index: int | None
    box: tuple[float, float, float, float]
    image_width: int
    image_height: int
    crop_jpeg: bytes | None = None


def face_box(box, width: int, height: int, margin: float = 0.15) -> tuple[int, int, int, int]:
    """Integer ``(x1, y1, x2, y2)`` of ``box`` grown by ``margin`` of its size on each side, clamped
    to a ``width`` x ``height`` picture; raises ValueError for a box with nothing inside the picture."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(int(np.floor(x1 - dx)), 0), max(int(np.floor(y1 - dy)), 0)
    right, bottom = min(int(np.ceil(x2 + dx)), width), min(int(np.ceil(y2 + dy)), height)
    if right <= left or bottom <= top:
        raise ValueError(f"box {box} lies outside the {width}x{height} picture")
    return left, top, right, bottom


def thumbnail_jpeg(rgb: np.ndarray, size: int = 96, quality: int = 85) -> bytes:
    """JPEG of an RGB uint8 (H, W, 3) picture scaled to fit ``size`` x ``size`` (never enlarged)."""
    h, w = rgb.shape[:2]
    return imaging.encode_jpeg(imaging.resize_by(rgb, min(size / max(h, w), 1.0)), quality)


def local_path(uri: str) -> str | None:
    """The local file of a URI (a path or ``file://``), or None for remote URIs and missing files."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        return None
    return uri if os.path.isfile(uri) else None


def read_picture(uri: str, source_type: str, frame_index: int | None,
                 max_pixels: int = 100_000_000) -> np.ndarray | None:
    """The upright RGB uint8 (H, W, 3) image, or frame ``frame_index`` of a video; None if unreadable.
    An image of more than ``max_pixels`` pixels is not decoded."""
    if source_type == "video":
        return next((rgb for _, rgb in video_frames(uri, [frame_index] if frame_index is not None else [])), None)
    path = local_path(uri)
    if path is None or source_type != "image":
        return None
    try:
        with open(path, "rb") as f:
            return imaging.decode_image(f.read(), max_pixels)
    except (OSError, ValueError) as e:  # ImageError is a ValueError
        LOG.info("no picture from %s: %s", uri, e)
    return None


def video_frames(uri: str, indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB frame) of the frames ``indices`` of a local video, in index order; those that cannot
    be read are left out. A constant-rate video seeks to each; any other is read once, front to back
    (a seek there is a walk from the start, which for every frame of a gallery took a pass each)."""
    path = local_path(uri)
    wanted = sorted({i for i in indices if i is not None and i >= 0})
    if path is None or not wanted:
        return
    try:
        if video.constant_frame_rate(path):
            for i in wanted:
                yield from ((k, rgb) for k, _, rgb in video.read_frames(path, 1.0, 0.0, 0, start=i, end=i + 1))
        else:
            todo = set(wanted)
            for k, _, rgb in video.read_frames(path, 1.0, 0.0, 0, end=wanted[-1] + 1):
                if k in todo:
                    yield k, rgb
    except (OSError, ValueError) as e:  # VideoError is a ValueError
        LOG.info("no picture from %s: %s", uri, e)


def face_thumbnails(faces: Iterable[FaceRef], size: int = 96) -> list[bytes | None]:
    """A JPEG for each face, in order: its ``crop_jpeg``, else cut from its source, else None.

    Faces are visited by source and frame so that each picture is decoded once and only one is
    held at a time. An image is decoded whatever its size, since the rows say the run read it.
    """
    faces = list(faces)
    out: list[bytes | None] = [f.crop_jpeg for f in faces]
    todo = sorted((i for i, f in enumerate(faces) if f.crop_jpeg is None),
                  key=lambda i: (faces[i].source_uri, faces[i].frame_index if faces[i].frame_index is not None else -1))
    for (uri, source_type), group in itertools.groupby(todo, key=lambda i: (faces[i].source_uri, faces[i].source_type)):
        group = list(group)
        if source_type == "video":
            pictures = video_frames(uri, (faces[i].frame_index for i in group))
        else:
            pixels = max(max(faces[i].image_width * faces[i].image_height for i in group), 1)
            index = faces[group[0]].frame_index
            pictures = iter([(index, read_picture(uri, source_type, index, pixels))])
        by_frame = {k: list(ids) for k, ids in itertools.groupby(group, key=lambda i: faces[i].frame_index)}
        for frame_index, picture in pictures:
            for i in by_frame.get(frame_index, []):
                out[i] = _cut(faces[i], picture, size)
    return out


def _cut(face: FaceRef, picture: np.ndarray | None, size: int) -> bytes | None:
    if picture is None or picture.shape[:2] != (face.image_height, face.image_width):
        return None
    try:
        x1, y1, x2, y2 = face_box(face.box, face.image_width, face.image_height)
    except (TypeError, ValueError):  # a box with nothing inside the picture, or a missing (NaN) one
        return None
    return thumbnail_jpeg(picture[y1:y2, x1:x2], size)
