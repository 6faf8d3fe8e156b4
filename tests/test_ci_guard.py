"""No silent throw-away deploys: in CI with no Ray address, an apply that would put a Deployment
live on the runner's own local head fails before it changes anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_engine.raycluster import LOCAL_IN_CI_OPT_IN, throwaway_deploy_refusal

LLMOPS = str(Path(sys.executable).with_name("llmops"))

SCENARIOS = [
    # deployments,        address,          environment,                                   refused
    (["Deployment/api"],  None,             {"CI": "true"},                                True),
    (["Deployment/api"],  None,             {"GITHUB_ACTIONS": "true"},                    True),
    (["Deployment/api"],  None,             {"CI": "1"},                                   True),
    (["Deployment/api"],  "10.0.0.5:6379",  {"CI": "true"},                                False),
    (["Deployment/api"],  None,             {"CI": "true", LOCAL_IN_CI_OPT_IN: "1"},       False),
    (["Deployment/api"],  None,             {"CI": "true", LOCAL_IN_CI_OPT_IN: "0"},       True),
    (["Deployment/api"],  None,             {},                                            False),  # a laptop
    (["Deployment/api"],  None,             {"CI": "false"},                               False),
    ([],                  None,             {"CI": "true"},                                False),  # nothing to deploy
]


@pytest.mark.parametrize("deployments, address, environ, refused", SCENARIOS)
def test_which_applies_are_refused(deployments, address, environ, refused):
    refusal = throwaway_deploy_refusal(deployments, address, environ)
    assert (refusal is not None) == refused
    if refused:
        assert "RAY_ADDRESS" in refusal and LOCAL_IN_CI_OPT_IN in refusal and "Deployment/api" in refusal


SPECS = {
    "prompt.yaml": """
        apiVersion: llmops/v1
        kind: Prompt
        metadata: {name: p}
        spec: {template: "Q: {instruction}\\nA:"}
    """,
    "deployment.yaml": """
        apiVersion: llmops/v1
        kind: Deployment
        metadata: {name: api}
        spec: {model: "builtin:tiny-llama", prompt: p, gate: null, auth: none}
    """,
}


def _apply(root: Path, **environ: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items()
           if name not in ("CI", "GITHUB_ACTIONS", "RAY_ADDRESS", LOCAL_IN_CI_OPT_IN)}
    return subprocess.run([LLMOPS, "apply", "--dir", str(root)], env={**env, **environ},
                          capture_output=True, text=True, timeout=120)


def test_a_ci_apply_without_a_cluster_is_refused_before_anything_runs(make_project):
    root = make_project(SPECS)

    done = _apply(root, GITHUB_ACTIONS="true")

    assert done.returncode == 1, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert "Deployment/api would be deployed on a local Ray head" in output and "RAY_ADDRESS" in output
    assert "Traceback" not in output
    assert not (root / ".llmops" / "ray" / "cluster.json").exists()  # no head was started
    status = subprocess.run([LLMOPS, "status", "--dir", str(root), "--json"], capture_output=True, text=True, timeout=60)
    states = {f"{row['kind']}/{row['name']}": row["state"] for row in json.loads(status.stdout)}
    assert states == {"Prompt/p": "pending", "Deployment/api": "pending"}  # nothing applied, not even the Prompt

