"""The CLI through Typer's runner (in-process) and as a subprocess (import cost)."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from llmops_engine.cli import app
from llmops_engine.controllers import Registry
from tests import recording_controllers

runner = CliRunner()


@pytest.fixture
def root(project_root):
    return project_root


def invoke(*args, registry=None):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, obj=registry)


def test_validate_ok_and_errors_without_traceback(root):
    assert invoke("validate", "-C", root).exit_code == 0
    job = root / "specs" / "job.yaml"
    job.write_text(job.read_text().replace("epochs: 1", "epoch: 1"))
    result = invoke("validate", "-C", root)
    assert result.exit_code == 1
    assert "specs/job.yaml:4:" in result.output and "did you mean 'epochs'?" in result.output
    assert "Traceback" not in result.output


def test_validate_github_annotations(root):
    job = root / "specs" / "job.yaml"
    job.write_text(job.read_text().replace("dataset: d", "dataset: dd"))
    result = invoke("validate", "-C", root, "--format", "github")
    assert result.exit_code == 1
    assert "::error file=specs/job.yaml,line=4," in result.output


def test_plan_text_json_out_and_detailed_exitcode(root, tmp_path):
    result = invoke("plan", "-C", root)
    assert result.exit_code == 0
    assert "+ Dataset/d" in result.output and "Plan: 3 to create, 0 to update, 0 to delete." in result.output
    assert invoke("plan", "-C", root, "--detailed-exitcode").exit_code == 2
    data = json.loads(invoke("plan", "-C", root, "--json").output)
    assert [a["action"] for a in data["actions"]] == ["create"] * 3
    out = tmp_path / "plan.json"
    assert invoke("plan", "-C", root, "--out", out).exit_code == 0
    assert json.loads(out.read_text())["desired_digest"] == data["desired_digest"]
    assert "| `+` | `Dataset/d` | create |" in invoke("plan", "-C", root, "--format", "markdown").output


def test_apply_status_history_and_noop(root, tmp_path):
    recording = recording_controllers.registry()
    out = tmp_path / "plan.json"
    invoke("plan", "-C", root, "--out", out)
    result = invoke("apply", out, "-C", root, registry=recording)
    assert result.exit_code == 0, result.output
    assert "Apply complete: 3 changed" in result.output
    assert invoke("plan", "-C", root, "--detailed-exitcode").exit_code == 0
    stale = invoke("apply", out, "-C", root, registry=recording)
    assert stale.exit_code == 1 and "stale" in stale.output
    status = json.loads(invoke("status", "-C", root, "--json").output)
    assert {r["name"]: r["state"] for r in status} == {"d": "ready", "p": "ready", "t": "ready"}
    assert "TuningJob" in invoke("status", "-C", root).output
    history = json.loads(invoke("history", "TuningJob/t", "-C", root, "--json").output)
    assert history[0]["status"] == "succeeded"


def test_schema_command_writes_schema(tmp_path):
    out = tmp_path / "s.json"
    assert invoke("schema", "--out", out).exit_code == 0
    schema = json.loads(out.read_text())
    assert set(schema["properties"]["kind"]["enum"]) == {"Dataset", "Prompt", "KnowledgeBase", "Provider", "Guardrail", "TuningJob", "Evaluation", "Deployment"}


def test_init_scaffolds_a_valid_project(tmp_path):
    target = tmp_path / "new"
    assert invoke("init", target).exit_code == 0
    assert invoke("validate", "-C", target).exit_code == 0
    again = invoke("init", target)
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


def test_missing_plan_file_is_a_clear_error(root):
    result = invoke("apply", root / "nope.json", "-C", root)
    assert result.exit_code == 1 and "not found" in result.output


HEAVY = ("torch", "ray", "great_expectations", "transformers", "peft", "dvc", "pandas")


@pytest.mark.parametrize("command", [["--help"], ["validate"], ["plan"], ["status"], ["report"]])
def test_light_commands_import_nothing_heavy(root, command):
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['llmops', *{command!r}]\n"
        "code = 0\n"
        "try:\n    runpy.run_module('llmops_engine', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr  # the command itself worked
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_logs_and_rollback_explain_what_is_missing(root):
    logs = invoke("logs", "nope", "-C", root)
    assert logs.exit_code == 1 and "no request log for deployment 'nope'" in logs.output
    rollback = invoke("rollback", "nope", "-C", root)
    assert rollback.exit_code == 1 and "no Deployment named 'nope'" in rollback.output


def test_saved_plan_with_deletes_is_executed_exactly(root, tmp_path):
    recording = recording_controllers.registry()
    assert invoke("apply", "-C", root, registry=recording).exit_code == 0
    (root / "specs" / "job.yaml").unlink()
    reviewed = tmp_path / "prune.json"
    assert invoke("plan", "-C", root, "--prune", "--out", reviewed).exit_code == 0
    assert json.loads(reviewed.read_text())["options"]["prune"] is True

    result = invoke("apply", reviewed, "-C", root, registry=recording)  # no flag: the plan carries it
    assert result.exit_code == 0, result.output
    status = json.loads(invoke("status", "-C", root, "--json").output)
    assert "t" not in {row["name"] for row in status}


def test_saved_plan_refuses_flags_it_was_not_made_with(root, tmp_path):
    recording = recording_controllers.registry()
    assert invoke("apply", "-C", root, registry=recording).exit_code == 0
    (root / "specs" / "job.yaml").unlink()
    reviewed = tmp_path / "plain.json"
    assert invoke("plan", "-C", root, "--out", reviewed).exit_code == 0

    result = invoke("apply", reviewed, "--prune", "-C", root, registry=recording)
    assert result.exit_code == 1 and "different options (--prune)" in result.output
    status = json.loads(invoke("status", "-C", root, "--json").output)
    assert {row["name"]: row["state"] for row in status}["t"] == "orphan"  # nothing was deleted

    edited = json.loads(reviewed.read_text())
    edited["options"]["prune"] = True
    reviewed.write_text(json.dumps(edited))
    result = invoke("apply", reviewed, "-C", root, registry=recording)
    assert result.exit_code == 1 and "modified after it was made" in result.output


class BrokenObserver(recording_controllers.RecordingController):
    def observe(self, record, project):
        raise ZeroDivisionError("a bug")


def test_an_internal_error_is_one_line_and_a_log_file(root):
    assert invoke("apply", "-C", root, registry=recording_controllers.registry()).exit_code == 0
    recorders = {kind: recording_controllers.RecordingController(kind) for kind in ("Prompt", "TuningJob")}
    broken = Registry(recorders | {"Dataset": BrokenObserver("Dataset")})
    result = invoke("plan", "-C", root, registry=broken)
    assert result.exit_code == 70 and "Traceback" not in result.output
    assert "internal error: ZeroDivisionError: a bug" in result.output
    (log,) = (root / ".llmops" / "logs").glob("internal-*.log")
    assert "Traceback" in log.read_text() and log.name in result.output
