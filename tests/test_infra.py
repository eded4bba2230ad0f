"""The launch files in infra/ stay in step with the code: flags, paths and services exist."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from models.registry import DEFAULT_MODELS
from pipelines.analyze import AnalyzeOptions
from tests.conftest import ROOT

INFRA = ROOT / "infra"


def _analyze_flags() -> set[str]:
    import argparse

    parser = argparse.ArgumentParser()
    AnalyzeOptions._add_argparse_args(parser)
    return {a.dest for a in parser._actions}


def test_flex_template_parameters_are_analyze_flags():
    meta = json.loads((INFRA / "dataflow" / "flex-template" / "metadata.json").read_text())
    names = {p["name"] for p in meta["parameters"]}
    assert {"input", "output"} <= names
    assert names <= _analyze_flags()
    assert all(p["helpText"] for p in meta["parameters"])


def test_flex_template_parameters_parse_as_the_launcher_passes_them():
    """The launcher passes every parameter as --name=value, on/off flags included (--overwrite=true)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.analyze import AnalyzeOptions

    meta = json.loads((INFRA / "dataflow" / "flex-template" / "metadata.json").read_text())
    examples = {"input": ("gs://b/photos/", ["gs://b/photos/"]), "output": ("gs://b/out/run1", "gs://b/out/run1"),
                "detector": ("haar", "haar"), "min_face_size": ("40", 40.0), "video_fps": ("2", 2.0),
                "max_batch_size": ("128", 128), "overwrite": ("true", True)}
    for p in meta["parameters"]:
        value, parsed = examples[p["name"]]
        assert all(re.fullmatch(r, value) for r in p.get("regexes", [])), p["name"]
        assert getattr(PipelineOptions([f"--{p['name']}={value}"]).view_as(AnalyzeOptions), p["name"]) == parsed
    assert PipelineOptions(["--overwrite=false"]).view_as(AnalyzeOptions).overwrite is False
    assert PipelineOptions(["--overwrite"]).view_as(AnalyzeOptions).overwrite is True


@pytest.mark.parametrize("dockerfile", ["dataflow/Dockerfile", "dataflow/Dockerfile.gpu", "dataflow/flex-template/Dockerfile"])
def test_dockerfiles_copy_existing_paths_and_match_beam_version(dockerfile):
    import apache_beam

    text = (INFRA / dockerfile).read_text()
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    if "beam_python" in base:
        assert base.endswith(":" + apache_beam.__version__) and "python3.11" in base


def test_flink_compose_services():
    compose = yaml.safe_load((INFRA / "flink" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"jobmanager", "taskmanager", "job-server", "worker-pool"} <= set(services)
    import apache_beam

    assert services["job-server"]["image"].endswith(":" + apache_beam.__version__)
    assert "--worker_pool" in services["worker-pool"]["command"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_setup_file_builds_the_package_dataflow_stages(tmp_path):
    """What ``--setup_file ./setup.py`` ships to Dataflow workers: the code and the shipped weights."""
    import tarfile

    from apache_beam.runners.portability.stager import Stager

    sdist = Stager._build_setup_package(str(ROOT / "setup.py"), str(tmp_path))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    shipped = [f"models/{kind}/{name}{ext}" for name in DEFAULT_MODELS.values()
               for kind, ext in (("weights", ".keras"), ("weights", ".json"), ("cards", ".md"))]
    for needed in ("setup.py", "README.md", "pipelines/analyze.py", "transforms/sources.py", "models/handler.py",
                   *shipped):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "runs/", "examples/")) for n in names)
