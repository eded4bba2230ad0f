"""The Beam ModelHandler that owns the emotion and the age + gender Keras models.

RunInference batches the faces; this handler loads both models once per worker (after checking
their sha256) and applies them to a batch. Each example is a pair of fixed-shape arrays, one per
model, already framed to the model's template: (emotion input, age-gender input).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.labels import EMOTIONS
from models.registry import ModelSpec, load_checked, verify
from models.tta import tta_mode, views

__all__ = ["FaceModels", "FaceAttributes", "FaceModelHandler", "RUNTIMES"]

LOG = logging.getLogger(__name__)

# What runs the models: LiteRT's CPU kernels (``models.litert``), TensorFlow, or "auto": TensorFlow
# where it sees a GPU, else LiteRT.
RUNTIMES = ("auto", "litert", "tensorflow")


@dataclass(frozen=True)
class FaceModels:
    """The loaded models (a dataclass: Beam's shared-model cache needs a weak reference to it).

    ``predict`` is the only call the handler makes, so the models can also live in another process
    behind Beam's multi-process proxy (``large_model``): it takes and returns numpy arrays only.
    With ``lite`` (the two models converted, see ``models.litert``) LiteRT runs them, else TensorFlow.

    ``emotion`` and ``age_gender`` are the Keras models. Each source is the Keras model itself or its
    ModelSpec: LiteRT running a cached conversion needs no Keras model, so the handler then passes the
    specs and a Keras model is loaded (its sha256 checked again) only if something asks for it.
    """

    emotion_source: Any  # keras.Model, or the ModelSpec to load it from on first use
    age_gender_source: Any  # keras.Model, or the ModelSpec to load it from on first use
    # Softmax temperatures applied to the emotion probabilities after the views of a TTA mode are
    # averaged: (mode, temperature) pairs; a mode without one gets the probabilities as they are.
    emotion_temperatures: tuple[tuple[str, float], ...] = ()
    # (emotion, age_gender) as models.litert.LiteModel, or None to run them with TensorFlow.
    lite: tuple | None = None

    @property
    def runtime(self) -> str:
        return "tensorflow" if self.lite is None else "litert"

    @functools.cached_property
    def emotion(self):
        """The emotion Keras model."""
        return _keras(self.emotion_source)

    @functools.cached_property
    def age_gender(self):
        """The age + gender Keras model."""
        return _keras(self.age_gender_source)

    def temperature_for(self, tta: bool | str = "none") -> float:
        """The temperature applied to the emotion probabilities averaged over ``tta``'s views."""
        return float(dict(self.emotion_temperatures).get(tta_mode(tta), 1.0))

    def predict(self, x_emotion: np.ndarray, x_age: np.ndarray, tta: bool | str = "none"):
        """(emotion (N, 7), age (N,), P(female) (N,)) for float32 (N, S, S, 1) and (N, S, S, 3) pixels;
        with ``tta`` (``models.tta``: "flip", "multi", or True for "flip"), averaged over the views.
        The emotion probabilities are then calibrated with the temperature fitted for that mode."""
        from models.calibration import apply_temperature

        x_emotion, x_age = np.asarray(x_emotion, np.float32), np.asarray(x_age, np.float32)
        one_view = self._predict_lite if self.lite is not None else self._predict_tf
        # mirrored views are strided numpy views; both runtimes take contiguous arrays
        outputs = [one_view(np.ascontiguousarray(e), np.ascontiguousarray(a))
                   for e, a in zip(views(x_emotion, tta), views(x_age, tta))]
        emotion, age, p_female = outputs[0] if len(outputs) == 1 else tuple(
            np.mean([o[k] for o in outputs], axis=0, dtype=np.float32) for k in range(3))
        temperature = self.temperature_for(tta)
        if temperature != 1.0 and len(emotion):
            emotion = apply_temperature(emotion, temperature).astype(np.float32)
        return emotion, age, p_female

    def _predict_tf(self, x_emotion, x_age):
        emotion, age, p_female = self._forward(x_emotion, x_age)
        return emotion.numpy(), age.numpy(), p_female.numpy()

    def _predict_lite(self, x_emotion, x_age):
        """``_predict_tf`` with the LiteRT models."""
        emotion_model, age_model = self.lite
        out = age_model(x_age)
        return emotion_model(x_emotion), out["age"][:, 0], out["gender"][:, 0]

    @functools.cached_property
    def _forward(self):
        """Both models as one TensorFlow graph for any batch size, traced on first use in the process
        that predicts.

        Called eagerly, Keras runs each layer from Python: for batches of a few faces that costs
        more than the arithmetic. The unknown batch dimension in the signature means one trace
        serves every batch, so nothing is traced again as RunInference's batch sizes vary.
        """
        import tensorflow as tf

        spec = [tf.TensorSpec((None, *self.emotion.input_shape[1:]), tf.float32),
                tf.TensorSpec((None, *self.age_gender.input_shape[1:]), tf.float32)]

        def forward(x_emotion, x_age):
            out = self.age_gender(x_age, training=False)
            return self.emotion(x_emotion, training=False), out["age"][:, 0], out["gender"][:, 0]

        return tf.function(forward, input_signature=spec)


def _keras(source):
    """A Keras model given as itself, or loaded from its ModelSpec after its sha256 is checked."""
    return load_checked(source) if isinstance(source, ModelSpec) else source


class FaceAttributes(NamedTuple):
    """One face's model outputs: ``emotion`` float32 (7,) probabilities, ``age`` years, ``p_female``."""

    emotion: np.ndarray
    age: float
    p_female: float


def _configure_tf(threads: int) -> None:
    """Thread counts, and GPU memory grown on demand so several worker processes can share a GPU."""
    import tensorflow as tf

    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # TF already initialised in this process: keep its settings
        pass


class FaceModelHandler(ModelHandler[tuple, PredictionResult, FaceModels]):
    """Emotion, age and gender for batches of framed face crops.

    Args:
      emotion: spec of the emotion model (input (S, S, 1) grey).
      age_gender: spec of the age + gender model (input (S, S, 3) RGB).
      min_batch_size / max_batch_size: RunInference's batching bounds.
      tta: test-time augmentation (``models.tta``): "none", "flip" (the face and its mirror image) or
        "multi" (those zoomed in and out too: 6 views); True means "flip". Each view is one more
        pass of both models.
      large_model: share one copy of the models between the processes of a worker.
      model_copies: how many copies to load when shared (e.g. one per GPU).
      tf_threads: TensorFlow intra/inter-op threads per process (0: TF's default), and LiteRT's
        threads per call (0: one per CPU).
      runtime: what runs the models, one of ``RUNTIMES``: "litert" (converted once, cached; on CPUs
        about a third faster than TensorFlow, same outputs), "tensorflow", or "auto" (TensorFlow
        where it sees a GPU, else LiteRT; TensorFlow also where the conversion fails).
      calibrate: apply the emotion model's softmax temperature fitted for ``tta``'s views (its
        sidecar's, see ``models.calibration``), so the emotion probabilities are calibrated; the top
        class is kept. A model without a temperature for that mode is left as it is.
    """

    def __init__(self, emotion: ModelSpec, age_gender: ModelSpec, min_batch_size: int = 1,
                 max_batch_size: int = 64, tta: bool | str = "none", large_model: bool = False,
                 model_copies: int | None = None, tf_threads: int = 0, calibrate: bool = True,
                 runtime: str = "auto"):
        super().__init__()
        if emotion.task != "emotion" or age_gender.task != "age-gender":
            raise ValueError("FaceModelHandler needs an emotion and an age-gender model spec")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        if emotion.classes and tuple(emotion.classes) != EMOTIONS:
            raise ValueError(f"{emotion.name} predicts {len(emotion.classes)} classes ({', '.join(emotion.classes)}); "
                             f"the faces table holds the {len(EMOTIONS)} FER2013 emotions: give a 7-class model")
        self._emotion = emotion
        self._age_gender = age_gender
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
        self._tta = tta_mode(tta)
        self._large_model = large_model
        self._model_copies = model_copies
        self._tf_threads = tf_threads
        self._calibrate = calibrate
        self._runtime = runtime

    @property
    def specs(self) -> tuple[ModelSpec, ModelSpec]:
        return self._emotion, self._age_gender

    def load_model(self) -> FaceModels:
        """Both models, after their files' sha256 is checked; Keras loads them only where TensorFlow runs them."""
        _configure_tf(self._tf_threads)
        for spec in self.specs:
            LOG.info("loading %s from %s", spec.tag, spec.path)
            verify(spec)
        lite = self._lite()
        sources = self.specs if lite is not None else tuple(load_checked(spec) for spec in self.specs)
        temperatures = ((self._tta, self._emotion.temperature_for(self._tta)),) if self._calibrate else ()
        return FaceModels(*sources, emotion_temperatures=temperatures, lite=lite)

    def _lite(self) -> tuple | None:
        """The models for LiteRT, where the runtime asks for it; None: TensorFlow runs them."""
        if self._runtime == "tensorflow":
            return None
        if self._runtime == "auto":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return None
        from models import litert

        try:
            return tuple(litert.LiteModel(litert.flatbuffer(functools.partial(load_checked, spec), spec.name,
                                                            spec.sha256), self._tf_threads)
                         for spec in self.specs)
        except Exception as e:  # noqa: BLE001 - "auto" falls back to the models as loaded
            if self._runtime == "litert":
                raise
            LOG.warning("LiteRT unavailable (%s: %s); TensorFlow runs the models", type(e).__name__, e)
            return None

    def run_inference(self, batch: Sequence[tuple], model: FaceModels,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        # 1. stack the per-model inputs of the batch
        x_emotion = np.stack([b[0] for b in batch]).astype(np.float32)
        x_age = np.stack([b[1] for b in batch]).astype(np.float32)
        if x_emotion.ndim == 3:
            x_emotion = x_emotion[..., None]
        # 2. run both models (on each view, with TTA)
        emotion, age, p_female = model.predict(x_emotion, x_age, self._tta)
        # 3. one result per face
        return [
            PredictionResult(None, FaceAttributes(emotion[i].astype(np.float32), float(age[i]), float(p_female[i])),
                             model_id=f"{self._emotion.tag}+{self._age_gender.tag}")
            for i in range(len(batch))
        ]

    def get_num_bytes(self, batch: Sequence[tuple]) -> int:
        return sum(b[0].nbytes + b[1].nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "facebeam"

    def batch_elements_kwargs(self) -> dict[str, int]:
        return dict(self._batching)

    def share_model_across_processes(self) -> bool:
        return self._large_model

    def model_copies(self) -> int:
        return self._model_copies or 1
