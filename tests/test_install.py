"""Installing llmops: scripts/setup.sh (one line per step, pip's output in a log named only on
failure) and the install step of the workflows `llmops init` writes (the engine pinned in one
repository variable, a clear error when it is unset)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from llmops_engine.scaffold import ENGINE_SPEC_VARIABLE, workflow_files

REPO = Path(__file__).resolve().parent.parent


# --- the workflows `llmops init` writes ------------------------------------------------------
def install_step(workflow_text: str) -> dict:
    jobs = yaml.safe_load(workflow_text)["jobs"]
    (steps,) = [job["steps"] for job in jobs.values()]
    (step,) = [s for s in steps if "pip install" in s.get("run", "")]
    return step


@pytest.mark.parametrize("name", sorted(workflow_files()))
def test_init_workflows_install_the_engine_named_in_one_repository_variable(name):
    text = workflow_files()[name]
    step = install_step(text)
    assert step["env"] == {ENGINE_SPEC_VARIABLE: f"${{{{ vars.{ENGINE_SPEC_VARIABLE} }}}}"}
    assert "setup.sh" not in text and ".venv/" not in text
    pip_lines = [line for line in text.splitlines() if "pip install" in line]
    assert pip_lines and all(f"${ENGINE_SPEC_VARIABLE}" in line for line in pip_lines)


def run_install_step(tmp_path: Path, spec: str, extras: str = "") -> subprocess.CompletedProcess:
    """The install step's shell script under bash (as the runner runs it), with a `python` on
    PATH that records its arguments instead of installing."""
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    script = install_step(workflow_files()[".github/workflows/llmops-plan.yml"])["run"]
    env = {"PATH": f"{shim.parent}:/usr/bin:/bin", "ARGS_FILE": str(tmp_path / "args"),
           ENGINE_SPEC_VARIABLE: spec, "LLMOPS_EXTRAS": extras}
    return subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_an_unset_engine_variable_stops_the_job_with_what_to_set(tmp_path):
    result = run_install_step(tmp_path, spec="")
    assert result.returncode == 1
    assert result.stdout.startswith("::error title=llmops engine not pinned::")
    assert f"Set the repository variable {ENGINE_SPEC_VARIABLE}" in result.stdout
    assert not (tmp_path / "args").exists()  # nothing was installed


@pytest.mark.parametrize(
    "spec, extras, wanted_extras",
    [
        ("git+https://git.example.invalid/acme/llmops@0123456789abcdef0123456789abcdef01234567", "", set()),
        ("https://files.example.invalid/llmops_engine-0.1.0-py3-none-any.whl", "s3", {"s3"}),
        ("git+https://git.example.invalid/acme/llmops@v0.1.0", "s3,gs", {"s3", "gs"}),
    ],
)
def test_a_set_engine_variable_is_installed_as_a_direct_reference(tmp_path, spec, extras, wanted_extras):
    result = run_install_step(tmp_path, spec=spec, extras=extras)
    assert result.returncode == 0, result.stdout + result.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["-m", "pip", "install"]
    requirement = Requirement(args[3])
    assert (requirement.name, requirement.url, requirement.extras) == ("llmops-engine", spec, wanted_extras)


# --- scripts/setup.sh ------------------------------------------------------------------------
FAKE_PYTHON = """#!/bin/sh
# Stands in for .venv/bin/python: chatters like pip on this machine, fails where told to.
echo "WARNING: Location 'file:///opt/index/simple/x/' is ignored: it is neither a file nor a directory." >&2
echo "Collecting $*"
case "$*" in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && { echo "ERROR: no matching distribution" >&2; exit 1; } ;; esac
exit 0
"""


@pytest.fixture
def setup_copy(tmp_path):
    """A project with scripts/setup.sh and a .venv whose python is FAKE_PYTHON."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    return root


def run_setup(root: Path, fail_on: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(root.parent / "tmp"), "FAIL_ON": fail_on}
    env.pop("LLMOPS_EXTRAS", None)
    return subprocess.run(["bash", str(root / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)


def test_setup_prints_one_line_per_step_and_leaves_no_log(setup_copy):
    result = run_setup(setup_copy)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "setup: upgrading pip",
        "setup: installing torch 2.13.0",
        "setup: installing llmops-engine and test tools (test)",
    ]
    assert lines[-1] == "setup: done (.venv)"
    assert all(line.startswith("setup: ") for line in lines)  # nothing of pip's reaches the terminal
    assert result.stderr == ""
    assert list((setup_copy.parent / "tmp").iterdir()) == []
    again = run_setup(setup_copy)  # installed and unchanged: silent
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_a_failed_setup_step_names_its_log_which_keeps_pips_output(setup_copy):
    result = run_setup(setup_copy, fail_on="torch==")
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["setup: upgrading pip", "setup: installing torch 2.13.0"]
    (log,) = (setup_copy.parent / "tmp").iterdir()
    assert result.stderr.endswith(f"setup: installing torch 2.13.0 failed; the full output is in {log}\n")
    assert "is ignored" in log.read_text() and "ERROR: no matching distribution" in log.read_text()
    assert not (setup_copy / ".venv" / ".llmops-installed").exists()  # the next run tries again
