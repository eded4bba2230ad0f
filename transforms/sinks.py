"""The output tables: one documented Arrow schema each, pure row builders, and WriteResults.

``faces``: one row per face found in an ``ok`` source. ``sources``: one row per input file with its
status (ok | no_face | error | skipped), counts, the sha256 of its content and, for errors, the stage
and message; 'skipped' names the earlier run that holds the results (``--skip_existing``). ``tracks``: one row
per person followed through a video (``transforms.tracks.TRACKS_SCHEMA``).
All are written with Beam's Parquet IO (snappy) as ``OUTPUT/faces-*.parquet``,
``OUTPUT/sources-*.parquet`` and ``OUTPUT/tracks-*.parquet``.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import apache_beam as beam
import pyarrow as pa

from models.handler import FaceAttributes
from models.labels import EMOTIONS, GENDERS, age_group
from transforms.common import FailedSources, count, withhold_failed
from transforms.records import ErrorRecord, FaceCrop, SourceFile
from transforms.sources import SourceContent
from transforms.tracks import TRACKS_SCHEMA

__all__ = ["FACES_SCHEMA", "SOURCES_SCHEMA", "RunInfo", "face_row", "source_row", "WriteResults"]


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


FACES_SCHEMA = pa.schema([
    _field("source_uri", pa.string(), "input file the face was found in", False),
    _field("source_type", pa.string(), "'image' or 'video'", False),
    _field("frame_index", pa.int64(), "index of the frame in the video stream; null for images"),
    _field("timestamp_s", pa.float64(), "time of the frame in the video, seconds; null for images"),
    _field("face_index", pa.int32(), "0-based index of the face in its frame, left to right", False),
    _field("track_id", pa.int64(), "the person's track within the video (see the tracks table); null for images"),
    _field("x1", pa.float32(), "left edge of the face box, pixels of the upright original", False),
    _field("y1", pa.float32(), "top edge of the face box, pixels", False),
    _field("x2", pa.float32(), "right edge of the face box, pixels", False),
    _field("y2", pa.float32(), "bottom edge of the face box, pixels", False),
    _field("image_width", pa.int32(), "width of the upright image or frame, pixels", False),
    _field("image_height", pa.int32(), "height of the upright image or frame, pixels", False),
    _field("detector", pa.string(), "face detector: 'mtcnn' or 'haar'", False),
    _field("detection_confidence", pa.float32(), "detector score in [0, 1]; null for Haar, which gives none"),
    _field("landmarks", pa.list_(pa.float32()),
           "10 floats: x, y of left eye, right eye, nose, mouth left, mouth right (pixels); null for Haar"),
    _field("emotion", pa.string(), "most probable of the 7 FER2013 emotions", False),
    _field("emotion_confidence", pa.float32(), "probability of that emotion", False),
    *[_field(f"p_{e}", pa.float32(), f"probability of '{e}'", False) for e in EMOTIONS],
    _field("age", pa.float32(), "estimated age in years", False),
    _field("age_group", pa.string(), "age group: 0-2, 3-9, 10-19, 20-29, ..., 60-69, 70+", False),
    _field("gender", pa.string(), "'male' or 'female' (as labelled in UTKFace)", False),
    _field("gender_confidence", pa.float32(), "probability of that gender label", False),
    _field("emotion_model", pa.string(), "emotion model name@sha256 prefix", False),
    _field("age_gender_model", pa.string(), "age/gender model name@sha256 prefix", False),
    _field("run_id", pa.string(), "identifier of the run that wrote the row", False),
    _field("crop_jpeg", pa.binary(), "the aligned 128x128 face as JPEG (with --store_crops; else null)"),
])

SOURCES_SCHEMA = pa.schema([
    _field("source_uri", pa.string(), "input file", False),
    _field("source_type", pa.string(), "'image', 'video', or 'unknown' (unsupported extension)", False),
    _field("status", pa.string(), "'ok' (faces found), 'no_face', 'error', or 'skipped' (content analysed by "
           "an earlier run, see previous_run_id; with --skip_existing)", False),
    _field("faces", pa.int64(), "rows in the faces table for this source", False),
    _field("frames", pa.int64(), "frames decoded (1 for an image)", False),
    _field("size_bytes", pa.int64(), "file size in bytes", False),
    _field("content_sha256", pa.string(), "sha256 of the file's bytes (hex), computed when it was read; "
           "null when it was not read (unsupported type, broken link, unreadable)"),
    _field("stage", pa.string(), "for errors: where it failed (read, decode, detect, inference)"),
    _field("error", pa.string(), "for errors: what went wrong"),
    _field("run_id", pa.string(), "identifier of the run that wrote the row", False),
    _field("previous_run_id", pa.string(), "for 'skipped': the earlier run whose output holds the results "
           "for this content; else null"),
])


class RunInfo(NamedTuple):
    """Constants of a run, written into every row."""

    run_id: str
    emotion_model: str
    age_gender_model: str


def face_row(face: FaceCrop, attrs: FaceAttributes, run: RunInfo) -> dict:
    """One faces-table row (a dict with every column of FACES_SCHEMA)."""
    probs = [float(p) for p in attrs.emotion]
    top = max(range(len(probs)), key=probs.__getitem__)
    female = attrs.p_female >= 0.5
    row = {
        "source_uri": face.source_uri, "source_type": face.source_type, "frame_index": face.frame_index,
        "timestamp_s": face.timestamp_s, "face_index": face.face_index, "track_id": face.track_id,
        "x1": face.box[0], "y1": face.box[1], "x2": face.box[2], "y2": face.box[3],
        "image_width": face.image_width, "image_height": face.image_height, "detector": face.detector,
        "detection_confidence": face.confidence,
        "landmarks": list(face.landmarks) if face.landmarks is not None else None,
        "emotion": EMOTIONS[top], "emotion_confidence": probs[top],
        **{f"p_{e}": probs[i] for i, e in enumerate(EMOTIONS)},
        "age": float(attrs.age), "age_group": age_group(attrs.age),
        "gender": GENDERS[1] if female else GENDERS[0],
        "gender_confidence": float(attrs.p_female if female else 1.0 - attrs.p_female),
        "emotion_model": run.emotion_model, "age_gender_model": run.age_gender_model, "run_id": run.run_id,
        "crop_jpeg": face.crop_jpeg,
    }
    return row


def source_row(source: SourceFile, frames: int, faces: int, errors: Iterable[ErrorRecord], run_id: str,
               content: SourceContent | None = None) -> dict:
    """One sources-table row: status is 'error' if anything failed, 'skipped' if an earlier run
    analysed the same content, else 'ok' or 'no_face'. ``content`` is None for a file never read."""
    errors = sorted(errors, key=lambda e: (e.stage, e.error))
    if errors:
        status = "error"
    elif content is not None and content.previous_run_id:
        status = "skipped"
    else:
        status = "ok" if faces else "no_face"
    return {
        "source_uri": source.uri, "source_type": source.source_type, "status": status,
        "faces": 0 if errors else faces, "frames": frames, "size_bytes": source.size_bytes,
        "content_sha256": content.sha256 if content is not None else None,
        "stage": errors[0].stage if errors else None,
        "error": "; ".join(dict.fromkeys(e.error for e in errors)) if errors else None,
        "run_id": run_id,
        "previous_run_id": content.previous_run_id if status == "skipped" else None,
    }


def _sources_rows(keyed, run_id: str):
    uri, grouped = keyed
    files = list(grouped["file"])
    if not files:  # an error for something that was never an input (cannot happen by construction)
        return
    contents = list(grouped["contents"])
    row = source_row(files[0], sum(grouped["frames"]), sum(grouped["faces"]), grouped["errors"], run_id,
                     contents[0] if contents else None)
    count(f"sources_{row['status']}")
    yield row


class WriteResults(beam.PTransform):
    """Writes the faces and sources tables under ``output``; returns the written file names.

    Input: (files, frame_counts, predicted, errors, tracks, contents), where ``contents`` holds
    (uri, SourceContent) for every file that was read.
    """

    def __init__(self, output: str, run: RunInfo, num_shards: int = 0):
        super().__init__()
        self._output = output
        self._run = run
        self._num_shards = num_shards

    def expand(self, inputs):
        files, frame_counts, predicted, errors, tracks, contents = inputs
        run = self._run
        failed = errors | "Failed" >> FailedSources()
        # Faces and tracks of a source that failed anywhere are withheld: its row in sources says error.
        rows = (
            withhold_failed(predicted, failed, lambda kv: kv[0].source_uri, "KeepOkSources")
            | "FaceRow" >> beam.Map(lambda kv: face_row(kv[0], kv[1], run))
        )
        face_counts = rows | "FaceCounts" >> beam.Map(lambda r: (r["source_uri"], 1))
        sources = (
            {
                "file": files | "FileByUri" >> beam.Map(lambda f: (f.uri, f)),
                "frames": frame_counts,
                "faces": face_counts,
                "errors": errors | "ErrorByUri" >> beam.Map(lambda e: (e.source_uri, e)),
                "contents": contents,
            }
            | "BySource" >> beam.CoGroupByKey()
            | "SourceRow" >> beam.FlatMap(_sources_rows, run.run_id)
        )
        faces_written = rows | "WriteFaces" >> beam.io.WriteToParquet(
            f"{self._output.rstrip('/')}/faces", FACES_SCHEMA, codec="snappy",
            file_name_suffix=".parquet", num_shards=self._num_shards)
        sources_written = sources | "WriteSources" >> beam.io.WriteToParquet(
            f"{self._output.rstrip('/')}/sources", SOURCES_SCHEMA, codec="snappy",
            file_name_suffix=".parquet", num_shards=self._num_shards)
        tracks_written = (
            withhold_failed(tracks, failed, lambda row: row["source_uri"], "KeepOkTracks")
            | "WriteTracks" >> beam.io.WriteToParquet(
                f"{self._output.rstrip('/')}/tracks", TRACKS_SCHEMA, codec="snappy",
                file_name_suffix=".parquet", num_shards=self._num_shards))
        return faces_written, sources_written, tracks_written
