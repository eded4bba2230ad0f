"""The benchmark's arithmetic and its detection-only runs (no timings are checked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import measure
from bench import run as bench_run
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
    assert entry["ratio_to_own_detector"] == pytest.approx(23 / 15, abs=1e-3)

    # one loop faster than the threads: the loop is the limit
    runs["detection_threads"] = _run("detection_threads", 35.0, 60.0, workers=2)
    assert _summarise(100, runs)["detection_limit_mode"] == "detection"

    table = to_markdown({"runs": [entry], "machine": {"cpus": 2, "python": "3.11", "tensorflow": "2"},
                         "load_before": [0, 0, 0], "load_after": [0, 0, 0], "when": "now", "repeat": 1,
                         "models": {"emotion": "e"}, "corpus": "c", "baseline": "b"})
    assert "| **ratio to detection limit** (seconds; target ≤ 1.15) | 1.15 |" in table
    assert "decode + detect only, threads: seconds (CPU seconds) | 20.0 (36.0) |" in table


def test_repeats_rotate_over_the_repeated_modes_and_keep_the_fastest(monkeypatch, tmp_path):
    calls = []
    times = iter([30.0, 90.0, 20.0, 28.0, 19.0, 25.0, 21.0])

    def fake_measure(mode, corpus, beam_args):
        calls.append(mode)
        r = _run(mode, next(times), 1.0, faces=5)
        if mode == "pipeline":
            r["model_runtime"] = "litert"
        return r

    monkeypatch.setattr(bench_run, "_measure", fake_measure)
    modes = ["pipeline", "sequential", "detection"]
    got = bench_run._run_modes(100, tmp_path, modes, 3, [], {"pipeline", "detection"})
    # run 1: all three; runs 2 and 3 rotate, skipping the mode that runs once
    assert calls == ["pipeline", "sequential", "detection", "detection", "pipeline", "detection", "pipeline"]
    assert got["pipeline"]["all_seconds"] == [30.0, 19.0, 21.0] and got["pipeline"]["seconds"] == 19.0
    assert got["sequential"]["all_seconds"] == [90.0]
    assert got["detection"]["seconds"] == 20.0
    table = to_markdown({"runs": [_summarise(100, got)], "machine": {"cpus": 2, "python": "3.11", "tensorflow": "2"},
                         "load_before": [0, 0, 0], "load_after": [0, 0, 0], "when": "now", "repeat": 3,
                         "modes": modes, "repeat_modes": ["detection", "pipeline"], "models": {"emotion": "e"},
                         "model_conversion": {"runtime": "litert", "seconds": 4.0, "cache": "c"},
                         "corpus": "c", "baseline": "b"})
    assert "3 runs of detection, pipeline, one of each other mode, the fastest shown" in table
    assert "run by litert (converted for LiteRT once before timing" in table
    assert "| facebeam pipeline: seconds (CPU seconds) | 19.0 (1.0) of 30.0, 19.0, 21.0 |" in table


def test_worker_count_follows_the_pipeline_flags(monkeypatch):
    monkeypatch.setattr(measure.os, "cpu_count", lambda: 8)
    assert measure.pipeline_workers(["--direct_num_workers=3", "--direct_running_mode=multi_threading"]) == 3
    assert measure.pipeline_workers(["--direct_num_workers=0"]) == 8
    assert measure.pipeline_workers(["--direct_num_workers=1"]) == 1


def test_every_mode_and_the_report_use_the_models_the_pipeline_runs(tmp_path):
    from models.registry import DEFAULT_MODELS
    from tests.test_distill import _teacher

    tiny = _teacher(tmp_path, name="tiny_emotion")
    emotion, age_gender = measure.model_specs([f"--emotion_model={tiny}"])
    assert (emotion.name, age_gender.name) == ("tiny_emotion", DEFAULT_MODELS["age-gender"])
    assert [s.name for s in measure.model_specs([])] == [DEFAULT_MODELS["emotion"], DEFAULT_MODELS["age-gender"]]
    tags = bench_run._model_tags([f"--emotion_model={tiny}"])
    assert tags == {"emotion": emotion.tag, "age-gender": age_gender.tag}


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
    # in-process runs: their own CPU time (a first import here may run a helper such as `uname -p`, a child)
    assert loop["cpu_seconds"] > 0 and loop["cpu_seconds_children"] < 0.1 and threads["cpu_seconds_children"] < 0.1


def test_pipeline_run_splits_its_time_between_the_stages_and_the_detector_thread(tmp_path, litert_cache):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(ROOT / "examples" / "photos" / "obama_family.jpg", corpus / "obama_family.jpg")
    r = measure.run_pipeline(corpus, [])
    assert (r["files"], r["frames"], r["errors"]) == (1, 1, 0) and r["faces"] >= 4
    assert r["model_runtime"] == "litert"
    stages = r["stages"]
    assert stages["detector thread: detector calls"] == r["inside"]["detector calls"] > 0
    # alignment runs in the detector thread too, after the detector's own call (for one photo's few
    # faces it can take under the half millisecond that the figures' rounding keeps)
    assert r["inside"]["detect + align"] >= r["inside"]["detector calls"]
    inside = r["inside"]
    assert stages["detector thread: align + crop"] == round(inside["detect + align"] - inside["detector calls"], 3)
    assert "detect: waiting for the detector thread" in stages and "detect+align" not in stages
    assert r["inside"]["model calls"] > 0
    assert r["cpu_seconds"] > 0 and r["cpu_seconds_children"] < 0.1  # the in-process runner: no worker processes


# burns half a CPU second of its own, whatever the load
_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
_MULTI_PROCESSING = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def test_pipeline_cpu_seconds_count_its_worker_processes(monkeypatch, tmp_path):
    """With --direct_running_mode=multi_processing the work is done in child processes, which Beam's runner
    waits for before ``run`` returns: their CPU time counts."""
    from pipelines import analyze

    def run_in_a_worker_process(argv):
        subprocess.run([sys.executable, "-c", _BURN], check=True)
        return None, argv[argv.index("--output") + 1]

    monkeypatch.setattr(analyze, "run", run_in_a_worker_process)
    r = measure.run_pipeline(tmp_path, _MULTI_PROCESSING)
    assert r["workers"] == 2
    assert r["cpu_seconds"] >= 0.45
    assert 0.45 <= r["cpu_seconds_children"] <= r["cpu_seconds"]


def test_pipeline_cpu_seconds_are_not_known_while_a_worker_process_is_not_waited_for(monkeypatch, tmp_path):
    from pipelines import analyze

    if measure._live_children() is None:
        pytest.skip("this system does not list a process's children")
    started = []

    def run_leaving_a_worker_process(argv):
        started.append(subprocess.Popen([sys.executable, "-c", _BURN]))
        return None, argv[argv.index("--output") + 1]

    monkeypatch.setattr(analyze, "run", run_leaving_a_worker_process)
    try:
        r = measure.run_pipeline(tmp_path, _MULTI_PROCESSING)
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
    assert r["cpu_seconds"] is None and r["cpu_seconds_children"] is None
    assert f"child processes [{started[0].pid}] not waited for" in r["cpu_seconds_note"]


def test_cpu_seconds_not_known_show_as_a_dash_and_leave_out_the_cpu_ratios():
    runs = {
        "pipeline": _run("pipeline", 24.0, None, faces=6, workers=2),
        "sequential": _run("sequential", 80.0, 82.0, faces=6),
        "detection": _run("detection", 30.0, 31.0),
    }
    entry = _summarise(2, runs)
    assert entry["speedup_vs_sequential"] == pytest.approx(80 / 24, abs=1e-3)
    assert entry["ratio_to_detection_limit"] == pytest.approx(24 / 30, abs=1e-3)
    assert "speedup_vs_sequential_cpu" not in entry and "ratio_to_detection_limit_cpu" not in entry
    table = to_markdown({"runs": [entry], "machine": {"cpus": 2, "python": "3.11", "tensorflow": "2"},
                         "load_before": [0, 0, 0], "load_after": [0, 0, 0], "when": "now", "repeat": 1,
                         "models": {"emotion": "e"}, "corpus": "c", "baseline": "b"})
    assert "| facebeam pipeline: seconds (CPU seconds) | 24.0 (–) |" in table
    assert "| facebeam pipeline: CPU share (CPU seconds ÷ seconds) | – |" in table
    assert "| sequential loop: seconds (CPU seconds) | 80.0 (82.0) |" in table
    assert "| speedup vs sequential, CPU seconds per face | – |" in table
    assert "| ratio to detection limit, CPU seconds | – |" in table


@pytest.mark.parametrize(("argv", "message"), [
    (["--modes", "detection_threads"], "nothing to run: --modes detection_threads is left out with one"),
    (["--modes", "detection_threads", "--beam_arg=--direct_num_workers=1"], "nothing to run"),
    (["--modes", " , "], "--modes names no mode"),
    (["--modes", "pipelin"], "unknown modes"),
    (["--repeat_modes", "pipelin"], "unknown modes"),
])
def test_modes_that_leave_nothing_to_run_stop_before_the_corpus_is_built(monkeypatch, tmp_path, argv, message):
    def too_far(*args, **kwargs):
        raise AssertionError("went past the checks of --modes")

    for name in ("find_sources", "build_corpus", "link_corpus", "_convert_models", "_model_tags", "_run_modes"):
        monkeypatch.setattr(bench_run, name, too_far)
    with pytest.raises(SystemExit, match=message):
        bench_run.main([*argv, "--out", str(tmp_path / "results.json"), "--corpus_dir", str(tmp_path / "corpus")])
    assert not (tmp_path / "corpus").exists()


def test_modes_to_run_follow_the_worker_count(capsys):
    choose = bench_run._choose_modes
    # one worker: detection_threads would be the one-loop run, left out, from the repeated modes too
    assert choose("pipeline,detection_threads,pipeline", "pipeline,detection_threads", []) == (
        ["pipeline"], {"pipeline"})
    assert "detection_threads left out" in capsys.readouterr().err
    assert choose("detection_threads", None, ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]) == (
        ["detection_threads"], {"detection_threads"})
    # --repeat applies to those of its modes that run
    assert choose("pipeline,sequential", "pipeline,detection", []) == (["pipeline", "sequential"], {"pipeline"})


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


def test_model_cost_table_has_a_row_per_runtime_and_batch(tmp_path, shipped_specs):
    from bench import models as model_bench

    emotion, age_gender = (spec.name for spec in shipped_specs)
    out = tmp_path / "models.json"
    assert model_bench.main(["--batch", "1", "--batch", "5", "--repeat", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [(r["runtime"], r["batch"]) for r in results["rows"]] == [
        ("tensorflow", 1), ("tensorflow", 5), ("litert", 1), ("litert", 5)]
    for r in results["rows"]:
        assert r["ms_per_face"] > 0 and r[f"{emotion}_ms_per_face"] > 0 and r[f"{age_gender}_ms_per_face"] > 0
        assert r["ms_per_face_tta_multi"] > r["ms_per_face"] and r["ms_per_face_tta_flip"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| litert | 5 |" in table and f"{emotion} alone, ms per face" in table
    assert "the same with --tta flip | the same with --tta multi |" in table


def test_model_cost_of_another_emotion_model(tmp_path):
    from bench import models as model_bench
    from tests.test_distill import _teacher

    tiny = _teacher(tmp_path, name="tiny_emotion")
    out = tmp_path / "tiny.json"
    assert model_bench.main(["--emotion", str(tiny), "--batch", "2", "--repeat", "1", "--runtime", "litert",
                             "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["runtime"], row["batch"]) == ("litert", 2) and row["tiny_emotion_ms_per_face"] > 0


def test_model_cost_skips_a_runtime_that_is_not_installed(tmp_path, monkeypatch, capsys):
    import sys

    from bench import models as model_bench
    from tests.test_distill import _teacher

    tiny = _teacher(tmp_path, name="tiny_emotion")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as on a platform without its wheels
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    out = tmp_path / "tiny.json"
    assert model_bench.main(["--emotion", str(tiny), "--batch", "2", "--repeat", "1", "--runtime", "litert",
                             "--runtime", "tensorflow", "--out", str(out)]) == 0
    assert [r["runtime"] for r in json.loads(out.read_text())["rows"]] == ["tensorflow"]
    assert "litert: skipped" in capsys.readouterr().out
