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
from llmops_engine.project import load_project
from tests import recording_controllers

REPO = Path(__file__).resolve().parent.parent

@pytest.fixture(autouse=True)
def recording():
    recording_controllers.install()
    yield
    recording_controllers.uninstall()


def calls(root):
    path = root / "calls.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def engine(root):
    return Engine(load_project(root), report=lambda line: None)


def test_apply_then_noop_then_targeted_update(project_root):
    result = engine(project_root).apply()
    assert [s.status for s in result.steps] == ["succeeded"] * 3 and result.exit_code() == 0
    plan, _, _ = engine(project_root).plan()
    assert not plan.has_changes()
    assert len(calls(project_root)) == 6
    job = project_root / "specs" / "job.yaml"
    job.write_text(job.read_text().replace("epochs: 1", "epochs: 2"))
    plan, _, _ = engine(project_root).plan()
    assert [(a.key, a.action) for a in plan.changes] == [("TuningJob/t", "update")]
    assert plan.changes[0].reasons == ("spec changed at spec.training.epochs",)
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
    recording_controllers.install(kinds=("Dataset",), Dataset={"fail": True})
    (project_root / "data" / "x.jsonl").write_text('{"q": "1", "a": "3"}\n')
    result = engine(project_root).apply()
    by_key = {s.key: s for s in result.steps}
    assert by_key["Dataset/d"].status == "failed" and "failed on purpose" in by_key["Dataset/d"].message
    assert by_key["TuningJob/t"].status == "blocked"
    assert result.exit_code() == 1
    now = eng.records()
    assert now["Dataset/d"].fingerprint == old["Dataset/d"].fingerprint
    assert now["Dataset/d"].outputs == old["Dataset/d"].outputs and now["Dataset/d"].status == "failed"
    assert eng.store.has(old["Dataset/d"].fingerprint)
    assert now["TuningJob/t"] == old["TuningJob/t"]


def test_missing_controller_stops_before_that_kind(project_root, monkeypatch):
    recording_controllers.uninstall(kinds=("TuningJob",))
    monkeypatch.setitem(controllers.BUILTIN, "TuningJob", "llmops_engine.controllers.not_written_yet:X")
    plan, _, _ = engine(project_root).plan()
    assert "TuningJob/t" in [a.key for a in plan.changes]
    result = engine(project_root).apply()
    step = {s.key: s for s in result.steps}["TuningJob/t"]
    assert step.status == "failed" and isinstance(step.error, NoControllerError)
    assert "no controller for kind TuningJob yet" in step.message
    assert result.exit_code() == 1


def test_saved_plan_refused_when_stale(project_root):
    plan, _, _ = engine(project_root).plan()
    saved = plan.to_json()
    engine(project_root).apply()  # the world moved on
    with pytest.raises(StalePlanError, match="stale"):
        engine(project_root).apply(saved_plan=saved)


def test_saved_plan_applies_when_fresh(project_root):
    plan, _, _ = engine(project_root).plan()
    result = engine(project_root).apply(saved_plan=json.loads(json.dumps(plan.to_json())))
    assert [s.status for s in result.steps] == ["succeeded"] * 3


def test_prune_deletes_only_when_asked_and_never_everything(project_root):
    from llmops_engine.errors import PlanError

    engine(project_root).apply()
    (project_root / "specs" / "job.yaml").unlink()
    result = engine(project_root).apply()
    assert "TuningJob/t" in engine(project_root).records()
    result = engine(project_root).apply(prune=True)
    assert [s.key for s in result.steps if s.action == "delete"] == ["TuningJob/t"]
    assert "TuningJob/t" not in engine(project_root).records()
    for spec in (project_root / "specs").iterdir():
        spec.unlink()
    with pytest.raises(PlanError, match="--allow-empty"):
        engine(project_root).apply(prune=True)


RUNNER = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests import recording_controllers
from llmops_engine.engine import Engine
from llmops_engine.project import load_project
recording_controllers.install(TuningJob={{"sleep_s": {sleep}}})
result = Engine(load_project(Path({root!r})), report=print).apply(lock_timeout={lock_timeout})
print("EXIT", result.exit_code())
"""


def run_apply(root, sleep=0.0, lock_timeout=0.0):
    code = RUNNER.format(repo=str(REPO), root=str(root), sleep=sleep, lock_timeout=lock_timeout)
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
    first = run_apply(project_root, sleep=3)
    wait_for(project_root / "running-TuningJob")
    with pytest.raises(LockError) as info:
        engine(project_root).apply()
    message = str(info.value)
    assert f"pid {first.pid}" in message and "force-unlock" in message
    second = run_apply(project_root, lock_timeout=30)
    out, err = second.communicate(timeout=60)
    assert "EXIT 0" in out, err
    first.wait(timeout=30)


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
