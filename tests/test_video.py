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
    assert video.split_ranges(25, 10) == [(0, 10), (10, 20), (20, 25)]


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
