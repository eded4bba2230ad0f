"""PredictAttributes: face crops -> emotion, age and gender through Beam's RunInference."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from models.handler import FaceModelHandler
from models.registry import ModelSpec
from transforms import imaging
from transforms.common import DeadLettersToErrors, count
from transforms.records import FaceCrop

__all__ = ["PredictAttributes", "model_inputs"]

def model_inputs(crop: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The canonical crop re-framed to a model's template and input shape (uint8, (S, S) or (S, S, 3))."""
    side, _, channels = spec.input_shape
    framed = imaging.retarget(crop, side, imaging.AlignTemplate(*spec.template))
    return imaging.to_grey(framed) if channels == 1 else framed

def _to_example(face: FaceCrop, specs: tuple[ModelSpec, ModelSpec], store_crops: bool):
    """(key, example): the crop's metadata (and JPEG, when kept) as key, the per-model inputs as example."""
    example = tuple(model_inputs(face.crop, spec) for spec in specs)
    jpeg = imaging.encode_jpeg(face.crop) if store_crops else None
    return face._replace(crop=None, crop_jpeg=jpeg), example

class PredictAttributes(beam.PTransform):
    """FaceCrop -> (FaceCrop without pixels, FaceAttributes), plus ErrorRecords, as a tuple.

    With ``store_crops`` each face keeps its aligned crop as a small JPEG (``crop_jpeg``).
    """

    def __init__(self, handler: FaceModelHandler, store_crops: bool = False):
        super().__init__()
        self._handler = handler
        self._store_crops = store_crops

    def expand(self, faces):
        specs = self._handler.specs
        examples = faces | "ModelInputs" >> beam.Map(_to_example, specs, self._store_crops)
        main, dlq = examples | "RunInference" >> RunInference(
            KeyedModelHandler(self._handler)).with_exception_handling()

        def unpack(keyed):
            key, result = keyed
            count("faces_predicted")
            return key, result.inference

        predicted = main | "Unpack" >> beam.Map(unpack)
        errors = (
            [dlq.failed_inferences] + list(dlq.failed_preprocessing) + list(dlq.failed_postprocessing)
            | "FlattenFailures" >> beam.Flatten()
            | "InferenceErrors" >> DeadLettersToErrors("inference")
        )
        return predicted, errors
