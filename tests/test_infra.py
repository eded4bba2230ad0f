"""The launch files in infra/ stay in step with the code: flags, paths and services exist."""

from __future__ import annotations

import json
import re

import pytest
import yaml

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
