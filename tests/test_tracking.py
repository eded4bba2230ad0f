"""Tier 1: IoU matching, the tracker and the per-track moving average, on synthetic boxes."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.tracking import Smoother, Tracker, as_boxes, iou_matrix, match_boxes


def test_iou_matrix_values_and_shapes():
    a = [[0, 0, 2, 2], [10, 10, 12, 12]]
    b = [[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6]]
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3) and iou.dtype == np.float64
    np.testing.assert_allclose(iou[0], [1.0, 1 / 3, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    assert iou_matrix(a, []).shape == (2, 0)
    # A degenerate (zero-area) box overlaps nothing instead of dividing by zero.
    assert iou_matrix([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0


@pytest.mark.parametrize("bad", [[[0, 0, 1]], [[2, 0, 1, 1]], [[0, 0, 1, np.nan]], np.zeros((2, 2, 4))])
def test_bad_boxes_are_refused(bad):
    with pytest.raises(ValueError, match="boxes"):
        as_boxes(bad)


def test_match_boxes_follows_faces_whatever_their_order():
    prev = [[0, 0, 10, 10], [50, 0, 60, 10]]
    # The same two faces, moved by a pixel and listed the other way round, plus a newcomer.
    new = [[51, 1, 61, 11], [100, 100, 110, 110], [1, 0, 11, 10]]
    np.testing.assert_array_equal(match_boxes(prev, new, 0.3), [1, -1, 0])


def test_match_boxes_is_one_to_one_and_greedy_by_overlap():
    prev = [[0, 0, 10, 10]]
    new = [[3, 0, 13, 10], [1, 0, 11, 10]]  # both overlap; the second more
    np.testing.assert_array_equal(match_boxes(prev, new, 0.3), [-1, 0])
    # Below the threshold nothing links.
    np.testing.assert_array_equal(match_boxes(prev, [[8, 0, 18, 10]], 0.3), [-1])
    assert match_boxes([], new).tolist() == [-1, -1] and match_boxes(prev, []).shape == (0,)


def test_match_boxes_rejects_bad_threshold():
    with pytest.raises(ValueError, match="min_iou"):
        match_boxes([[0, 0, 1, 1]], [[0, 0, 1, 1]], 0.0)


def _faces(t: float) -> np.ndarray:
    """Two faces drifting right by 3 px per frame, 80 px apart."""
    return np.array([[10 + 3 * t, 20, 50 + 3 * t, 70], [90 + 3 * t, 25, 130 + 3 * t, 75]], np.float64)


def test_tracker_keeps_ids_of_moving_faces_in_any_order():
    tracker = Tracker(min_iou=0.3, max_missed=2)
    assert tracker.update(_faces(0)).tolist() == [0, 1]
    for t in range(1, 10):
        boxes = _faces(t)
        if t % 2:
            boxes = boxes[::-1]  # detectors list faces in no guaranteed order
        ids = tracker.update(boxes).tolist()
        assert ids == ([1, 0] if t % 2 else [0, 1])
    assert tracker.active_ids == {0, 1}


def test_tracker_new_face_gets_a_new_id_and_lost_faces_expire():
    tracker = Tracker(min_iou=0.3, max_missed=2)
    tracker.update(_faces(0))
    newcomer = [300, 40, 340, 90]
    ids = tracker.update(np.vstack([_faces(1), [newcomer]]))
    assert ids.tolist() == [0, 1, 2]
    # Face 1 goes undetected for two frames (max_missed): it comes back under its id.
    for t in (2, 3):
        assert tracker.update(np.vstack([_faces(t)[:1], [newcomer]])).tolist() == [0, 2]
    assert tracker.update(np.vstack([_faces(4), [newcomer]])).tolist() == [0, 1, 2]
    # Missing for three frames, it expires; when it returns it is a new track.
    for t in (5, 6, 7):
        tracker.update(np.vstack([_faces(t)[:1], [newcomer]]))
    assert 1 not in tracker.active_ids
    assert tracker.update(np.vstack([_faces(8), [newcomer]])).tolist() == [0, 3, 2]


def test_tracker_handles_empty_frames():
    tracker = Tracker(max_missed=0)
    tracker.update(_faces(0))
    assert tracker.update(np.zeros((0, 4))).shape == (0,)
    assert tracker.active_ids == frozenset()


def test_smoother_weight_follows_the_half_life_not_the_frame_count():
    s = Smoother(1.0)
    assert s.update([7], [[0.0]], t=0.0).tolist() == [[0.0]]  # first sight: the value itself
    assert s.update([7], [[1.0]], t=1.0)[0, 0] == pytest.approx(0.5)  # one half-life: halfway
    a, b = Smoother(1.0), Smoother(1.0)
    a.update([0], [[0.0]], 0.0)
    b.update([0], [[0.0]], 0.0)
    one_step = a.update([0], [[1.0]], 2.0)
    b.update([0], [[1.0]], 1.0)
    two_steps = b.update([0], [[1.0]], 2.0)
    np.testing.assert_allclose(one_step, two_steps)
    np.testing.assert_allclose(one_step, [[0.75]])


def test_smoother_keeps_probabilities_summing_to_one_and_tracks_apart():
    rng = np.random.default_rng(0)
    s = Smoother(0.5)
    for t in range(20):
        p = rng.dirichlet(np.ones(7), size=2)
        out = s.update([3, 9], p, t * 0.1)
        np.testing.assert_allclose(out.sum(1), 1.0)
    # A track's average does not leak into another's.
    fresh = s.update([42], [[1, 0, 0, 0, 0, 0, 0]], 2.0)
    np.testing.assert_allclose(fresh, [[1, 0, 0, 0, 0, 0, 0]])


def test_smoother_stops_age_flicker_and_zero_half_life_passes_values_through():
    ages = [20.0, 40.0] * 10  # a noisy model: 20, 40, 20, ... every 0.1 s
    smooth, raw = Smoother([2.0]), Smoother([0.0])
    smoothed = [smooth.update([0], [[a]], 0.1 * i)[0, 0] for i, a in enumerate(ages)]
    passed = [raw.update([0], [[a]], 0.1 * i)[0, 0] for i, a in enumerate(ages)]
    assert passed == ages
    assert max(smoothed) - min(smoothed) < 8.0
    assert max(np.abs(np.diff(smoothed))) < 1.0


def test_smoother_per_column_half_lives_and_retain():
    s = Smoother([0.0, 1.0])
    s.update([1, 2], [[0.0, 0.0], [5.0, 5.0]], 0.0)
    out = s.update([1], [[1.0, 1.0]], 1.0)
    np.testing.assert_allclose(out, [[1.0, 0.5]])
    s.retain([1])
    assert len(s) == 1
    assert s.update([2], [[9.0, 9.0]], 1.0).tolist() == [[9.0, 9.0]]


@pytest.mark.parametrize("half", [-1.0, [1.0, float("nan")], [[1.0]]])
def test_smoother_rejects_bad_half_lives(half):
    with pytest.raises(ValueError, match="half_life"):
        Smoother(half)


def test_smoother_rejects_mismatched_values():
    s = Smoother([1.0, 1.0])
    with pytest.raises(ValueError, match="columns"):
        s.update([0], [[1.0, 2.0, 3.0]], 0.0)
    with pytest.raises(ValueError, match="one row per id"):
        s.update([0, 1], [[1.0, 2.0]], 0.0)
