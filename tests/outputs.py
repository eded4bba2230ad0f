"""Synthetic output directories for the report and sql tests: rows from the real row builders,
written with pyarrow in the documented schemas (no pipeline run, no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.handler import FaceAttributes
from models.labels import EMOTIONS
from transforms.records import ErrorRecord, FaceCrop, SourceFile
from transforms.sinks import FACES_SCHEMA, SOURCES_SCHEMA, RunInfo, face_row, source_row

RUN = RunInfo("run-test", "emotion_test@000000", "age_gender_test@000000")


def face(uri: str, emotion: str, confidence: float = 0.6, *, source_type: str = "image",
         frame_index: int | None = None, timestamp_s: float | None = None, face_index: int = 0,
         box=(10.0, 10.0, 40.0, 40.0), size=(100, 80), age: float = 30.0, p_female: float = 0.2,
         detector: str = "mtcnn", detection_confidence: float | None = 0.99) -> dict:
    """A faces row whose top emotion is ``emotion`` with probability ``confidence`` (> 1/7)."""
    rest = (1.0 - confidence) / (len(EMOTIONS) - 1)
    probs = np.array([confidence if e == emotion else rest for e in EMOTIONS], np.float32)
    crop = FaceCrop(uri, source_type, frame_index, timestamp_s, face_index, tuple(map(float, box)), size[0],
                    size[1], detector, detection_confidence,
                    tuple(float(i) for i in range(10)) if detector == "mtcnn" else None, None)
    return face_row(crop, FaceAttributes(probs, age, p_female), RUN)


def source(uri: str, source_type: str, faces: int, frames: int = 1, errors: tuple[tuple[str, str], ...] = (),
           size_bytes: int = 1000) -> dict:
    """A sources row; ``errors`` are (stage, message) pairs."""
    return source_row(SourceFile(uri, source_type, size_bytes), frames, faces,
                      [ErrorRecord(uri, stage, msg) for stage, msg in errors], RUN.run_id)


def faces_table(rows: list[dict], **extra: list) -> pa.Table:
    """Faces rows in FACES_SCHEMA, with columns given by name (e.g. ``track_id``, ``crop_jpeg``) filled in."""
    table = pa.Table.from_pylist(rows, schema=FACES_SCHEMA)
    types = {"track_id": pa.int64(), "crop_jpeg": pa.binary()}
    for name, values in extra.items():
        field, column = pa.field(name, types.get(name, pa.string())), pa.array(values, types.get(name))
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, table.schema.field(i), column.cast(table.schema.field(i).type))
        else:
            table = table.append_column(field, column)
    return table


def write_output(directory: Path, faces: list[dict] | pa.Table | None, sources: list[dict] | None,
                 shards: int = 1, tracks: pa.Table | None = None) -> Path:
    """Writes ``faces-*``, ``sources-*`` (and ``tracks-*``) Parquet files like the pipeline's; None skips a table."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = {}
    if faces is not None:
        tables["faces"] = faces if isinstance(faces, pa.Table) else pa.Table.from_pylist(faces, schema=FACES_SCHEMA)
    if sources is not None:
        tables["sources"] = pa.Table.from_pylist(sources, schema=SOURCES_SCHEMA)
    if tracks is not None:
        tables["tracks"] = tracks
    for name, table in tables.items():
        step = -(-table.num_rows // shards) if table.num_rows else 0
        for i in range(shards):
            part = table.slice(i * step, step) if step else table
            pq.write_table(part, directory / f"{name}-{i:05d}-of-{shards:05d}.parquet", compression="snappy")
    return directory
