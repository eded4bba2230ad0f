"""AssignTracks: faces of a video linked across its sampled frames, and the per-track summary table.

All faces of one video are grouped (they are small rows: boxes and probabilities, no pixels),
ordered by frame, and linked by box overlap with ``tracking.Tracker``. Splitting a video into frame
ranges does not change the tracks, since the linking runs over the whole video's faces.
"""

from __future__ import annotations

from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa

from models.handler import FaceAttributes
from models.labels import EMOTIONS, GENDERS
from transforms.common import count
from transforms.records import FaceCrop
from transforms.tracking import MAX_SHIFT, Tracker

__all__ = ["TRACKS_SCHEMA", "link_tracks", "track_rows", "AssignTracks"]


def _field(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


TRACKS_SCHEMA = pa.schema([
    _field("source_uri", pa.string(), "video the track belongs to"),
    _field("track_id", pa.int64(), "track within the video (0, 1, ...), as in the faces table"),
    _field("first_timestamp_s", pa.float64(), "time of the track's first face, seconds"),
    _field("last_timestamp_s", pa.float64(), "time of the track's last face, seconds"),
    _field("frames", pa.int64(), "sampled frames in which the track's face was found"),
    _field("dominant_emotion", pa.string(), "emotion with the highest mean probability over the track"),
    *[_field(f"mean_p_{e}", pa.float32(), f"mean probability of '{e}' over the track") for e in EMOTIONS],
    _field("median_age", pa.float32(), "median of the per-frame age estimates, years"),
    _field("gender", pa.string(), "majority of the per-frame gender labels (ties: the higher mean probability)"),
    _field("gender_share", pa.float32(), "share of the track's frames with that gender label"),
    _field("run_id", pa.string(), "identifier of the run that wrote the row"),
])


def link_tracks(faces: Iterable[tuple[FaceCrop, FaceAttributes]], min_iou: float = 0.3,
                max_missed: int = 5, max_shift: float = MAX_SHIFT,
                rate: float = 0.0) -> list[tuple[FaceCrop, FaceAttributes]]:
    """The faces of one video with ``track_id`` set, in (frame_index, face_index) order.

    Faces are linked by box overlap (>= ``min_iou``), then, since sampled frames can be a second
    apart, by nearness: a face whose centre moved less than ``max_shift`` face widths.
    ``max_missed``: sampled frames in which a person may go undetected (a turned head) and keep the
    track. Sampled frames without faces are not among ``faces``: how many lie between two frames
    with faces is told by their timestamps at the sampling ``rate`` (frames/s; 0: every frame) and
    by their frame indices, whichever counts fewer.
    """
    ordered = sorted(faces, key=lambda fa: (fa[0].frame_index or 0, fa[0].face_index))
    tracker = Tracker(min_iou=min_iou, max_missed=max_missed, max_shift=max_shift)
    out: list[tuple[FaceCrop, FaceAttributes]] = []
    previous: FaceCrop | None = None
    i = 0
    while i < len(ordered):
        first = ordered[i][0]
        j = i
        while j < len(ordered) and ordered[j][0].frame_index == first.frame_index:
            j += 1
        if previous is not None:
            for _ in range(min(_frames_between(previous, first, rate), max_missed + 1)):
                tracker.update(np.zeros((0, 4)))
        group = ordered[i:j]
        ids = tracker.update(np.array([f.box for f, _ in group], np.float64).reshape(-1, 4))
        out += [(f._replace(track_id=int(t)), a) for (f, a), t in zip(group, ids)]
        previous, i = first, j
    return out


def _frames_between(earlier: FaceCrop, later: FaceCrop, rate: float) -> int:
    """Sampled frames strictly between two frames of a video."""
    between = max(0, (later.frame_index or 0) - (earlier.frame_index or 0) - 1)
    if rate > 0 and earlier.timestamp_s is not None and later.timestamp_s is not None:
        between = min(between, max(0, round((later.timestamp_s - earlier.timestamp_s) * rate) - 1))
    return between


def track_rows(source_uri: str, faces: list[tuple[FaceCrop, FaceAttributes]], run_id: str) -> list[dict]:
    """One TRACKS_SCHEMA row per track of a video's tracked faces."""
    by_track: dict[int, list[tuple[FaceCrop, FaceAttributes]]] = {}
    for f, a in faces:
        by_track.setdefault(f.track_id, []).append((f, a))
    rows = []
    for track_id in sorted(by_track):
        members = by_track[track_id]
        probs = np.mean([a.emotion for _, a in members], axis=0)
        p_female = np.array([a.p_female for _, a in members])
        female_votes = int((p_female >= 0.5).sum())
        if female_votes * 2 == len(members):
            female = p_female.mean() >= 0.5
        else:
            female = female_votes * 2 > len(members)
        times = [f.timestamp_s or 0.0 for f, _ in members]
        rows.append({
            "source_uri": source_uri, "track_id": track_id,
            "first_timestamp_s": float(min(times)), "last_timestamp_s": float(max(times)),
            "frames": len({f.frame_index for f, _ in members}),
            "dominant_emotion": EMOTIONS[int(np.argmax(probs))],
            **{f"mean_p_{e}": float(probs[k]) for k, e in enumerate(EMOTIONS)},
            "median_age": float(np.median([a.age for _, a in members])),
            "gender": GENDERS[1] if female else GENDERS[0],
            "gender_share": (female_votes if female else len(members) - female_votes) / len(members),
            "run_id": run_id,
        })
    return rows


class AssignTracks(beam.PTransform):
    """(FaceCrop, FaceAttributes) -> (tracked faces, track summary rows).

    Image faces pass through untouched; video faces come back with ``track_id`` set.
    """

    def __init__(self, run_id: str, min_iou: float = 0.3, max_missed: int = 5, rate: float = 0.0):
        super().__init__()
        self._run_id = run_id
        self._min_iou = min_iou
        self._max_missed = max_missed
        self._rate = rate  # the frames/s videos were sampled at (0: every frame)

    def expand(self, predicted):
        parts = predicted | "ImageOrVideo" >> beam.Partition(lambda fa, n: int(fa[0].source_type == "video"), 2)
        min_iou, max_missed, rate, run_id = self._min_iou, self._max_missed, self._rate, self._run_id

        def link(keyed):
            uri, faces = keyed
            tracked = link_tracks(faces, min_iou, max_missed, rate=rate)
            count("tracks", len({f.track_id for f, _ in tracked}))
            return uri, tracked

        grouped = (
            parts[1]
            | "ByVideo" >> beam.Map(lambda fa: (fa[0].source_uri, fa))
            | "GroupVideo" >> beam.GroupByKey()
            # Any: Beam would otherwise build a schema coder from FaceCrop's annotations.
            | "Link" >> beam.Map(link).with_output_types(Any)
        )
        tracked = grouped | "TrackedFaces" >> beam.FlatMap(lambda kv: kv[1])
        rows = grouped | "TrackRows" >> beam.FlatMap(lambda kv: track_rows(kv[0], kv[1], run_id))
        faces = (parts[0], tracked) | "AllFaces" >> beam.Flatten()
        return faces, rows
