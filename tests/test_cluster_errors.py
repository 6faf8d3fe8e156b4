"""What a user is told when the engine cannot connect to a Ray cluster (pure: Ray's own texts in, advice out)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_engine.raycluster import connect_error
from tests.test_ci_guard import SPECS as DEPLOYING  # a Prompt and a Deployment of a base model

LLMOPS = str(Path(sys.executable).with_name("llmops"))

# Ray's text for a driver whose versions differ from the cluster's (ray/_private/utils.py).
MISMATCH = ("Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.9\n"
            "This process on node 10.0.0.7 was started with:\n    Ray: 2.60.0\n    Python: 3.11.9\n")

SCENARIOS = [
    # error from ray.init,                                    must contain
    (MISMATCH,                                                ["10.0.0.5:6379", "Ray: 2.59.0", "Ray: 2.60.0",
                                                               "Install the cluster's versions here", "2.60.0"]),
    ("Failed to connect to GCS within 60 seconds",            ["10.0.0.5:6379", "Failed to connect to GCS",
                                                               "Check RAY_ADDRESS"]),
    ("Authentication failed: invalid token",                  ["Authentication failed", "Check RAY_ADDRESS"]),
]


@pytest.mark.parametrize("error, expected", SCENARIOS)
def test_connect_errors_name_the_address_and_what_to_do(error, expected):
    message = connect_error("10.0.0.5:6379", error, "2.60.0")
    for part in expected:
        assert part in message
    assert "\n" not in message  # one readable line in the CLI's error box


def test_an_unreachable_cluster_is_a_clear_error_and_keeps_the_last_good_state(make_project):
    root = make_project(DEPLOYING)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed
    env = {**{k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS")}, "RAY_ADDRESS": address}

    done = subprocess.run([LLMOPS, "apply", "--dir", str(root)], env=env, capture_output=True, text=True, timeout=120)

    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"cannot connect to the Ray cluster at {address}: nothing listens there" in output, output
    assert "Traceback" not in output
    status = subprocess.run([LLMOPS, "status", "--dir", str(root), "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    states = {f"{row['kind']}/{row['name']}": row["state"] for row in json.loads(status.stdout)}
    assert states["Prompt/p"] == "ready" and states["Deployment/api"] != "ready"
    assert not (root / ".llmops" / "ray" / "cluster.json").exists()  # no local head instead
