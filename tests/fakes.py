"""Test doubles: a detector and a model handler that need no network and no TensorFlow, and a
non-local Beam FileSystem backed by a local folder."""

from __future__ import annotations

import os

import numpy as np
from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem
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


class DiskBackedFileSystem(LocalFileSystem):
    """Beam FileSystem for the ``fbtest://`` scheme, a stand-in for ``gs://`` backed by a local folder.

    ``fbtest://a/b`` is ``ROOT/a/b``; set ``ROOT`` (a class attribute) before use. Beam finds the
    class by its scheme once this module is imported, so code that must work on any FileSystems URI
    (not only local paths) can be run against it.
    """

    ROOT = ""
    PREFIX = "fbtest://"

    @classmethod
    def scheme(cls):
        return "fbtest"

    def _local(self, path: str) -> str:
        return os.path.join(self.ROOT, path[len(self.PREFIX):]) if path.startswith(self.PREFIX) else path

    def _uri(self, path: str) -> str:
        return self.PREFIX + os.path.relpath(path, self.ROOT)

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def _url_dirname(self, url):
        return url.rpartition("/")[0]

    def match(self, patterns, limits=None):  # FileSystem's own: lists with _list, matches with fnmatch
        return FileSystem.match(self, patterns, limits)

    def _list(self, dir_or_prefix):
        for m in super()._list(self._local(dir_or_prefix)):
            yield FileMetadata(self._uri(m.path), m.size_in_bytes, m.last_updated_in_seconds)

    def metadata(self, path):
        m = super().metadata(self._local(path))
        return FileMetadata(path, m.size_in_bytes, m.last_updated_in_seconds)

    def mkdirs(self, path):
        return super().mkdirs(self._local(path))

    def has_dirs(self):
        return True

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def copy(self, sources, destinations):
        return super().copy([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def rename(self, sources, destinations):
        return super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def exists(self, path):
        return super().exists(self._local(path))

    def size(self, path):
        return super().size(self._local(path))

    def last_updated(self, path):
        return super().last_updated(self._local(path))

    def checksum(self, path):
        return super().checksum(self._local(path))

    def delete(self, paths):
        return super().delete([self._local(p) for p in paths])
