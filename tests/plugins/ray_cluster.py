"""Session-scoped local Ray head for tests that need a real cluster.

One head per test session (starting Ray costs seconds), in a temp project with its own
state dir, so it never touches a developer's `.llmops/` or another cluster on the machine.
"""

from __future__ import annotations

import os

import pytest

from llmops_engine import raycluster
from llmops_engine.project import Project, ProjectSettings


@pytest.fixture(scope="session")
def ray_project(tmp_path_factory):
    saved_address = os.environ.pop("RAY_ADDRESS", None)
    root = tmp_path_factory.mktemp("ray-project")
    project = Project(root, ProjectSettings(ray={"num_cpus": os.cpu_count() or 2}))
    try:
        raycluster.connect(project)
        yield project
    finally:
        raycluster.stop_local(project)
        if saved_address is not None:
            os.environ["RAY_ADDRESS"] = saved_address
