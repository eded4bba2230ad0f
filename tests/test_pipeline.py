"""Tier 2: the whole Beam pipeline with a fake detector and fake models (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.analyze import build
from pipelines.summary import read_table, summarize
from tests.conftest import gradient_image, write_image, write_video
from tests.fakes import SPECS, FakeHandler, fake_detector_factory
from transforms.faces import DetectOptions
from transforms.sinks import RunInfo
from transforms.sources import ReadOptions, ReadSources, expand_inputs

RUN = RunInfo("test-run", SPECS[0].tag, SPECS[1].tag)


def _picture(faces: int, fill: int | None = None, h: int = 60, w: int = 200) -> np.ndarray:
    """A picture on which the fake detector finds ``faces`` faces (5 makes it fail)."""
    rgb = gradient_image(h, w) if fill is None else np.full((h, w, 3), fill, np.uint8)
    rgb[:2, :2] = (faces * 50 + 5, 0, 0)
    return rgb


def _pipeline():
    return TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    d = root / "in"
    (d / "sub").mkdir(parents=True)
    write_image(d / "two faces.png", _picture(2))
    write_image(d / "none.png", _picture(0))
    write_image(d / "sub" / "one-ünïcode.png", _picture(1))
    write_image(d / "explodes.png", _picture(5))
    jpeg = d / "whole.jpg"
    write_image(jpeg, _picture(1))
    (d / "truncated.jpg").write_bytes(jpeg.read_bytes()[:200])
    (d / "text.jpg").write_text("this is not a picture\n" * 20)
    (d / "empty.png").write_bytes(b"")
    (d / "sub" / "readme.txt").write_text("not an input: directories are read for media only")
    # grey 0 (no face) for the first 2.5 s, then grey 60 (the fake detector's one face)
    write_video(d / "clip.mp4", frames=30, fps=10.0, size=(128, 64), brightness=lambda i: 60 if i >= 25 else 0)
    (root / "notes.txt").write_text("named explicitly, so it must be reported")
    return root


@pytest.fixture(scope="module")
def run_output(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    patterns = expand_inputs([str(corpus / "in"), str(corpus / "notes.txt")])
    with _pipeline() as p:
        build(p, patterns, str(out), FakeHandler(), RUN, ReadOptions(video_fps=5.0),
              DetectOptions(min_face_size=10), detector_factory=fake_detector_factory)
    return out


def _sources(out: Path) -> dict[str, dict]:
    return {Path(r["source_uri"]).name: r for r in read_table(str(out), "sources").to_pylist()}


def test_every_input_once_with_its_status(run_output):
    s = _sources(run_output)
    assert sorted(s) == sorted(["two faces.png", "none.png", "one-ünïcode.png", "explodes.png", "whole.jpg",
                                "truncated.jpg", "text.jpg", "empty.png", "clip.mp4", "notes.txt"])
    assert {k: v["status"] for k, v in s.items()} == {
        "two faces.png": "ok", "none.png": "no_face", "one-ünïcode.png": "ok", "explodes.png": "error",
        "whole.jpg": "ok", "truncated.jpg": "error", "text.jpg": "error", "empty.png": "error",
        "clip.mp4": "ok", "notes.txt": "error"}
    assert s["explodes.png"]["stage"] == "detect" and "detector exploded" in s["explodes.png"]["error"]
    assert s["truncated.jpg"]["stage"] == "decode" and "truncated" in s["truncated.jpg"]["error"]
    assert s["text.jpg"]["stage"] == "decode" and "not an image" in s["text.jpg"]["error"]
    assert s["empty.png"]["stage"] == "decode" and "empty" in s["empty.png"]["error"]
    assert s["notes.txt"]["stage"] == "read" and "unsupported file type .txt" in s["notes.txt"]["error"]
    assert (s["two faces.png"]["faces"], s["one-ünïcode.png"]["faces"], s["whole.jpg"]["faces"]) == (2, 1, 1)
    assert all(v["run_id"] == "test-run" for v in s.values())


def test_video_frames_sampled_and_timestamped(run_output):
    s = _sources(run_output)
    assert s["clip.mp4"]["frames"] == 15  # 30 frames at 10 fps sampled at 5 per second
    faces = read_table(str(run_output), "faces").to_pylist()
    clip = sorted((f for f in faces if f["source_uri"].endswith("clip.mp4")), key=lambda f: f["frame_index"])
    # sampled frames 0, 2, ..., 28: a face in those from 2.5 s on
    assert [f["frame_index"] for f in clip] == [26, 28]
    assert [f["timestamp_s"] for f in clip] == pytest.approx([2.6, 2.8])
    assert all(f["source_type"] == "video" for f in clip)


def test_faces_only_for_ok_sources_and_counts_add_up(run_output):
    s = _sources(run_output)
    faces = read_table(str(run_output), "faces").to_pylist()
    ok = {r["source_uri"] for r in s.values() if r["status"] == "ok"}
    assert {f["source_uri"] for f in faces} == ok
    assert len(faces) == sum(r["faces"] for r in s.values())
    summary = summarize(str(run_output))
    assert summary["inputs"] == summary["ok"] + summary["no_face"] + summary["error"] == 10
    assert summary["faces"] == len(faces) == 6
    two = sorted((f for f in faces if f["source_uri"].endswith("two faces.png")), key=lambda f: f["face_index"])
    assert [f["face_index"] for f in two] == [0, 1] and two[0]["x1"] < two[1]["x1"]
    assert two[0]["landmarks"] is not None and len(two[0]["landmarks"]) == 10
    assert two[0]["emotion_model"] == SPECS[0].tag and two[0]["gender"] == "female"


def test_parquet_files_are_snappy_and_typed(run_output):
    files = sorted(run_output.glob("faces-*.parquet"))
    assert files
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "SNAPPY"
    schema = pq.read_schema(files[0])
    assert schema.field("landmarks").type.value_type.bit_width == 32


def test_inference_failure_is_an_error_row(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_image(d / "bright.png", _picture(1, fill=255))
    write_image(d / "fine.png", _picture(1))
    out = tmp_path / "out"
    with _pipeline() as p:
        build(p, expand_inputs([str(d)]), str(out), FakeHandler(fail_bright=True), RUN,
              detect_options=DetectOptions(min_face_size=10), detector_factory=fake_detector_factory)
    s = _sources(out)
    assert s["bright.png"]["status"] == "error" and s["bright.png"]["stage"] == "inference"
    assert "model exploded" in s["bright.png"]["error"]
    assert s["fine.png"]["status"] == "ok"
    assert {Path(f["source_uri"]).name for f in read_table(str(out), "faces").to_pylist()} == {"fine.png"}


def test_read_sources_dead_letters(corpus):
    with _pipeline() as p:
        read = p | ReadSources(expand_inputs([str(corpus / "in")]))
        stages = read.errors | beam.Map(lambda e: (Path(e.source_uri).name, e.stage))
        assert_that(stages, equal_to([("truncated.jpg", "decode"), ("text.jpg", "decode"),
                                      ("empty.png", "decode")]), label="errors")
        counts = read.frame_counts | beam.Map(lambda kv: (Path(kv[0]).name, kv[1]))
        assert_that(counts | beam.Filter(lambda kv: kv[0] == "clip.mp4"), equal_to([("clip.mp4", 3)]),
                    label="clip_frames")


def test_input_matching_nothing_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        expand_inputs([str(tmp_path / "nothing-*.jpg")])


def test_progress_counts_every_file_and_face(corpus, tmp_path):
    import io

    from transforms import progress

    patterns = expand_inputs([str(corpus / "in"), str(corpus / "notes.txt")])
    shown = io.StringIO()
    progress.start(10, file=shown)
    try:
        with _pipeline() as p:
            build(p, patterns, str(tmp_path / "out"), FakeHandler(), RUN, ReadOptions(video_fps=5.0, video_chunk_seconds=1.0),
                  DetectOptions(min_face_size=10), detector_factory=fake_detector_factory)
        # every input once, whatever became of it; faces as detected (the failing picture's are lost)
        assert progress.state() == (10, 6)
    finally:
        progress.close()
    assert "10/10" in shown.getvalue() and progress.state() is None


def test_detection_one_frame_ahead_keeps_each_frame_its_faces_and_errors():
    """The detector runs a frame ahead in its own thread: every frame's faces and failures stay its own,
    failures anywhere in the bundle, the last frames handed on when the bundle finishes."""
    from transforms.faces import DetectFaces
    from transforms.records import Frame

    wanted = [1, 5, 2, 0, 5, 3, 1, 5]  # 5: the detector fails on that frame
    frames = [Frame(f"mem://{i}.png", "image", None, None, _picture(n)) for i, n in enumerate(wanted)]
    with _pipeline() as p:
        faces, errors = (p | beam.Create(frames)
                         | DetectFaces(DetectOptions(min_face_size=10), fake_detector_factory))
        assert_that(faces | beam.Map(lambda f: (f.source_uri, f.face_index)),
                    equal_to([(f"mem://{i}.png", k) for i, n in enumerate(wanted) if n != 5 for k in range(n)]),
                    label="faces")
        assert_that(errors | beam.Map(lambda e: (e.source_uri, e.stage, e.error)),
                    equal_to([(f"mem://{i}.png", "detect", "RuntimeError: detector exploded")
                              for i, n in enumerate(wanted) if n == 5]), label="errors")


def _face_on(uri: str, source_type: str, frame_index: int | None, box, size) -> tuple:
    from models.handler import FaceAttributes
    from transforms.records import FaceCrop

    crop = FaceCrop(uri, source_type, frame_index, None, 0, box, size[0], size[1], "haar", None, None, None)
    return crop, FaceAttributes(np.eye(7, dtype=np.float32)[3], 30.0, 0.2)


def test_annotated_copies_of_wide_videos_and_long_names(tmp_path):
    """A clip too wide for the mp4v encoder is written scaled down, not as an empty file; a name too long
    for the file system is cut."""
    import cv2

    from transforms.annotate import MAX_JPEG_SIDE, _AnnotateFn, annotated_name
    from transforms.video import MAX_VIDEO_SIDE

    wide = write_video(tmp_path / "wide.avi", 3, fps=1.0, size=(8640, 64), brightness=lambda i: 90, fourcc="MJPG")
    long_name = tmp_path / ("é" * 124 + ".png")  # 248 bytes of stem: 261 with the hash and .jpg
    write_image(long_name, gradient_image(64, 64))
    out = tmp_path / "annotated"
    out.mkdir()
    fn = _AnnotateFn(str(out), ReadOptions(video_fps=0))
    fn.process((str(wide), [_face_on(str(wide), "video", i, (100.0, 10.0, 140.0, 50.0), (8640, 64)) for i in range(3)]))
    fn.process((str(long_name), [_face_on(str(long_name), "image", None, (10.0, 10.0, 40.0, 40.0), (64, 64))]))
    clip = cv2.VideoCapture(str(out / annotated_name(str(wide), ".mp4")))
    assert clip.get(cv2.CAP_PROP_FRAME_WIDTH) == MAX_VIDEO_SIDE and clip.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    name = annotated_name(str(long_name), ".jpg")
    assert len(name.encode()) <= 255 and name.startswith("é" * 100) and (out / name).stat().st_size > 0
    # a panorama wider than JPEG allows is written scaled down (it was an empty file)
    panorama = tmp_path / "panorama.png"
    write_image(panorama, np.full((32, 66000, 3), 90, np.uint8))
    fn.process((str(panorama), [_face_on(str(panorama), "image", None, (10.0, 2.0, 40.0, 30.0), (66000, 32))]))
    picture = cv2.imread(str(out / annotated_name(str(panorama), ".jpg")))
    assert picture.shape[:2] == (32, MAX_JPEG_SIDE)
