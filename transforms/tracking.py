"""Face tracks across frames and temporal smoothing of per-face values (pure numpy).

Boxes are ``[x1, y1, x2, y2]`` float pixels, stacked as (N, 4) arrays. A ``Tracker`` links the
boxes of consecutive frames by overlap (intersection over union) and gives each face a stable
integer id; a ``Smoother`` keeps an exponential moving average of a value vector per id (e.g.
emotion probabilities, age, P(female)) so that labels drawn on a video do not flicker.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["as_boxes", "iou_matrix", "match_boxes", "Track", "Tracker", "Smoother", "MAX_SHIFT"]


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as a float64 (N, 4) array of ``[x1, y1, x2, y2]``; raises ValueError otherwise."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) array of [x1, y1, x2, y2], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("boxes hold NaN or infinite coordinates")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ValueError("boxes must have x2 >= x1 and y2 >= y1 ([x1, y1, x2, y2] order)")
    return arr


def iou_matrix(a, b) -> np.ndarray:
    """(N, M) float64 intersection over union of the boxes ``a`` (N, 4) and ``b`` (M, 4).

    Boxes of zero area overlap nothing (IoU 0).
    """
    a, b = as_boxes(a), as_boxes(b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(prev_boxes, boxes, min_iou: float = 0.3) -> np.ndarray:
    """For each box in ``boxes`` (M, 4), the index of its match in ``prev_boxes`` (N, 4), or -1.

    Greedy one-to-one matching: the pair with the highest IoU is linked first, then the next
    highest among the boxes still free, until no pair reaches ``min_iou``. Ties go to the lower
    indices, so the result is deterministic. Returns an int64 array of shape (M,).
    """
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    iou = iou_matrix(prev_boxes, boxes)
    matches = np.full(iou.shape[1], -1, np.int64)
    if iou.size == 0:
        return matches
    used_prev = np.zeros(iou.shape[0], bool)
    order = np.argsort(-iou, axis=None, kind="stable")
    for flat in order:
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < min_iou:
            break
        if used_prev[i] or matches[j] >= 0:
            continue
        used_prev[i] = True
        matches[j] = i
    return matches


class Track(NamedTuple):
    """One followed face: ``box`` float64 (4,) ``[x1, y1, x2, y2]`` where it was last seen, and the
    number of updates since then (``missed``, 0 when seen in the latest frame)."""

    track_id: int
    box: np.ndarray
    missed: int


# How far (in face widths) a face unmatched by overlap may move between two sampled frames and keep
# its track: sampled frames of a video can be a second apart (``analyze``, ``live --every``).
MAX_SHIFT = 0.75


class Tracker:
    """Assigns stable integer ids to boxes across consecutive frames.

    Each ``update`` matches the new boxes to the boxes where the active tracks were last seen
    (``match_boxes``); unmatched boxes start new tracks with fresh ids (0, 1, 2, ...); a track not
    seen for more than ``max_missed`` updates ends, so a face lost for a frame or two (a blink of the
    detector) keeps its id.
    """

    def __init__(self, min_iou: float = 0.3, max_missed: int = 5, max_shift: float = 0.0):
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self._min_iou = min_iou
        self._max_missed = max_missed
        self._max_shift = max_shift
        self._tracks: list[Track] = []
        self._next_id = 0

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The active tracks, oldest first."""
        return tuple(self._tracks)

    @property
    def active_ids(self) -> frozenset[int]:
        return frozenset(t.track_id for t in self._tracks)

    def update(self, boxes) -> np.ndarray:
        """Track ids (int64, shape (M,)) of the ``boxes`` (M, 4) of the next frame, in their order."""
        boxes = as_boxes(boxes)
        prev = np.array([t.box for t in self._tracks], np.float64).reshape(-1, 4)
        matches = match_boxes(prev, boxes, self._min_iou)
        if self._max_shift > 0:
            matches = _match_leftovers_by_centre(prev, boxes, matches, self._max_shift)
        ids = np.empty(len(boxes), np.int64)
        seen = set()
        new_tracks = []
        for j, i in enumerate(matches):
            if i >= 0:
                ids[j] = self._tracks[i].track_id
                seen.add(int(i))
            else:
                ids[j] = self._next_id
                self._next_id += 1
            new_tracks.append(Track(int(ids[j]), boxes[j].copy(), 0))
        # Tracks not seen this time live on (at their last box) until they exceed max_missed.
        kept = [t._replace(missed=t.missed + 1) for i, t in enumerate(self._tracks)
                if i not in seen and t.missed < self._max_missed]
        self._tracks = sorted(kept + new_tracks, key=lambda t: t.track_id)
        return ids


def _match_leftovers_by_centre(prev: np.ndarray, boxes: np.ndarray, matches: np.ndarray,
                               max_shift: float) -> np.ndarray:
    """Second pass for sparsely sampled video: links boxes left unmatched by overlap to free tracks
    whose centre is within ``max_shift`` box widths and whose size is within a factor 1.5,
    nearest first. Returns a new (M,) match array."""
    matches = matches.copy()
    free_prev = [i for i in range(len(prev)) if i not in set(matches.tolist())]
    free_new = [j for j in range(len(boxes)) if matches[j] < 0]
    pairs = []
    for i in free_prev:
        for j in free_new:
            a, b = prev[i], boxes[j]
            wa, wb = a[2] - a[0], b[2] - b[0]
            if min(wa, wb) <= 0 or max(wa, wb) > 1.5 * min(wa, wb):
                continue
            shift = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / ((wa + wb) / 2)
            if shift <= max_shift:
                pairs.append((shift, i, j))
    used = set()
    for _, i, j in sorted(pairs):
        if i not in used and matches[j] < 0:
            matches[j] = i
            used.add(i)
    return matches


class Smoother:
    """Exponential moving average of a value vector per track id, with half-lives in seconds.

    An observation ``x`` at time ``t`` moves a track's average ``m`` (seen last at ``t0``) to
    ``m + w (x - m)`` with ``w = 1 - 0.5 ** ((t - t0) / half_life)``: the weight depends on the time
    elapsed, not on the number of frames, so smoothing is the same whatever frames get skipped.
    ``half_life_s`` is one value or one per column of the vectors; 0 means no smoothing. A convex
    combination keeps probability vectors summing to 1.
    """

    def __init__(self, half_life_s):
        half = np.asarray(half_life_s, np.float64)
        if half.ndim > 1 or np.any(half < 0) or not np.all(np.isfinite(half)):
            raise ValueError(f"half_life_s must be one or a vector of finite values >= 0, got {half_life_s!r}")
        self._half = half
        self._state: dict[int, tuple[float, np.ndarray]] = {}

    def weights(self, dt: float) -> np.ndarray:
        """Weight of a new observation ``dt`` seconds after the previous one (per column)."""
        dt = max(float(dt), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = 1.0 - np.power(0.5, dt / self._half)
        return np.where(self._half > 0, w, 1.0)

    def update(self, ids, values, t: float) -> np.ndarray:
        """Smoothed values (float64, (M, D)) for the tracks ``ids`` (M,) observing ``values`` (M, D) at ``t`` s."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        values = np.asarray(values, np.float64)
        if values.ndim != 2 or values.shape[0] != len(ids):
            raise ValueError(
                f"values must be an (M, D) array with one row per id; got {values.shape} for {len(ids)} ids")
        if self._half.ndim == 1 and values.shape[1] != len(self._half):
            raise ValueError(f"values have {values.shape[1]} columns but {len(self._half)} half-lives were given")
        out = np.empty_like(values)
        for k, (track_id, x) in enumerate(zip(ids.tolist(), values)):
            prev = self._state.get(track_id)
            if prev is None:
                mean = x.copy()
            else:
                t0, m = prev
                mean = m + self.weights(t - t0) * (x - m)
            self._state[track_id] = (float(t), mean)
            out[k] = mean
        return out

    def retain(self, ids) -> None:
        """Forgets every track not in ``ids`` (e.g. ``Tracker.active_ids``)."""
        keep = {int(i) for i in ids}
        self._state = {k: v for k, v in self._state.items() if k in keep}

    def __len__(self) -> int:
        return len(self._state)
