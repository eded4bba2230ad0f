"""Glue shared by the transforms: counters, and dead-letter records turned into ErrorRecords."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.records import ErrorRecord

__all__ = ["NAMESPACE", "count", "exception_message", "DeadLettersToErrors", "FailedSources", "WithholdFailedSources",
           "withhold_failed", "source_uris_of"]

NAMESPACE = "facebeam"


def count(name: str, n: int = 1) -> None:
    """Adds ``n`` to the pipeline counter ``facebeam/<name>``."""
    Metrics.counter(NAMESPACE, name).inc(n)


def source_uris_of(element) -> list[str]:
    """The source URIs an element (a record, a (key, value) pair, or a batch of them) belongs to."""
    for attr in ("source_uri", "uri"):
        if isinstance(getattr(element, attr, None), str):
            return [getattr(element, attr)]
    if isinstance(element, tuple) and element:
        return source_uris_of(element[0])
    if isinstance(element, list):
        return sorted({uri for item in element for uri in source_uris_of(item)})
    return ["<unknown>"]


def exception_message(exc: BaseException) -> str:
    """An exception as an ErrorRecord states it: what Beam's dead letters give for it (``Type: message``)."""
    return _error_message((type(exc), repr(exc)))


def _error_message(info) -> str:
    # Beam's dead letters hold (exception type, repr(exception), traceback lines).
    if isinstance(info, tuple) and len(info) >= 2:
        exc_type, exc_repr = info[0], info[1]
        name = getattr(exc_type, "__name__", str(exc_type))
        text = str(exc_repr)
        if text.startswith(f"{name}(") and text.endswith(")"):
            text = text[len(name) + 1:-1].strip("'\"")
        return f"{name}: {text}"
    return str(info)


class DeadLettersToErrors(beam.PTransform):
    """Beam's ``with_exception_handling`` dead letters -> ErrorRecord(source_uri, stage, error)."""

    def __init__(self, stage: str):
        super().__init__()
        self._stage = stage

    def expand(self, pcoll):
        stage = self._stage

        def convert(bad):
            element, info = bad
            count(f"errors_{stage}")
            # A failed batch (inference) fails every source that had a face in it.
            return [ErrorRecord(uri, stage, _error_message(info)) for uri in source_uris_of(element)]

        return pcoll | "ToError" >> beam.FlatMap(convert)


class FailedSources(beam.PTransform):
    """ErrorRecords -> a dict side input whose keys are the URIs of the sources that failed."""

    def expand(self, errors):
        return beam.pvalue.AsDict(
            errors
            | "FailedUris" >> beam.Map(lambda e: e.source_uri)
            | "Distinct" >> beam.Distinct()
            | "AsKeys" >> beam.Map(lambda uri: (uri, True)))


def withhold_failed(elements, failed, key, label: str):
    """``elements`` without those of failed sources (``failed``: a FailedSources side input)."""
    return elements | label >> beam.Filter(lambda element, bad: key(element) not in bad, failed)


class WithholdFailedSources(beam.PTransform):
    """Drops the elements of sources that failed at any stage: their row in ``sources`` says error.

    Input: (elements, errors); ``key`` gives an element's source URI.
    """

    def __init__(self, key):
        super().__init__()
        self._key = key

    def expand(self, inputs):
        elements, errors = inputs
        return withhold_failed(elements, errors | "Failed" >> FailedSources(), self._key, "KeepOk")
