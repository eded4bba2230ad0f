"""Tier 1: video sampling and splitting (generated clips, no Beam)."""

from __future__ import annotations

import pytest

from tests.conftest import write_video
from transforms import video


def test_sampling_one_per_second():
    sampled = [i for i in range(100) if video.is_sampled(i, 25.0, 1.0)]
    assert sampled == [0, 25, 50, 75]


def test_sampling_all_frames_when_rate_exceeds_fps():
    assert all(video.is_sampled(i, 10.0, 0) for i in range(20))
    assert all(video.is_sampled(i, 10.0, 30.0) for i in range(20))


def test_sampling_fractional_fps():
    sampled = [i for i in range(60) if video.is_sampled(i, 16.7, 2.0)]
    assert sampled[:4] == [0, 9, 17, 26]
    assert len(sampled) == len(set(video.sample_slot(i, 16.7, 2.0) for i in range(60)))


def test_split_ranges():
    assert video.split_ranges(0, 10) == [(0, None)]
    assert video.split_ranges(10, 10) == [(0, None)]
    # the last range is open: frames past the declared count are read too
    assert video.split_ranges(25, 10) == [(0, 10), (10, 20), (20, None)]
    # capped: a small file declaring two billion frames is one range, not millions
    assert video.split_ranges(2_000_000_000, 25, max_ranges=1) == [(0, None)]
    assert video.split_ranges(100, 10, max_ranges=4) == [(0, 25), (25, 50), (50, 75), (75, None)]


def test_truncation_tolerates_estimated_counts():
    assert video.truncation(37, 112, 25.0) is not None and "37 frames" in video.truncation(37, 112, 25.0)
    assert video.truncation(100, 112, 25.0) is None  # 12 frames short: under 2 s
    assert video.truncation(37, 0, 25.0) is None  # count unknown
    # a variable-rate stream whose count was estimated at a nominal 60/s: 300 frames reach its 10 s
    assert video.truncation(300, 600, 60.0, reached_s=9.97) is None
    assert video.truncation(300, 600, 60.0, reached_s=5.0) is not None


def test_read_frames_timestamps_and_ranges_agree(tmp_path):
    path = str(write_video(tmp_path / "v.mp4", frames=50, fps=10.0))
    info = video.probe_video(path)
    assert info.fps == pytest.approx(10.0) and info.frame_count == 50 and (info.width, info.height) == (96, 64)
    whole = [(i, t) for i, t, _ in video.read_frames(path, info.fps, 2.0, 0)]
    assert whole == [(i, i / 10.0) for i in range(0, 50, 5)]
    parts = []
    for start, end in video.split_ranges(info.frame_count, 12):
        parts += [(i, t) for i, t, _ in video.read_frames(path, info.fps, 2.0, 0, start, end)]
    assert parts == whole
    # the frame content is the frame's own (brightness = 2 * index)
    for i, _, rgb in video.read_frames(path, info.fps, 2.0, 0, 20, 30):
        assert abs(float(rgb.mean()) - 2 * i) < 4


def test_read_frames_cap(tmp_path):
    path = str(write_video(tmp_path / "v.mp4", frames=50, fps=10.0))
    assert [i for i, _, _ in video.read_frames(path, 10.0, 1.0, 3)] == [0, 10, 20]
    assert [i for i, _, _ in video.read_frames(path, 10.0, 1.0, 3, 15, 50)] == [20]


def test_not_a_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(video.VideoError):
        video.probe_video(str(bad))


def _cut_avi(tmp_path, frames: int, keep: float) -> str:
    """An MJPG AVI of ``frames`` frames at 25/s, cut to the first ``keep`` of its bytes (its header
    still declares all of them)."""
    path = write_video(tmp_path / f"clip-{keep}.avi", frames, fps=25.0, fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return str(path)


def test_a_truncated_video_is_an_error_not_a_short_video(tmp_path):
    path = _cut_avi(tmp_path, 150, 0.4)
    info = video.probe_video(path)
    assert info.frame_count == 150
    with pytest.raises(video.VideoError, match="truncated video: the stream ends after"):
        list(video.read_frames(path, info.fps, 1.0, 0, declared=info.frame_count))
    # split into ranges: the one before the cut reads; the one it falls in and the one after it fail
    first, *rest = video.split_ranges(info.frame_count, 50)
    assert len(list(video.read_frames(path, info.fps, 1.0, 0, *first, declared=info.frame_count))) == 2
    for start, end in rest:
        with pytest.raises(video.VideoError, match="truncated video"):
            list(video.read_frames(path, info.fps, 1.0, 0, start, end, declared=info.frame_count))
    # the whole file reads
    whole = _cut_avi(tmp_path, 150, 1.0)
    assert len(list(video.read_frames(whole, 25.0, 1.0, 0, declared=150))) == 6


def test_timestamps_are_the_frames_own_with_a_variable_frame_rate(tmp_path):
    import numpy as np
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 48, 3), 10 * i, np.uint8)) for i in range(8)]
    path = str(tmp_path / "vfr.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[100] * 4 + [1000] * 4, loop=0)
    info = video.probe_video(path)
    stamps = [t for _, t, _ in video.read_frames(path, info.fps, 0, 0)]
    assert stamps == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 1.4, 2.4, 3.4])
    parts = [t for s, e in video.split_ranges(info.frame_count, 3) for _, t, _ in video.read_frames(path, info.fps, 0, 0, s, e)]
    assert parts == stamps
