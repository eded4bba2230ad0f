"""Tier 1: linking a video's faces into tracks, and the per-track summary rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.handler import FaceAttributes
from models.labels import EMOTIONS
from transforms.records import FaceCrop
from transforms.tracking import Tracker
from transforms.tracks import TRACKS_SCHEMA, link_tracks, track_rows


def _face(frame: int, index: int, x: float, y: float = 50.0, w: float = 40.0) -> FaceCrop:
    return FaceCrop("/v.mp4", "video", frame, frame / 10.0, index, (x, y, x + w, y + w), 640, 360, "mtcnn",
                    0.99, None, None)


def _attrs(emotion: str, age: float, p_female: float) -> FaceAttributes:
    probs = np.full(7, 0.05, np.float32)
    probs[EMOTIONS.index(emotion)] = 0.7
    return FaceAttributes(probs, age, p_female)


def test_two_people_keep_their_tracks_through_a_gap_and_a_jump():
    faces = []
    for frame in range(0, 50, 10):
        faces.append((_face(frame, 1, 400.0 + frame / 10), _attrs("happy", 30, 0.9)))
        if frame not in (10, 20):  # the left person turns away for two frames...
            x = 100.0 if frame < 30 else 75.0  # ...and comes back a little lower-left (IoU < 0.3)
            faces.append((_face(frame, 0, x, 50.0 if frame < 30 else 62.0), _attrs("sad", 8, 0.2)))
    tracked = link_tracks(faces, rate=1.0)  # frames 10 apart at 10 frames/s: sampled once a second
    ids = {(f.frame_index, round(f.box[0])): f.track_id for f, _ in tracked}
    left = {t for (frame, x), t in ids.items() if x < 300}
    right = {t for (frame, x), t in ids.items() if x >= 300}
    assert len(left) == 1 and len(right) == 1 and left != right
    assert [f.frame_index for f, _ in tracked] == sorted(f.frame_index for f, _ in tracked)


def test_far_jump_starts_a_new_track():
    faces = [(_face(0, 0, 10.0), _attrs("happy", 30, 0.9)), (_face(10, 0, 500.0), _attrs("happy", 30, 0.9))]
    assert [f.track_id for f, _ in link_tracks(faces, rate=1.0)] == [0, 1]


def test_a_person_missing_for_more_than_max_missed_sampled_frames_starts_a_new_track():
    """Sampled frames without faces never reach the linking: the gap is counted from the timestamps."""
    def at(frame):
        return (_face(frame, 0, 100.0), _attrs("happy", 30, 0.9))

    # sampled once a second (every 10th frame): 5 empty sampled frames keep the track, 6 end it
    assert [f.track_id for f, _ in link_tracks([at(0), at(10), at(70)], rate=1.0)] == [0, 0, 0]
    assert [f.track_id for f, _ in link_tracks([at(0), at(10), at(80)], rate=1.0)] == [0, 0, 1]
    assert [f.track_id for f, _ in link_tracks([at(0), at(10), at(620)], rate=1.0)] == [0, 0, 1]
    # every frame sampled: the frame indices count the gap
    assert [f.track_id for f, _ in link_tracks([at(0), at(6), at(13)])] == [0, 0, 1]
    # sampled faster than the video's frame rate: still every frame, counted by index
    assert [f.track_id for f, _ in link_tracks([at(0), at(2), at(4)], rate=30.0)] == [0, 0, 0]


def test_centre_matching_is_off_by_default_in_the_tracker():
    t = Tracker()
    t.update(np.array([[0, 0, 40, 40.0]]))
    assert t.update(np.array([[30, 0, 70, 40.0]])).tolist() == [1]  # IoU 0.14: new track
    t = Tracker(max_shift=1.0)
    t.update(np.array([[0, 0, 40, 40.0]]))
    assert t.update(np.array([[30, 0, 70, 40.0]])).tolist() == [0]
    with pytest.raises(ValueError):
        Tracker(max_shift=-1)


def test_track_rows_summarise_each_track():
    faces = [(_face(i * 10, 0, 100.0)._replace(track_id=0), _attrs("happy" if i < 2 else "sad", 20 + i, 0.8))
             for i in range(3)]
    faces.append((_face(0, 1, 400.0)._replace(track_id=1), _attrs("angry", 50, 0.3)))
    rows = track_rows("/v.mp4", faces, "r")
    table = pa.Table.from_pylist(rows, schema=TRACKS_SCHEMA)
    assert table.num_rows == 2
    first = rows[0]
    assert (first["track_id"], first["frames"], first["dominant_emotion"]) == (0, 3, "happy")
    assert (first["first_timestamp_s"], first["last_timestamp_s"]) == (0.0, 2.0)
    assert first["median_age"] == 21 and first["gender"] == "female" and first["gender_share"] == 1.0
    assert abs(sum(first[f"mean_p_{e}"] for e in EMOTIONS) - 1) < 1e-5
    assert rows[1]["gender"] == "male" and rows[1]["dominant_emotion"] == "angry"
