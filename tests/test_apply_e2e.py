"""apply end to end through test-only controllers: journal, resume after SIGKILL, lock,
stale saved plans, failure isolation, prune."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmops_engine import controllers
from llmops_engine.engine import Engine
from llmops_engine.errors import LockError, NoControllerError, StalePlanError
from llmops_engine.planner import Plan, PlanOptions
from llmops_engine.project import load_project
from tests import recording_controllers

REPO = Path(__file__).resolve().parent.parent

def calls(root):
    path = root / "calls.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def engine(root, registry=None):
    return Engine(load_project(root), report=lambda line: None, registry=registry or recording_controllers.registry())


def test_apply_then_noop_then_targeted_update(project_root):
    result = engine(project_root).apply()
    assert [s.status for s in result.steps] == ["succeeded"] * 3 and result.exit_code() == 0
    plan = engine(project_root).plan().plan
    assert not plan.has_changes()
    assert len(calls(project_root)) == 6
    job = project_root / "specs" / "job.yaml"
    job.write_text(job.read_text().replace("epochs: 1", "epochs: 2"))
    plan = engine(project_root).plan().plan
    assert [(a.key, a.action) for a in plan.changes] == [("TuningJob/t", "update")]
    assert plan.changes[0].reasons == ("spec changed at spec.training.epochs: 1 → 2",)
    engine(project_root).apply()
    assert calls(project_root)[-2:] == ["start TuningJob/t", "done TuningJob/t"]


def test_outputs_are_published_by_fingerprint_and_recorded(project_root):
    eng = engine(project_root)
    eng.apply()
    desired = eng.load()
    fp = desired.fingerprints["TuningJob/t"]
    published = json.loads((eng.store.local_path(fp) / "result.json").read_text())
    assert sorted(published["upstream"]) == ["d", "p"]
    record = eng.records()["TuningJob/t"]
    assert record.fingerprint == fp and record.outputs["upstream"] == ["d", "p"]
    history = eng.journal().history("TuningJob/t")
    assert history[0].status == "succeeded"


def test_failure_blocks_downstream_and_keeps_previous_outputs(project_root):
    eng = engine(project_root)
    eng.apply()
    old = eng.records()
    (project_root / "data" / "x.jsonl").write_text('{"q": "1", "a": "3"}\n')
    result = engine(project_root, recording_controllers.registry(Dataset={"fail": True})).apply()
    by_key = {s.key: s for s in result.steps}
    assert by_key["Dataset/d"].status == "failed" and "failed on purpose" in by_key["Dataset/d"].message
    assert by_key["TuningJob/t"].status == "blocked"
    assert result.exit_code() == 1
    now = eng.records()
    assert now["Dataset/d"].fingerprint == old["Dataset/d"].fingerprint
    assert now["Dataset/d"].outputs == old["Dataset/d"].outputs and now["Dataset/d"].status == "failed"
    assert eng.store.has(old["Dataset/d"].fingerprint)
    assert now["TuningJob/t"] == old["TuningJob/t"]


def test_missing_controller_stops_before_that_kind(project_root):
    builtin = controllers.BUILTIN | {"TuningJob": "llmops_engine.controllers.not_written_yet:X"}
    missing = recording_controllers.registry(kinds=("Prompt", "Dataset"), builtin=builtin)
    plan = engine(project_root, missing).plan().plan
    assert "TuningJob/t" in [a.key for a in plan.changes]
    result = engine(project_root, missing).apply()
    step = {s.key: s for s in result.steps}["TuningJob/t"]
    assert step.status == "failed" and isinstance(step.error, NoControllerError)
    assert "no controller for kind TuningJob yet" in step.message
    assert result.exit_code() == 1


def test_saved_plan_refused_when_stale(project_root):
    plan = engine(project_root).plan().plan
    saved = plan.to_json()
    engine(project_root).apply()  # the world moved on
    with pytest.raises(StalePlanError, match="stale"):
        engine(project_root).apply(saved_plan=Plan.from_json(saved))


def test_saved_plan_applies_when_fresh(project_root):
    plan = engine(project_root).plan().plan
    result = engine(project_root).apply(saved_plan=Plan.from_json(json.loads(json.dumps(plan.to_json()))))
    assert [s.status for s in result.steps] == ["succeeded"] * 3


def test_prune_deletes_only_when_asked_and_never_everything(project_root):
    from llmops_engine.errors import PlanError

    engine(project_root).apply()
    (project_root / "specs" / "job.yaml").unlink()
    result = engine(project_root).apply()
    assert "TuningJob/t" in engine(project_root).records()
    result = engine(project_root).apply(options=PlanOptions(prune=True))
    assert [s.key for s in result.steps if s.action == "delete"] == ["TuningJob/t"]
    assert "TuningJob/t" not in engine(project_root).records()
    for spec in (project_root / "specs").iterdir():
        spec.unlink()
    with pytest.raises(PlanError, match="--allow-empty"):
        engine(project_root).apply(options=PlanOptions(prune=True))


RUNNER = """
import os
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests import recording_controllers
from llmops_engine.engine import Engine
from llmops_engine.project import load_project
from llmops_engine.state.lock import ApplyLock
try_once = ApplyLock._try_acquire
def try_and_tell(lock, command):  # a marker the test can wait on: this apply found the lock held
    lease = try_once(lock, command)
    if lease is None:
        (Path({root!r}) / f"lock-refused-{{os.getpid()}}").touch()
    return lease
ApplyLock._try_acquire = try_and_tell
registry = recording_controllers.registry(TuningJob={{"sleep_s": {sleep}, "hold": {hold}}})
result = Engine(load_project(Path({root!r})), report=print, registry=registry).apply(lock_timeout={lock_timeout})
print("EXIT", result.exit_code())
"""


def run_apply(root, sleep=0.0, lock_timeout=0.0, hold=False):
    code = RUNNER.format(repo=str(REPO), root=str(root), sleep=sleep, lock_timeout=lock_timeout, hold=hold)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout=30):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkilled_apply_resumes_without_redoing_finished_steps(project_root):
    proc = run_apply(project_root, sleep=60)
    wait_for(project_root / "running-TuningJob")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert calls(project_root).count("done Dataset/d") == 1
    assert "done TuningJob/t" not in calls(project_root)

    rerun = run_apply(project_root)
    out, err = rerun.communicate(timeout=60)
    assert "EXIT 0" in out, err
    assert "interrupted during create TuningJob/t" in out
    log = calls(project_root)
    assert log.count("done Dataset/d") == 1 and log.count("done Prompt/p") == 1
    assert log.count("done TuningJob/t") == 1
    rows = engine(project_root).journal().history("TuningJob/t")
    assert [r.status for r in rows] == ["succeeded", "interrupted"]


def test_second_apply_fails_fast_with_holder_then_waits(project_root):
    first = run_apply(project_root, hold=True)  # holds the lock until release-TuningJob exists
    wait_for(project_root / "running-TuningJob")
    with pytest.raises(LockError) as info:
        engine(project_root).apply()
    message = str(info.value)
    assert f"pid {first.pid}" in message and "force-unlock" in message
    second = run_apply(project_root, lock_timeout=60)
    wait_for(project_root / f"lock-refused-{second.pid}")  # the second apply is now waiting
    assert second.poll() is None
    (project_root / "release-TuningJob").touch()
    out, err = second.communicate(timeout=60)
    assert "EXIT 0" in out, err
    out, err = first.communicate(timeout=60)
    assert "EXIT 0" in out, err


def test_lock_of_a_dead_holder_is_taken_over_and_force_unlock(project_root):
    proc = run_apply(project_root, sleep=60)
    wait_for(project_root / "running-TuningJob")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    eng = engine(project_root)
    lock = eng.store.lock()
    stale = lock.holder()
    assert stale is not None and stale.pid == proc.pid
    assert eng.apply().exit_code() == 0  # a dead holder does not block
    held = eng.store.lock()
    lease = held.acquire()
    with pytest.raises(LockError, match="mismatch"):
        eng.store.lock().force_unlock("not-the-id")
    eng.store.lock().force_unlock(lease.id)
    assert eng.store.lock().holder() is None
    held.release()


class DeploymentWithDashboard(recording_controllers.RecordingController):
    """Records like the real Deployment controller: where its live state can be observed."""

    def apply(self, resource, ctx, staging):
        return super().apply(resource, ctx, staging) | {"dashboard_url": "http://127.0.0.1:9"}  # nothing listens


@pytest.mark.parametrize(
    "settings,action,says",
    [
        # The project's own local head is down (llmops down, a reboot): apply must bring it back.
        ("spec_dirs: [specs]\n", "update", "live app differs: the local Ray head is not running"),
        # A cluster the plan job cannot reach: say so, change nothing.
        ("spec_dirs: [specs]\nray: {address: 'ray://127.0.0.1:1'}\n", "no-op",
         "live state unknown: the Ray dashboard at http://127.0.0.1:9 is not reachable"),
    ],
    ids=["local head down", "cluster unreachable"],
)
def test_unobservable_live_state(project_root, settings, action, says):
    (project_root / "specs" / "api.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: api}\n"
        "spec: {model: t, prompt: p, gate: null, auth: none}\n"
    )
    (project_root / "llmops.yaml").write_text(settings)
    recorders = {kind: recording_controllers.RecordingController(kind) for kind in ("Prompt", "Dataset", "TuningJob")}
    applying = controllers.Registry(recorders | {"Deployment": DeploymentWithDashboard("Deployment")})
    assert engine(project_root, applying).apply().exit_code() == 0

    plan = engine(project_root, controllers.Registry(recorders)).plan().plan  # the real Deployment controller observes
    (deployment,) = [a for a in plan.actions if a.key == "Deployment/api"]
    assert deployment.action == action
    assert any(says in line for line in deployment.reasons + deployment.notes), deployment
    assert [a.key for a in plan.changes] == (["Deployment/api"] if action == "update" else [])
