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


def _variable_rate_mp4(tmp_path, slow: int = 60, fast: int = 60) -> str:
    """An mp4v MP4 whose time-to-sample table says frames 0..slow-1 last 1/10 s and the next ``fast``
    1/30 s (OpenCV writes one rate; the 'stts' box is rewritten); frame i shows i in binary, as black
    and white stripes (``_frame_number``)."""
    import struct

    import cv2
    import numpy as np

    path = tmp_path / "vfr.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (112, 64))
    for i in range(slow + fast):
        writer.write(np.repeat(np.array([[255 * ((i >> b) & 1) for b in range(7)]], np.uint8), 16, 1)
                     .repeat(64, 0)[..., None].repeat(3, 2))
    writer.release()
    data = bytearray(path.read_bytes())
    parents, pos, end = [], 0, len(data)
    while True:  # down moov/trak/mdia/minf/stbl to stts (OpenCV writes one track, moov after mdat)
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"stts":
            break
        if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
            parents.append(pos)
            pos, end = pos + 8, pos + size
        else:
            pos += size
            assert pos < end
    mdhd = bytes(data).index(b"mdhd") - 4
    timescale = struct.unpack(">I", data[mdhd + 20:mdhd + 24])[0]
    body = struct.pack(">IIIIII", 0, 2, slow, timescale // 10, fast, timescale // 30)
    box = struct.pack(">I4s", 8 + len(body), b"stts") + body
    grow = len(box) - size
    data[pos:pos + size] = box
    for parent in parents:
        data[parent:parent + 4] = struct.pack(">I", struct.unpack(">I", data[parent:parent + 4])[0] + grow)
    path.write_bytes(bytes(data))
    return str(path)


def _frame_number(rgb) -> int:
    return sum(1 << b for b in range(7) if rgb[:, 16 * b + 4:16 * b + 12].mean() > 127)


def test_only_a_constant_frame_rate_is_split(tmp_path):
    assert video.constant_frame_rate(str(write_video(tmp_path / "v.mp4", 20)))
    assert video.constant_frame_rate(str(write_video(tmp_path / "v.avi", 20, fourcc="MJPG")))
    vfr = _variable_rate_mp4(tmp_path)
    assert not video.constant_frame_rate(vfr)
    (tmp_path / "t.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 16)  # no moov
    assert not video.constant_frame_rate(str(tmp_path / "t.mp4"))
    assert not video.constant_frame_rate(str(tmp_path / "missing.mp4"))


def test_ranges_of_a_variable_rate_video_read_the_frames_of_the_whole(tmp_path):
    # A seek goes to index / rate seconds, which in a variable-rate stream is another frame: ranges
    # read from the start instead, so every frame keeps its index and none is read twice.
    path = _variable_rate_mp4(tmp_path)
    info = video.probe_video(path)
    whole = [(i, t, _frame_number(rgb)) for i, t, rgb in video.read_frames(path, info.fps, 0, 0)]
    assert [k for _, _, k in whole] == list(range(120)) and [i for i, _, _ in whole] == list(range(120))
    assert whole[60][1] == pytest.approx(6.0, abs=0.01) and whole[90][1] == pytest.approx(7.0, abs=0.01)
    parts = [(i, t, _frame_number(rgb)) for s, e in video.split_ranges(120, 40)
             for i, t, rgb in video.read_frames(path, info.fps, 0, 0, s, e)]
    assert parts == whole


def test_a_variable_rate_video_is_sampled_evenly_in_time(tmp_path):
    # 60 frames at 10/s, then 60 at 30/s: 8 s, an average of 15/s. By index at that rate, one sample a
    # second came at 0, 1.5, 3, 4.5, 6, 6.5, 7, 7.5 s; by the frames' own times it comes each second.
    path = _variable_rate_mp4(tmp_path)
    info = video.probe_video(path)
    # (the clip's 1/30 s is 341/10240 s: frame 90 starts at 6.999 s, in the seventh second, and 91 at 7.032 s)
    got = [(i, t, _frame_number(rgb)) for i, t, rgb in video.read_frames(path, info.fps, 1.0, 0)]
    assert [i for i, _, _ in got] == [0, 10, 20, 30, 40, 50, 60, 91]
    assert [t for _, t, _ in got] == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7], abs=0.04)
    assert [k for _, _, k in got] == [i for i, _, _ in got]
    capped = [i for i, _, _ in video.read_frames(path, info.fps, 1.0, 3)]  # --max_frames_per_video 3
    assert capped == [0, 10, 20]
    later = [i for i, _, _ in video.read_frames(path, info.fps, 1.0, 0, start=45)]  # a range walks from 0
    assert later == [50, 60, 91]
    # a constant-rate video is sampled by index, as its ranges are
    cfr = str(write_video(tmp_path / "cfr.mp4", 30, fps=10.0))
    assert [i for i, _, _ in video.read_frames(cfr, 10.0, 2.0, 0)] == [0, 5, 10, 15, 20, 25]


def test_frames_over_max_pixels_are_refused_before_decoding(tmp_path):
    import struct

    # A 35-byte GIF whose screen is 12000x12000: FFmpeg would decode 430 MB per frame.
    gif = (b"GIF89a" + struct.pack("<HHBBB", 12000, 12000, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
           + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00\x3b")
    (tmp_path / "bomb.gif").write_bytes(gif)
    with pytest.raises(video.VideoError, match=r"frames of 12000x12000 pixels exceed --max_pixels=100000000"):
        video.probe_video(str(tmp_path / "bomb.gif"), 100_000_000)
    small = str(write_video(tmp_path / "v.mp4", 5, size=(96, 64)))
    assert video.probe_video(small, 96 * 64).width == 96
    with pytest.raises(video.VideoError, match="96x64 pixels exceed --max_pixels=6143"):
        video.probe_video(small, 96 * 64 - 1)


def test_a_high_speed_clip_keeps_its_rate_and_is_not_called_truncated(tmp_path):
    # 400 frames at 2000/s last 0.2 s; the rate is measured from the frames' own times.
    path = str(write_video(tmp_path / "fast.mp4", 400, fps=2000.0))
    info = video.probe_video(path)
    assert info.fps == pytest.approx(2000.0) and info.declared_fps == pytest.approx(2000.0)
    got = list(video.read_frames(path, info.fps, 100.0, 0, declared=info.frame_count, declared_fps=info.declared_fps))
    assert [i for i, _, _ in got] == list(range(0, 400, 20))


def test_truncation_counts_the_declared_frames_at_the_containers_rate():
    # A container reporting 1000/s (a time base) declares 20000 frames for 20 s; read at 25/s: 500 frames.
    assert video.truncation(500, 20000, 25.0, reached_s=19.96, declared_fps=1000.0) is None
    assert "(20.0 s) its container declares" in video.truncation(250, 20000, 25.0, reached_s=9.96, declared_fps=1000.0)


def test_the_planner_splits_constant_rate_videos_and_refuses_oversized_frames(tmp_path):
    from transforms.records import SourceTask
    from transforms.sources import Listed, ReadOptions, _PlanTasksFn

    def plan(path, **options):
        fn = _PlanTasksFn(ReadOptions(video_chunk_seconds=2.0, **options))
        return [(out.tag, out.value) if hasattr(out, "tag") else out
                for out in fn.process(Listed(str(path), 1 << 30))]

    def ranges(path):
        return [(t.start_frame, t.end_frame) for t in plan(path) if isinstance(t, SourceTask)]

    assert ranges(write_video(tmp_path / "cfr.mp4", 60, fps=10.0)) == [(0, 20), (20, 40), (40, None)]
    assert ranges(_variable_rate_mp4(tmp_path)) == [(0, None)]
    task = next(t for t in plan(write_video(tmp_path / "cfr.mp4", 60, fps=10.0)) if isinstance(t, SourceTask))
    assert task.declared_frames == 60 and task.declared_fps == pytest.approx(10.0)
    failed = [v for out in plan(tmp_path / "cfr.mp4", max_pixels=1000) if isinstance(out, tuple)
              for tag, v in [out] if tag == "failed"]
    assert [(e.stage, e.error) for e in failed] == [
        ("decode", "VideoError: frames of 96x64 pixels exceed --max_pixels=1000; refused before decoding "
                   "(raise the limit to read it)")]


def test_mp4_writer_scales_oversized_frames_counts_and_refuses_an_unwritable_path(tmp_path):
    import cv2
    import numpy as np

    path = tmp_path / "new" / "clip.mp4"
    with video.Mp4Writer(str(path), 10.0) as writer:
        assert not path.exists()  # nothing is made before the first frame
        writer.write(np.full((20, 5000, 3), 90, np.uint8), times=2)
        writer.write(np.full((20, 5000, 3), 90, np.uint8))
    writer.close()  # a second close does nothing
    assert writer.frames == 3
    clip = cv2.VideoCapture(str(path))
    assert clip.get(cv2.CAP_PROP_FRAME_WIDTH) == video.MAX_VIDEO_SIDE and clip.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    clip.release()
    (tmp_path / "taken.mp4").mkdir()
    with pytest.raises(video.VideoError, match="cannot write a 8x6 mp4v video"):
        with video.Mp4Writer(str(tmp_path / "taken.mp4"), 10.0) as writer:
            writer.write(np.zeros((6, 8, 3), np.uint8))
