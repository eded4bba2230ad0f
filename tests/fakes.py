"""Test doubles: a detector and a model handler that need no network and no TensorFlow."""

from __future__ import annotations

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.handler import FaceAttributes
from models.registry import ModelSpec
from transforms.faces import Detection

SPECS = (
    ModelSpec("fake_emotion", "emotion", "/nonexistent", "0" * 64, (48, 48, 1), (0.368, 0.385)),
    ModelSpec("fake_age_gender", "age-gender", "/nonexistent", "1" * 64, (64, 64, 3), (0.391, 0.289)),
)


def fake_detector_factory(name: str):
    """Finds as many faces as the top-left pixel's red value // 50, in a row of 30-pixel boxes.

    A red value of 255 (5 faces) makes detection raise, to exercise the error path.
    """

    def detect(rgb: np.ndarray):
        n = int(rgb[0, 0, 0]) // 50
        if n == 5:
            raise RuntimeError("detector exploded")
        out = []
        for i in range(n):
            box = np.array([5.0 + 35 * i, 5.0, 35.0 + 35 * i, 35.0])
            marks = np.array([[box[0] + 9, 15], [box[0] + 21, 15], [box[0] + 15, 22], [box[0] + 10, 28],
                              [box[0] + 20, 28]], np.float64)
            out.append(Detection(box, 0.99, marks))
        return out

    detect.min_face = 20.0
    return detect


class _FakeModel:
    """Stands for the loaded models (Beam's model cache keeps a weak reference to it)."""


class FakeHandler(ModelHandler):
    """Emotion from the crop's mean brightness, age = 30, P(female) = 0.75.

    With ``fail_bright`` a batch holding a very bright face raises, to exercise RunInference's dead letters.
    """

    def __init__(self, fail_bright: bool = False):
        super().__init__()
        self._fail_bright = fail_bright
        self.specs = SPECS

    def load_model(self):
        return _FakeModel()

    def run_inference(self, batch, model, inference_args=None):
        out = []
        for emotion_input, age_input in batch:
            if self._fail_bright and float(age_input.mean()) > 240:
                raise ValueError("model exploded")
            probs = np.full(7, 0.05, np.float32)
            probs[int(emotion_input.mean()) % 7] = 0.7
            out.append(PredictionResult(None, FaceAttributes(probs, 30.0, 0.75)))
        return out

    def batch_elements_kwargs(self):
        return {"max_batch_size": 4}
