"""The benchmark's arithmetic and its detection-only runs (no timings are checked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import measure
from bench.run import _summarise, to_markdown

ROOT = Path(__file__).resolve().parent.parent


def _run(mode, seconds, cpu, **extra):
    r = {"mode": mode, "seconds": seconds, "cpu_seconds": cpu, "files": 10, "frames": 12,
         "peak_rss_mib": 900.0, "stages": {}, **extra}
    r["images_per_s"], r["frames_per_s"] = 10 / seconds, 12 / seconds
    if "faces" in r:
        r["faces_per_s"] = r["faces"] / seconds
    return r


def test_ratios_use_the_faster_detection_run_as_the_limit():
    runs = {
        "pipeline": _run("pipeline", 23.0, 40.0, faces=100, inside={"detector calls": 15.0},
                         stages={"decode": 2.0}),
        "sequential": _run("sequential", 80.0, 82.0, faces=100, stages={"infer": 50.0}),
        "detection": _run("detection", 30.0, 31.0),
        "detection_threads": _run("detection_threads", 20.0, 36.0, workers=2),
    }
    entry = _summarise(100, runs)
    assert entry["speedup_vs_sequential"] == pytest.approx(80 / 23, abs=1e-3)
    assert entry["detection_limit_mode"] == "detection_threads"
    assert entry["ratio_to_detection_limit"] == pytest.approx(23 / 20, abs=1e-3)
    assert entry["ratio_to_detection_limit_cpu"] == pytest.approx(40 / 36, abs=1e-3)
    assert entry["ratio_to_detection_loop"] == pytest.approx(23 / 30, abs=1e-3)
    assert entry["ratio_to_own_decode_detect"] == pytest.approx(23 / 17, abs=1e-3)

    # one loop faster than the threads: the loop is the limit
    runs["detection_threads"] = _run("detection_threads", 35.0, 60.0, workers=2)
    assert _summarise(100, runs)["detection_limit_mode"] == "detection"

    table = to_markdown({"runs": [entry], "machine": {"cpus": 2, "python": "3.11", "tensorflow": "2"},
                         "load_before": [0, 0, 0], "load_after": [0, 0, 0], "when": "now", "repeat": 1,
                         "models": {"emotion": "e"}, "corpus": "c", "baseline": "b"})
    assert "| **ratio to detection limit** (seconds; target ≤ 1.15) | 1.15 |" in table
    assert "decode + detect only, threads: seconds (CPU seconds) | 20.0 (36.0) |" in table


def test_worker_count_follows_the_pipeline_flags(monkeypatch):
    monkeypatch.setattr(measure.os, "cpu_count", lambda: 8)
    assert measure.pipeline_workers(["--direct_num_workers=3", "--direct_running_mode=multi_threading"]) == 3
    assert measure.pipeline_workers(["--direct_num_workers=0"]) == 8
    assert measure.pipeline_workers(["--direct_num_workers=1"]) == 1


def test_threaded_detection_finds_what_the_loop_finds(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("obama_family.jpg", "solvay_conference.jpg"):
        shutil.copy(ROOT / "examples" / "photos" / name, corpus / name)
    loop = measure.run_detection(corpus)
    threads = measure.run_detection(corpus, workers=2)
    assert (loop["files"], loop["frames"]) == (threads["files"], threads["frames"]) == (2, 2)
    assert loop["detections"] == threads["detections"] >= 30
    assert threads["workers"] == 2


def test_memory_corpus_and_4k_video_are_generated_as_described(tmp_path):
    import cv2

    from bench import memory

    memory.write_corpus(tmp_path / "a", 3)
    memory.write_corpus(tmp_path / "b", 3)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["img-00000.jpg", "img-00001.jpg", "img-00002.jpg"]
    # the same seed and index give the same file; different indices differ
    assert [(tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names] == [True] * 3
    assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "a" / names[1]).read_bytes()
    assert cv2.imread(str(tmp_path / "a" / names[0])).shape == (memory.SIZE[1], memory.SIZE[0], 3)

    memory.write_video(tmp_path / "v" / "uhd.mp4", 3)
    cap = cv2.VideoCapture(str(tmp_path / "v" / "uhd.mp4"))
    try:
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == memory.UHD
        assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    finally:
        cap.release()
