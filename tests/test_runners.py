"""The same pipeline on other runners: local multi-process, Beam's portable runner with an external
SDK worker pool (the protocol Flink and Dataflow use), and a Dataflow job graph built offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.analyze import run
from pipelines.summary import read_table
from tests.conftest import EXAMPLES, ROOT

INPUTS = [str(EXAMPLES / "photos" / "obama_family.jpg"), str(EXAMPLES / "clips")]
COMMON = ["--max_frames_per_video", "2", "--video_chunk_seconds", "0.5"]


def _rows(out: Path) -> list[dict]:
    rows = read_table(str(out), "faces").to_pylist()
    return sorted(rows, key=lambda r: (r["source_uri"], r["frame_index"] or 0, r["face_index"]))


def _analyze(out: Path, *extra: str) -> list[dict]:
    argv = [a for i in INPUTS for a in ("--input", i)] + ["--output", str(out), "--run_id", "r"] + COMMON
    run(argv + list(extra))
    return _rows(out)


def _assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for key, value in x.items():
            if isinstance(value, float):
                assert y[key] == pytest.approx(value, abs=1e-4), key
            elif key != "landmarks":
                assert y[key] == value, key


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    return _analyze(tmp_path_factory.mktemp("local"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory):
    """Beam's job service and an external SDK worker pool, on loopback."""
    job_port, worker_port = _free_port(), _free_port()
    # The pool starts each SDK worker as plain `python`: this interpreter's, first on PATH.
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    logs = tmp_path_factory.mktemp("services")
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.loopback", "apache_beam.runners.portability.local_job_service_main",
                          f"--port={job_port}"], cwd=ROOT, env=env, stdout=open(logs / "job.log", "w"),
                         stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "tests.loopback", "apache_beam.runners.worker.worker_pool_main",
                          f"--service_port={worker_port}"], cwd=ROOT, env=env, stdout=open(logs / "pool.log", "w"),
                         stderr=subprocess.STDOUT),
    ]
    try:
        _wait_for_port(job_port, procs[0])
        _wait_for_port(worker_port, procs[1])
        yield job_port, worker_port
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_multi_processing_equals_in_process(local_rows, tmp_path):
    rows = _analyze(tmp_path / "mp", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    _assert_same_rows(local_rows, rows)


def test_portable_runner_with_external_workers_equals_local(local_rows, portable_services, tmp_path):
    job_port, worker_port = portable_services
    rows = _analyze(tmp_path / "portable", "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                    "--environment_type=EXTERNAL", f"--environment_config=localhost:{worker_port}")
    _assert_same_rows(local_rows, rows)


def test_model_shared_across_processes_equals_local(local_rows, tmp_path):
    rows = _analyze(tmp_path / "shared", "--large_model", "--direct_num_workers=2",
                    "--direct_running_mode=multi_processing")
    _assert_same_rows(local_rows, rows)


def test_split_video_equals_unsplit(local_rows, tmp_path):
    # COMMON splits the clip into 0.5 s ranges; one range per video must give the same rows.
    argv = [a for i in INPUTS for a in ("--input", i)] + ["--output", str(tmp_path), "--run_id", "r",
                                                         "--max_frames_per_video", "2", "--video_chunk_seconds", "0"]
    run(argv)
    _assert_same_rows(local_rows, _rows(tmp_path))


def test_dask_runner_is_refused(tmp_path, capsys):
    status = cli.main(["analyze", "--input", INPUTS[0], "--output", str(tmp_path), "--runner=DaskRunner"])
    err = capsys.readouterr().err
    assert status == 2 and "DaskRunner" in err and "finish_bundle" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_analyze_help_lists_facebeams_flags_and_runs_nothing(flag, tmp_path, capsys):
    """Beam's own parser would answer --help with none of facebeam's flags."""
    import argparse

    from pipelines.analyze import AnalyzeOptions

    parser = argparse.ArgumentParser()
    AnalyzeOptions._add_argparse_args(parser)
    flags = {a.option_strings[0] for a in parser._actions if a.dest != "help"}
    status = cli.main(["analyze", "--input", INPUTS[0], "--output", str(tmp_path), flag])
    text = capsys.readouterr().out
    assert status == 0 and text.startswith("usage: facebeam analyze")
    assert len(flags) > 20 and all(f in text for f in flags) and "--runner" in text
    assert not list(tmp_path.iterdir())


def test_local_worker_threads_are_refused(tmp_path, capsys):
    status = cli.main(["analyze", "--input", INPUTS[0], "--output", str(tmp_path), "--direct_num_workers=2",
                       "--direct_running_mode=multi_threading"])
    err = capsys.readouterr().err
    assert status == 2 and "multi_threading" in err and "multi_processing" in err
    assert not list(tmp_path.iterdir())


def test_dataflow_job_graph_builds_offline(tmp_path, monkeypatch):
    pytest.importorskip("google.cloud.storage", reason="needs apache-beam[gcp]")
    creds = tmp_path / "credentials.json"
    creds.write_text('{"type": "authorized_user", "client_id": "x", "client_secret": "x", "refresh_token": "x"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    result, _ = run(["--input", str(EXAMPLES), "--output", "gs://facebeam-example/out", "--runner=DataflowRunner",
                     "--project=facebeam-example", "--region=us-central1", "--temp_location=gs://facebeam-example/tmp",
                     "--setup_file", str(ROOT / "setup.py"), "--dry_run=True"])
    names = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    for step in ("ReadSources/List", "ReadSources/SpreadFiles", "ReadSources/SpreadTasks",
                 "ReadSources/Decode", "DetectFaces/Detect",
                 "PredictAttributes/RunInference", "AssignTracks/GroupVideo", "WriteResults/WriteFaces",
                 "WriteResults/WriteSources", "WriteResults/WriteTracks"):
        assert step in names, step


def test_beam_root_logger_notices_are_filtered_but_not_errors_or_named_loggers():
    import logging

    from pipelines.analyze import _quiet_beam_root_notices as keep

    beam_file = os.path.join("site-packages", "apache_beam", "ml", "inference", "base.py")

    def record(name, level, path):
        return logging.LogRecord(name, level, path, 1, "msg", None, None)

    assert not keep(record("root", logging.WARNING, beam_file))
    assert keep(record("root", logging.ERROR, beam_file))
    assert keep(record("apache_beam.io", logging.WARNING, beam_file))
    assert keep(record("root", logging.WARNING, os.path.join("facebeam", "x.py")))
