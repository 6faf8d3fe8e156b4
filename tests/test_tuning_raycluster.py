"""The persistent local Ray head: reuse, token auth, and stopping only our own head."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from llmops_engine import raycluster
from llmops_engine.errors import ClusterError
from llmops_engine.project import Project, ProjectSettings

pytestmark = pytest.mark.slow


def _status(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_connect_reuses_the_running_head(ray_project):
    import ray

    first = raycluster.connect(ray_project)
    job = ray.get_runtime_context().get_job_id()
    second = raycluster.connect(ray_project)
    assert first == second and not second.started
    assert ray.get_runtime_context().get_job_id() == job  # the same connection, not a reconnect
    state = json.loads((ray_project.state_dir / "ray" / "cluster.json").read_text())
    assert state["address"] == first.address

    @ray.remote
    def worker_env():
        import os

        return os.environ.get("RAY_AUTH_MODE"), os.environ.get("HF_HUB_OFFLINE")

    assert ray.get(worker_env.remote()) == ("token", "1")


def test_dashboard_requires_the_project_token(ray_project):
    info = raycluster.ensure_cluster(ray_project)
    url = f"{info.dashboard_url}/api/version"
    assert _status(url, raycluster.dashboard_headers(ray_project)) == 200
    assert _status(url, {}) == 401


def test_stop_local_stops_only_that_head(ray_project, tmp_path):
    other = Project(tmp_path, ProjectSettings(ray={"num_cpus": 1}))
    info = raycluster.ensure_cluster(other)
    assert info.started and info.address != raycluster.ensure_cluster(ray_project).address
    assert raycluster.stop_local(other) is True
    assert raycluster.stop_local(other) is False
    # The session's head is untouched: a fresh ensure reuses it.
    assert raycluster.ensure_cluster(ray_project).started is False


def test_unreachable_ray_address_is_a_cluster_error(tmp_path, monkeypatch):
    import ray

    project = Project(tmp_path, ProjectSettings())
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert raycluster.ensure_cluster(project).address == "127.0.0.1:1"
    ray.shutdown()
    with pytest.raises(ClusterError, match="cannot connect"):
        raycluster.connect(project)
