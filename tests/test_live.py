"""Live mode: pure pieces, the frame loop with test doubles, and a headless run on the bundled clip."""

from __future__ import annotations

import contextlib
import io
import os

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from models.handler import FaceAttributes, FaceModelHandler
from pipelines import cli, live
from tests.conftest import EXAMPLES, write_video
from tests.fakes import SPECS, FakeHandler, fake_detector_factory
from transforms import video
from transforms.records import FaceCrop
from transforms.sinks import FACES_SCHEMA

CLIP = EXAMPLES / "clips" / "head-pose-face-detection-female-and-male.gif"
# Small generated faces need the detector's own minimum and no downscaling.
FAKE_OPTIONS = live.LiveOptions(detector="mtcnn", min_face_size=20.0, max_side=0, display=False)


def _read_all(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


# ---- pure pieces ---------------------------------------------------------------------------

def test_parse_source(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert live.parse_source("0") == 0 and live.parse_source(" 12 ") == 12
    assert live.parse_source("rtsp://cam.local/stream") == "rtsp://cam.local/stream"
    assert live.parse_source(str(clip)) == str(clip.resolve())
    with pytest.raises(ValueError, match="camera index"):
        live.parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="empty"):
        live.parse_source("  ")


def test_live_sources_and_uris(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert live.is_live_source(0) and live.is_live_source("http://host/cam.mjpg")
    assert not live.is_live_source(str(clip)) and not live.is_live_source("file:///x.mp4")
    assert live.source_uri(1) == "camera:1" and live.source_uri(str(clip)) == str(clip)


def test_display_detection():
    assert not live.display_available({}, "linux")
    assert live.display_available({"DISPLAY": ":0"}, "linux")
    assert live.display_available({"WAYLAND_DISPLAY": "wayland-0"}, "linux")
    assert live.display_available({}, "win32") and live.display_available({}, "darwin")


def test_every_flag_has_help_and_command_is_registered():
    parser = live.build_parser()
    for action in parser._actions:
        assert action.help, f"{action.dest} has no help"
    assert cli.COMMANDS["live"][0] == "pipelines.live"
    args = parser.parse_args(["--source", "0", "--no_display", "--every", "1"])
    opts = live.options_from_args(args)
    assert not opts.display and opts.max_side == 640 and opts.record is None


def test_latest_frame_keeps_only_the_newest():
    slot = live.LatestFrame()
    for i in range(3):
        slot.put(i)
    assert slot.take() == 2 and slot.dropped == 2
    assert slot.take(timeout=0.01) is None  # empty: times out
    slot.put(3)
    slot.close()
    assert slot.take() == 3  # what was put before closing still arrives
    assert slot.take() is None


def _attrs(top: int, age: float, p_female: float) -> FaceAttributes:
    probs = np.full(7, 0.05, np.float32)
    probs[top] = 0.7
    return FaceAttributes(probs, age, p_female)


def test_label_text():
    assert live.label_text(4, _attrs(3, 25.0, 0.8)) == "#4 happy | 20-29 | female"
    assert live.label_text(0, _attrs(6, 71.0, 0.2)) == "#0 neutral | 70+ | male"


def _face(box) -> FaceCrop:
    return FaceCrop("u", "video", 0, 0.0, 0, tuple(box), 200, 120, "mtcnn", 0.99, None, None)


def test_draw_faces_outlines_the_box_and_leaves_the_rest():
    image = np.full((120, 200, 3), 128, np.uint8)
    out = live.draw_faces(image.copy(), [live.LiveFace(0, _face((60, 40, 120, 100)), _attrs(3, 30, 0.1))])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[70, 60]) == (0, 255, 0) and tuple(out[100, 90]) == (0, 255, 0)  # left and bottom edges
    assert np.array_equal(out[105:, :50], image[105:, :50])  # far from the box and its label
    assert np.array_equal(out[50:90, 70:110], image[50:90, 70:110])  # inside the face


@pytest.mark.parametrize("argv, message", [
    (["--source", "/nonexistent/clip.mp4"], "not a camera index"),
    (["--source", "0", "--every", "2"], "--every applies to video files"),
    (["--source", str(CLIP), "--record", "out.avi"], ".mp4"),
    (["--source", str(CLIP), "--every", "0"], "--every must be >= 1"),
    (["--source", str(CLIP), "--log", str(CLIP.parent)], "is a directory"),
    (["--source", str(CLIP), "--min_confidence", "2"], "--min_confidence 2.0 is above 1"),
    (["--source", str(CLIP), "--min_face_size", "nan"], "--min_face_size nan is not a finite number"),
    (["--source", str(CLIP), "--min_face_size", "inf"], "--min_face_size inf is not a finite number"),
    (["--source", str(CLIP), "--max_side", "-1"], "--max_side -1 is below 0"),
])
def test_main_reports_bad_arguments(argv, message, capsys):
    assert live.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--record", "--log"])
@pytest.mark.parametrize("as_url", [False, True])
def test_an_output_that_is_the_source_is_refused(tmp_path, capsys, flag, as_url):
    source = write_video(tmp_path / "clip.mp4", frames=5, fps=10.0)
    before = source.read_bytes()
    given = f"file://{source}" if as_url else str(source)  # FFmpeg reads file: URLs as files
    assert live.main(["--source", given, "--no_display", flag, str(tmp_path / "." / "clip.mp4")]) == 2
    assert "is the source itself" in capsys.readouterr().err
    assert source.read_bytes() == before


def test_the_log_and_the_recording_must_be_two_files(tmp_path, capsys):
    source = write_video(tmp_path / "clip.mp4", frames=5, fps=10.0)
    out = str(tmp_path / "out.mp4")
    assert live.main(["--source", str(source), "--no_display", "--record", out, "--log", out]) == 2
    assert "--log and --record name the same file" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_a_file_name_is_taken_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (" lead.mp4", "trail.mp4 "):
        write_video(tmp_path / "v.mp4", frames=2, fps=10.0).rename(tmp_path / name)
        assert live.parse_source(name) == str(tmp_path / name)
    assert live.parse_source(" 1 ") == 1


# ---- the loop with test doubles (no TensorFlow) ----------------------------------------------

class _FlickerHandler(FakeHandler):
    """A model that cannot make up its mind: age 20 / 40 and P(female) 0.3 / 0.7, alternately per call."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def run_inference(self, batch, model, inference_args=None):
        self.calls += 1
        age, p = (20.0, 0.3) if self.calls % 2 else (40.0, 0.7)
        return [type("R", (), {"inference": _attrs(3, age, p)})() for _ in batch]


@pytest.mark.parametrize("half_life, flickers", [(2.0, False), (0.0, True)])
def test_analyzer_tracks_faces_and_smooths_their_labels(half_life, flickers):
    handler = _FlickerHandler()
    opts = FAKE_OPTIONS._replace(age_half_life_s=half_life)
    analyzer = live.LiveAnalyzer(fake_detector_factory("mtcnn"), handler, handler.load_model(), opts, "u")
    frame = np.full((64, 96, 3), 100, np.uint8)  # the fake detector finds two faces
    labels = set()
    for i in range(10):
        faces = analyzer.analyze(i, i * 0.1, frame)
        assert [f.track_id for f in faces] == [0, 1]
        assert [f.face.face_index for f in faces] == [0, 1] and faces[0].face.crop is None
        labels.update(live.label_text(f.track_id, f.attrs).split(" | ", 1)[1] for f in faces)
    assert (len(labels) > 1) == flickers
    assert analyzer.infer_s >= 0 and analyzer.detect_s >= 0


def test_file_every_n_frames_with_log_in_row_groups(tmp_path):
    # Grey 125 makes the fake detector find two faces, with room for the codec's rounding.
    video = write_video(tmp_path / "v.mp4", frames=10, fps=10.0, brightness=lambda i: 125)
    opts = FAKE_OPTIONS._replace(every=3, log=str(tmp_path / "faces.parquet"), row_group_rows=2)
    handler = FakeHandler()
    stats = live.run_live(str(video), opts, handler=handler, models=handler.load_model(),
                          detector=fake_detector_factory("mtcnn"), run_id="r1")
    assert (stats.frames_read, stats.frames_processed, stats.faces) == (10, 4, 8)
    log = pq.ParquetFile(opts.log)
    assert log.metadata.num_row_groups == 4  # written as it went, one group per analysed frame
    rows = log.read().to_pylist()
    assert [r["frame_index"] for r in rows] == [0, 0, 3, 3, 6, 6, 9, 9]
    assert [r["track_id"] for r in rows] == [0, 1] * 4  # the ids drawn on screen
    assert [r["timestamp_s"] for r in rows] == pytest.approx([0, 0, 0.3, 0.3, 0.6, 0.6, 0.9, 0.9])
    assert {r["run_id"] for r in rows} == {"r1"} and {r["source_type"] for r in rows} == {"video"}
    assert {r["emotion_model"] for r in rows} == {SPECS[0].tag}


def test_sigterm_stops_the_run_with_its_outputs_whole(tmp_path):
    # docker stop, systemctl stop and timeout send SIGTERM: the log lost its footer (unreadable)
    import signal

    video = write_video(tmp_path / "v.mp4", frames=30, fps=10.0, brightness=lambda i: 125)
    opts = FAKE_OPTIONS._replace(record=str(tmp_path / "out.mp4"), log=str(tmp_path / "faces.parquet"),
                                 row_group_rows=1)
    detect, calls = fake_detector_factory("mtcnn"), []

    def detector(rgb):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return detect(rgb)

    detector.min_face = detect.min_face
    handler = FakeHandler()
    unheard = []  # where the signal goes unless the run takes it (the default would end pytest)

    def mine(*_):
        unheard.append(1)

    before = signal.signal(signal.SIGTERM, mine)
    try:
        stats = live.run_live(str(video), opts, handler=handler, models=handler.load_model(), detector=detector)
        assert not unheard and 0 < stats.frames_processed < 30
        assert signal.getsignal(signal.SIGTERM) is mine  # put back after the run
    finally:
        signal.signal(signal.SIGTERM, before)
    assert {r["frame_index"] for r in pq.read_table(opts.log).to_pylist()} == set(range(stats.frames_processed))
    assert len(_read_all(opts.record)) == stats.frames_processed  # the frame it stopped in is not drawn


def test_a_recording_of_frames_too_wide_for_the_encoder_is_scaled_down(tmp_path):
    video = write_video(tmp_path / "wide.avi", frames=3, fps=10.0, size=(8640, 64), fourcc="MJPG")
    opts = FAKE_OPTIONS._replace(record=str(tmp_path / "out.mp4"))
    handler = FakeHandler()
    live.run_live(str(video), opts, handler=handler, models=handler.load_model(),
                  detector=fake_detector_factory("mtcnn"))
    frames = _read_all(opts.record)
    assert len(frames) == 3 and frames[0].shape[:2] == (30, 4096)


def test_live_reading_drops_nothing_it_records(tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=12, fps=10.0, brightness=lambda i: 125)
    opts = FAKE_OPTIONS._replace(record=str(tmp_path / "out.mp4"), log=str(tmp_path / "faces.parquet"))
    handler = FakeHandler()
    stats = live.run_live(str(video), opts, handler=handler, models=handler.load_model(),
                          detector=fake_detector_factory("mtcnn"), live=True)
    # How many frames get analysed depends on speed; the newest frame always does, and the
    # recording stands for every frame read, keeping the source's timing.
    assert stats.frames_read == 12 and 1 <= stats.frames_processed <= 12
    assert len(_read_all(opts.record)) == 12
    indices = sorted({r["frame_index"] for r in pq.read_table(opts.log).to_pylist()})
    assert len(indices) == stats.frames_processed and indices[-1] == 11


def test_a_face_that_moves_between_sampled_frames_keeps_its_track():
    """With --every (or frames a live source dropped), a face can move out of its old box's overlap;
    it is linked by nearness, as analyze links sampled frames."""
    handler = FakeHandler()
    analyzer = live.LiveAnalyzer(lambda rgb: [], handler, handler.load_model(), FAKE_OPTIONS, "u")
    tracker_ids = [analyzer._tracker.update(np.array([[x, 10.0, x + 40, 50.0]]))[0] for x in (10.0, 35.0, 60.0)]
    assert tracker_ids == [0, 0, 0]  # IoU 0.23 between steps: below min_iou 0.3, within 0.75 widths


def test_a_damaged_file_is_read_up_to_the_damage_and_said_so(tmp_path, monkeypatch, capsys):
    path = write_video(tmp_path / "clip.avi", 150, fps=25.0, fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.4)])  # its header still declares 150 frames
    handler = FakeHandler()
    stats = live.run_live(str(path), FAKE_OPTIONS, handler=handler, models=handler.load_model(),
                          detector=fake_detector_factory("mtcnn"))
    assert 0 < stats.frames_read < 150 and "truncated video" in stats.problem
    monkeypatch.setattr(live, "FaceModelHandler", lambda *a, **k: handler)
    monkeypatch.setattr(live, "make_detector", fake_detector_factory)
    assert live.main(["--source", str(path), "--no_display"]) == 1
    assert "the source is damaged: truncated video" in capsys.readouterr().err


def test_a_video_file_served_over_http_is_read_as_a_file(tmp_path):
    import functools
    import http.server
    import threading

    clip = write_video(tmp_path / "v.avi", frames=12, fps=10.0, brightness=lambda i: 125, fourcc="MJPG")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v.avi"
        opts = FAKE_OPTIONS._replace(every=3, log=str(tmp_path / "faces.parquet"))
        handler = FakeHandler()
        stats = live.run_live(url, opts, handler=handler, models=handler.load_model(),
                              detector=fake_detector_factory("mtcnn"))
    finally:
        server.shutdown()
    # Every frame read in order and every third analysed, at the file's own times.
    assert (stats.frames_read, stats.frames_processed) == (12, 4)
    rows = pq.read_table(opts.log).to_pylist()
    frames = sorted({(r["frame_index"], r["timestamp_s"]) for r in rows})
    assert [i for i, _ in frames] == [0, 3, 6, 9]
    assert [t for _, t in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_a_source_without_frames_leaves_an_earlier_log_as_it_was(tmp_path, monkeypatch):
    class NoFrames:  # opens, and gives no frame (a stream that never starts, a file cut after its header)
        def isOpened(self):
            return True

        def grab(self):
            return False

        def read(self):
            return False, None

        def get(self, prop):
            return 0.0

        def release(self):
            pass

    video = write_video(tmp_path / "v.mp4", frames=3, fps=10.0)
    log = tmp_path / "live" / "faces-v.parquet"
    log.parent.mkdir()
    log.write_bytes(b"an earlier run's log")
    monkeypatch.setattr(live, "_open_capture", lambda source: NoFrames())
    handler = FakeHandler()
    with pytest.raises(ValueError, match="no frame could be read"):
        live.run_live(str(video), FAKE_OPTIONS._replace(log=str(log)), handler=handler, models=handler.load_model(),
                      detector=fake_detector_factory("mtcnn"))
    assert log.read_bytes() == b"an earlier run's log" and os.listdir(log.parent) == ["faces-v.parquet"]


def test_unreadable_source_is_a_value_error(tmp_path):
    bad = tmp_path / "not-a-video.mp4"
    bad.write_text("hello")
    with pytest.raises(ValueError):
        live.run_live(str(bad), FAKE_OPTIONS, handler=FakeHandler(), models=object(),
                      detector=fake_detector_factory("mtcnn"))


# ---- the real detector and models on the bundled clip ------------------------------------------

@pytest.fixture(scope="module")
def clip_run(loaded_models, tmp_path_factory):
    """A headless MTCNN run over the first 8 frames of the bundled clip, recording and logging."""
    handler, models = loaded_models
    out = tmp_path_factory.mktemp("live")
    opts = live.LiveOptions(detector="mtcnn", max_frames=8, display=False,
                            record=str(out / "out.mp4"), log=str(out / "out.parquet"))
    stats = live.run_live(live.parse_source(str(CLIP)), opts, handler=handler, models=models, run_id="clip")
    return stats, opts


def test_clip_run_counts(clip_run):
    stats, _ = clip_run
    assert (stats.frames_read, stats.frames_processed) == (8, 8)
    assert stats.faces >= 8 and stats.fps > 0


def test_clip_recording_has_every_frame_with_boxes_drawn(clip_run):
    _, opts = clip_run
    recorded = _read_all(opts.record)
    source = _read_all(CLIP)[:8]
    assert len(recorded) == 8
    assert all(f.shape == (270, 480, 3) for f in recorded)
    cap = cv2.VideoCapture(opts.record)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.5, rel=0.01)
    cap.release()
    rows = pq.read_table(opts.log).to_pylist()
    assert rows
    for row in rows:
        k = row["frame_index"]
        diff = np.abs(recorded[k].astype(np.int16) - source[k].astype(np.int16)).max(axis=2)
        outline = np.zeros(diff.shape, bool)
        x1, y1, x2, y2 = (int(round(row[c])) for c in ("x1", "y1", "x2", "y2"))
        outline[y1:y2 + 1, [x1, x2]] = True
        outline[[y1, y2], x1:x2 + 1] = True
        # The box outline is overlaid; the frame as a whole is still the source frame.
        assert diff[outline].mean() > 60, f"no box drawn in frame {k}"
        assert np.median(diff) < 10


def test_clip_log_has_the_faces_schema_and_increasing_timestamps(clip_run):
    _, opts = clip_run
    table = pq.read_table(opts.log)
    assert table.schema.equals(FACES_SCHEMA)
    rows = table.to_pylist()
    frames = [r["frame_index"] for r in rows]
    assert frames == sorted(frames) and set(frames) <= set(range(8))
    stamps = [r["timestamp_s"] for r in rows]
    assert all(a < b for a, b in zip(stamps, stamps[1:]) if a != b) and stamps == sorted(stamps)
    assert len(set(stamps)) == len(set(frames)) > 1
    # Each frame's own time, as analyze reads it (the GIF's frame delays vary).
    info = video.probe_video(str(CLIP))
    times = {i: t for i, t, _ in video.read_frames(str(CLIP), info.fps, 0, 8)}
    assert len(set(round(b - a, 3) for a, b in zip(list(times.values()), list(times.values())[1:]))) > 1
    for r in rows:
        assert r["timestamp_s"] == pytest.approx(times[r["frame_index"]])
        assert r["source_uri"] == str(CLIP.resolve()) and r["source_type"] == "video" and r["run_id"] == "clip"
        assert 0 <= r["x1"] < r["x2"] <= 480 and 0 <= r["y1"] < r["y2"] <= 270
        assert len(r["landmarks"]) == 10 and r["detector"] == "mtcnn"


def test_main_prints_the_summary(loaded_models, tmp_path, monkeypatch):
    _, models = loaded_models
    # The models of the session, not a second load.
    monkeypatch.setattr(FaceModelHandler, "load_model", lambda self: models)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(["live", "--source", str(CLIP), "--detector", "haar", "--max_frames", "3",
                           "--no_display", "--log", str(tmp_path / "faces.parquet")])
    assert status == 0
    text = printed.getvalue()
    assert "frames read 3, processed 3" in text and "fps" in text
    assert os.path.isfile(tmp_path / "faces.parquet")


def test_main_tta_reaches_the_models(loaded_models, tmp_path, monkeypatch):
    """``--tta flip`` scores the same faces with their mirror images averaged in: other probabilities."""
    _, models = loaded_models
    monkeypatch.setattr(FaceModelHandler, "load_model", lambda self: models)
    rows = {}
    for tta in ("none", "flip"):
        log = tmp_path / f"{tta}.parquet"
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["live", "--source", str(CLIP), "--detector", "haar", "--max_frames", "2", "--no_display",
                             "--emotion_half_life", "0", "--age_half_life", "0", "--tta", tta,
                             "--log", str(log)]) == 0
        rows[tta] = pq.read_table(log).to_pylist()
    assert len(rows["none"]) == len(rows["flip"]) > 0
    for plain, flipped in zip(rows["none"], rows["flip"]):
        assert [plain[k] for k in ("frame_index", "x1", "y1", "x2", "y2")] == \
            [flipped[k] for k in ("frame_index", "x1", "y1", "x2", "y2")]
        assert plain["p_neutral"] != pytest.approx(flipped["p_neutral"], abs=1e-4)
        assert plain["age"] != pytest.approx(flipped["age"], abs=1e-3)
