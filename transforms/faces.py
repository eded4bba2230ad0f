"""DetectFaces: frames -> aligned face crops (MTCNN by default, OpenCV Haar as the fast option)."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
from typing import Callable, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from transforms import imaging, progress
from transforms.common import DeadLettersToErrors, count, exception_message
from transforms.records import ErrorRecord, FaceCrop, Frame

__all__ = ["DetectOptions", "DetectFaces", "Detection", "DETECTORS", "check_detect_options", "make_detector"]

LOG = logging.getLogger(__name__)

DETECTORS = ("mtcnn", "haar")


class DetectOptions(NamedTuple):
    """``min_face_size``: smallest face side kept, in original pixels; ``min_confidence``: MTCNN score
    below which faces are dropped; ``max_side``: longest side the detector sees (bigger frames are
    detected on a downscaled copy, 0 = never)."""

    detector: str = "mtcnn"
    min_face_size: float = 20.0
    min_confidence: float = 0.9
    max_side: int = 1920


def check_detect_options(options: DetectOptions, max_side_flag: str = "--detect_max_side") -> None:
    """Raises ValueError, naming the flag, for a setting that would fail or quietly find no face: an
    unknown detector, a value that is not a finite number, a negative size, a score outside [0, 1]."""
    if options.detector not in DETECTORS:
        raise ValueError(f"unknown detector {options.detector!r}; choose one of {DETECTORS}")
    for flag, value in (("--min_face_size", options.min_face_size), ("--min_confidence", options.min_confidence),
                        (max_side_flag, options.max_side)):
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value} is not a finite number")
        if value < 0:
            raise ValueError(f"{flag} {value} is below 0")
    if options.min_confidence > 1:
        raise ValueError(f"--min_confidence {options.min_confidence} is above 1 (MTCNN scores are 0 to 1)")


class Detection(NamedTuple):
    """A face in detector coordinates: box [x1, y1, x2, y2], score (None for Haar), landmarks (5, 2) or None."""

    box: np.ndarray
    score: float | None
    landmarks: np.ndarray | None


class _Mtcnn:
    # MTCNN's smallest face at its default settings (12 px PNet window at min_face_size 20).
    min_face = 20.0
    _LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

    def __init__(self):
        import tensorflow as tf
        from mtcnn import MTCNN

        self._net = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")
        # Each of PNet, RNet and ONet runs as one traced graph for any input size: called eagerly, Keras
        # runs every layer from Python, which costs more than the convolutions on video-sized frames
        # (2.3x faster detection over the example media, with identical boxes, landmarks and scores).
        # mtcnn (pinned to 1.0.0) keeps each stage's network in ``_model`` and calls it with one
        # float32 NHWC tensor.
        signature = [tf.TensorSpec((None, None, None, 3), tf.float32)]
        for stage in self._net.stages:
            stage._model = tf.function(stage._model, input_signature=signature)

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        """The faces of one RGB uint8 image; the same results as ``MTCNN.detect_faces`` on it."""
        import tensorflow as tf
        from mtcnn.utils.bboxes import limit_bboxes, to_json

        # 1. normalise once, as mtcnn does ((x - 127.5) / 128, exact in float32 for 8-bit pixels), into
        #    one tensor: handing mtcnn the array makes it convert the whole image to a tensor again for
        #    every pyramid level and stage (float64, about a third of the detection time on big photos)
        pixels = rgb[None].astype(np.float32)
        pixels -= 127.5
        pixels /= 128.0
        shapes = np.array([rgb.shape])
        # 2. PNet -> RNet -> ONet at mtcnn's defaults (min_face_size stays 20: mtcnn 1.0 returns nothing
        #    for values >= ~30; bigger minimum sizes shrink the image instead, imaging.detection_scale)
        with tf.device(self._net.device):
            images = tf.convert_to_tensor(pixels)
            del pixels
            boxes = None
            try:
                for stage in self._net.stages:
                    boxes = stage(bboxes_batch=boxes, images_normalized=images, images_oshapes=shapes)
                    if len(boxes) == 0:
                        break
            except tf.errors.InvalidArgumentError:
                # mtcnn's own signal that no proposal survived (its detect_faces reads it as "no face");
                # the image itself is already decoded, so nothing else raises it here
                boxes = np.empty((0, 16))
        # 3. boxes kept inside the image, rounded to pixels, as detect_faces(box_format="xyxy") returns them
        found = to_json(limit_bboxes(boxes, images_shapes=shapes, limit_landmarks=False) if len(boxes) else boxes,
                        images_count=1, output_as_width_height=False)[0]
        out = []
        for f in found:
            k = f["keypoints"]
            marks = np.array([k[n] for n in self._LANDMARKS], np.float64)
            out.append(Detection(np.asarray(f["box"], np.float64), float(f["confidence"]), marks))
        return out


class _Haar:
    min_face = 20.0

    def __init__(self):
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path} (OpenCV 4 ships it; OpenCV 5 does not)")

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        import cv2

        grey = cv2.equalizeHist(imaging.to_grey(rgb))
        rects = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(int(self.min_face), int(self.min_face)))
        return [Detection(np.array([x, y, x + w, y + h], np.float64), None, None) for x, y, w, h in rects]


def make_detector(name: str):
    """A callable RGB image -> list[Detection] for ``name`` in DETECTORS."""
    if name == "mtcnn":
        return _Mtcnn()
    if name == "haar":
        return _Haar()
    raise ValueError(f"unknown detector {name!r}; choose one of {DETECTORS}")


def faces_in_frame(frame: Frame, detector, options: DetectOptions) -> list[FaceCrop]:
    """Detects, filters, orders (left to right) and aligns the faces of one frame."""
    h, w = frame.image.shape[:2]
    # 1. detect on a copy scaled so that min_face_size lands on the detector's own minimum
    scale = imaging.detection_scale(w, h, options.min_face_size, options.max_side, detector.min_face)
    found = detector(imaging.resize_by(frame.image, scale))
    # 2. back to original coordinates, drop small and unsure faces
    kept = []
    for d in found:
        box = d.box / scale
        marks = None if d.landmarks is None else d.landmarks / scale
        if min(box[2] - box[0], box[3] - box[1]) < options.min_face_size:
            continue
        if d.score is not None and d.score < options.min_confidence:
            continue
        kept.append((box, d.score, marks))
    kept.sort(key=lambda k: (round(float(k[0][0]), 1), round(float(k[0][1]), 1)))
    # 3. align each face by its eyes (estimated from the box when the detector gives no landmarks)
    crops = []
    for i, (box, score, marks) in enumerate(kept):
        eyes = marks[:2] if marks is not None else imaging.box_eyes(box, options.detector)
        crops.append(FaceCrop(
            source_uri=frame.source_uri, source_type=frame.source_type, frame_index=frame.frame_index,
            timestamp_s=frame.timestamp_s, face_index=i, box=tuple(float(v) for v in box),
            image_width=w, image_height=h, detector=options.detector, confidence=score,
            landmarks=None if marks is None else tuple(float(v) for v in marks.ravel()),
            crop=imaging.align_face(frame.image, eyes),
        ))
    return crops


class _DetectFacesFn(beam.DoFn):
    """Frame -> FaceCrop(s); ErrorRecords of the frames the detector failed on go to 'failed'.

    The detector runs in a thread of its own, one frame ahead: while it works on a frame, this
    thread hands the previous frame's faces on downstream (crops framed for the models, model
    calls, rows; the stages fused after this one) and decodes the next frame (fused before it).
    MTCNN keeps about 1.5 of 2 cores busy, so that work mostly fills the idle remainder instead of
    following the detector. At most ``LOOKAHEAD`` frames wait beyond the one being handed on;
    the last ones are handed on when the bundle finishes, in the global window (the pipeline never
    windows its frames; Beam's BatchElements does the same for global windows).
    """

    FAILED = "failed"
    LOOKAHEAD = 1

    def __init__(self, options: DetectOptions, factory: Callable[[str], Callable]):
        self._options = options
        self._factory = factory
        self._detector = None
        self._pool = None
        self._pending: collections.deque = collections.deque()

    def setup(self):
        # The detector's network loads here, once per worker process, never at pipeline construction.
        self._detector = self._factory(self._options.detector)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="facebeam-detect")

    def start_bundle(self):
        self._pending = collections.deque()

    def process(self, frame: Frame):
        self._pending.append((frame.source_uri, self._pool.submit(self._detect, frame)))
        while len(self._pending) > self.LOOKAHEAD:
            yield from self._outputs(*self._pending.popleft())

    def finish_bundle(self):
        while self._pending:
            for out in self._outputs(*self._pending.popleft()):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _detect(self, frame: Frame):
        """The frame's crops, or the exception that stopped them (raised here, it would be blamed on a later frame)."""
        try:
            return faces_in_frame(frame, self._detector, self._options)
        except Exception as e:  # noqa: BLE001 - becomes this frame's ErrorRecord
            return e

    def _outputs(self, uri: str, future):
        crops = future.result()
        if isinstance(crops, Exception):
            count("errors_detect")
            yield beam.pvalue.TaggedOutput(self.FAILED, ErrorRecord(uri, "detect", exception_message(crops)))
            return
        count("faces_detected", len(crops))
        progress.faces_found(len(crops))
        if not crops:
            count("frames_without_faces")
        yield from crops


class DetectFaces(beam.PTransform):
    """Frame -> (FaceCrop per face, ErrorRecord per failed frame).

    ``factory`` builds the detector from its name inside each worker (default: ``make_detector``).
    """

    def __init__(self, options: DetectOptions = DetectOptions(), factory: Callable[[str], Callable] = make_detector):
        super().__init__()
        if options.detector not in DETECTORS:
            raise ValueError(f"unknown detector {options.detector!r}; choose one of {DETECTORS}")
        self._options = options
        self._factory = factory

    def expand(self, frames):
        fn = _DetectFacesFn(self._options, self._factory)
        result = frames | "Detect" >> beam.ParDo(fn).with_exception_handling(
            main_tag="faces", dead_letter_tag="errors").with_outputs(_DetectFacesFn.FAILED, main="faces")
        # No Reshuffle after detection: the crops go straight on to the models in the same fused step, so
        # no runner ever stores or ships them (a batch runner holds a shuffled PCollection whole; 48 KiB a
        # face). The work is already spread by the task Reshuffle before decoding.
        errors = (
            (result.errors | "DetectErrors" >> DeadLettersToErrors("detect"), result[_DetectFacesFn.FAILED])
            | "Errors" >> beam.Flatten()
        )
        return result.faces, errors
