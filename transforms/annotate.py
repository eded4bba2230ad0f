"""Annotate: copies of the inputs with each face's box, emotion, age group and gender drawn on.

Images become ``OUTPUT/annotated/<name>-<hash>.jpg``; videos a short clip of their sampled frames,
``OUTPUT/annotated/<name>-<hash>.mp4``, at the sampling rate (frames over ``MAX_VIDEO_SIDE`` pixels
scaled down). Only sources with faces get a copy: the sources table says which had none. The hash
of the source URI keeps files of the same name from different folders apart. Sources are decoded
again here, so this costs a second read of every source with faces; it is off unless asked for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms import drawing, imaging, video
from transforms.common import count
from transforms.sources import ReadOptions, local_copy

__all__ = ["Annotate", "annotated_name"]

LOG = logging.getLogger(__name__)


# Longest stem kept in an annotated copy's name, in UTF-8 bytes: file systems allow 255 bytes a name.
MAX_STEM_BYTES = 200
# Longest side of an annotated picture: JPEG counts sides in 16 bits, and libjpeg stops at 65500.
MAX_JPEG_SIDE = 65500


def annotated_name(source_uri: str, extension: str) -> str:
    """File name of a source's annotated copy: its stem (cut to ``MAX_STEM_BYTES``), a short hash of
    its URI, ``extension``."""
    stem = os.path.splitext(os.path.basename(source_uri))[0] or "source"
    stem = stem.encode("utf-8", "surrogateescape")[:MAX_STEM_BYTES].decode("utf-8", "ignore")
    digest = hashlib.sha256(source_uri.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}{extension}"


def _draw(rgb: np.ndarray, faces) -> np.ndarray:
    """BGR copy of ``rgb`` with every (FaceCrop, FaceAttributes) drawn."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(min(bgr.shape[:2]) / 480.0, 1.0)
    for face, attrs in sorted(faces, key=lambda fa: fa[0].face_index):
        drawing.draw_labelled_box(bgr, face.box, drawing.label_text(attrs, face.track_id), scale)
    return bgr


class _AnnotateFn(beam.DoFn):
    def __init__(self, directory: str, options: ReadOptions):
        self._directory = directory
        self._options = options

    def process(self, keyed):
        uri, faces = keyed
        faces = list(faces)
        try:
            if faces[0][0].source_type == "image":
                self._image(uri, faces)
            else:
                self._video(uri, faces)
            count("annotated")
        except Exception as e:  # an annotation is a by-product: its failure must not fail the source
            count("annotation_failures")
            LOG.warning("could not annotate %s: %s", uri, e)

    def _image(self, uri: str, faces) -> None:
        with FileSystems.open(uri) as f:
            rgb = imaging.decode_image(f.read(), self._options.max_pixels)
        drawn = _draw(rgb, faces)
        drawn = imaging.resize_by(drawn, min(1.0, MAX_JPEG_SIDE / max(drawn.shape[:2])))
        ok, buf = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:  # checked before the file is made: no empty copy is left behind
            raise OSError(f"OpenCV could not encode the {drawn.shape[1]}x{drawn.shape[0]} annotated picture as JPEG")
        with FileSystems.create(FileSystems.join(self._directory, annotated_name(uri, ".jpg"))) as out:
            out.write(buf.tobytes())

    def _video(self, uri: str, faces) -> None:
        by_frame: dict[int, list] = {}
        for face, attrs in faces:
            by_frame.setdefault(face.frame_index, []).append((face, attrs))
        rate = self._options.video_fps
        fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix="facebeam-annotated-")
        os.close(fd)
        try:
            with local_copy(uri) as path:
                info = video.probe_video(path)
                out_fps = rate if 0 < rate < info.fps else info.fps
                # Drawn at full size; the writer scales frames too big for the encoder.
                with video.Mp4Writer(tmp, out_fps) as writer:
                    for index, _, rgb in video.read_frames(path, info.fps, rate,
                                                           self._options.max_frames_per_video):
                        writer.write(_draw(rgb, by_frame.get(index, [])))
            if writer.frames:
                with open(tmp, "rb") as src, FileSystems.create(
                        FileSystems.join(self._directory, annotated_name(uri, ".mp4"))) as out:
                    shutil.copyfileobj(src, out, 1 << 20)  # a clip may be gigabytes
        finally:
            os.unlink(tmp)


class Annotate(beam.PTransform):
    """(FaceCrop, FaceAttributes) of ok sources -> annotated copies under ``output``/annotated/."""

    def __init__(self, output: str, options: ReadOptions):
        super().__init__()
        self._directory = FileSystems.join(output, "annotated")
        self._options = options

    def expand(self, faces):
        return (
            faces
            | "BySource" >> beam.Map(lambda fa: (fa[0].source_uri, fa))
            | "GroupSource" >> beam.GroupByKey()
            | "Draw" >> beam.ParDo(_AnnotateFn(self._directory, self._options))
        )
