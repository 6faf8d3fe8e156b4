"""Session-scoped local Ray head for tests that need a real cluster.

One head per test session (starting Ray costs seconds), in a temp project with its own
state dir, so it never touches a developer's `.llmops/` or another cluster on the machine.
The head gets an allow-listed environment (raycluster.FORWARDED_NAMES / FORWARDED_PREFIXES):
a variable that workers or replicas must see has to be set before the head starts, under a
forwarded name (LLMOPS_CACHE_DIR and the AWS_* of s3_server are).
"""

from __future__ import annotations

import os

import pytest

from llmops_engine import raycluster
from llmops_engine.project import Project, ProjectSettings


@pytest.fixture(scope="session")
def ray_project(tmp_path_factory, s3_server):
    # s3_server: its endpoint and credentials must be in the head's environment (see there).
    saved_address = os.environ.pop("RAY_ADDRESS", None)
    root = tmp_path_factory.mktemp("ray-project")
    # Where nodes cache objects fetched from an object store: not the developer's ~/.cache.
    os.environ["LLMOPS_CACHE_DIR"] = str(tmp_path_factory.mktemp("node-cache"))
    project = Project(root, ProjectSettings())  # the local head's default logical CPUs, as users get them
    try:
        raycluster.connect(project)
        yield project
    finally:
        raycluster.stop_local(project)
        if saved_address is not None:
            os.environ["RAY_ADDRESS"] = saved_address
