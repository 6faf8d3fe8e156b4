"""Training outlives the `llmops apply` that started it, on a separately started cluster.

A Ray head is started here with `ray start --head` in a session of its own (outside the test's
process tree, as a team's cluster would be) and reached through RAY_ADDRESS. An apply is
SIGKILLed mid-training: the training goes on (its checkpoints keep coming), and the next apply
finds the run by its fingerprint, attaches to it with progress instead of starting a second,
and collects its result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.external_ray import external_head

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_STEPS, SAVE_EVERY = 40, 4

TUNING = f"""\
apiVersion: llmops/v1
kind: TuningJob
metadata: {{name: support-qlora}}
spec:
  base_model: builtin:tiny-llama
  dataset: support-tickets
  prompt: support-answer
  method: lora
  training: {{max_steps: {MAX_STEPS}, batch_size: 8, save_every_steps: {SAVE_EVERY}, max_seq_len: 128}}
"""


@pytest.fixture(scope="module")
def external_cluster():
    with external_head() as env:
        yield {name: value for name, value in env.items() if name != "LLMOPS_MAX_STEPS"}  # its own step count


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "specs").mkdir(parents=True)
    for name in ("dataset.yaml", "prompt.yaml"):
        shutil.copy(REPO / "tests" / "fixtures" / "tiny_demo" / name, root / "specs" / name)
    (root / "specs" / "tuning.yaml").write_text(TUNING)
    shutil.copy(REPO / "data.dvc", root / "data.dvc")
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def _checkpoint_step(root: Path) -> int:
    steps = [0]
    for path in (root / ".llmops" / "store" / "ray_runs").glob("*/checkpoint_*/state.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except ValueError:
            continue  # being written
    return max(steps)


def _wait_for(predicate, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def test_a_sigkilled_apply_leaves_training_running_and_the_next_apply_collects_it(external_cluster, repo, tmp_path):
    log = tmp_path / "first-apply.log"
    with log.open("w") as out:
        first = subprocess.Popen([str(BIN / "llmops"), "apply", "--dir", str(repo)], env=external_cluster,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: "checkpoint saved at step" in log.read_text() or first.poll() is not None, 600,
                  "no checkpoint reported", log)
        assert first.poll() is None, log.read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = _checkpoint_step(repo)
    assert 0 < killed_at < MAX_STEPS

    # Nobody is applying now, and the training goes on: its checkpoints keep coming.
    _wait_for(lambda: _checkpoint_step(repo) > killed_at, 300, "no checkpoint after the kill", log)

    started = time.monotonic()
    second = subprocess.run([str(BIN / "llmops"), "apply", "--dir", str(repo)], env=external_cluster,
                            capture_output=True, text=True, timeout=900)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert re.search(r"attached to training run tune-\w+, running on the cluster for \d+s", output), output
    assert "step 40/40" in output  # its progress reached this apply
    assert "Traceback" not in output
    print(f"second apply: {time.monotonic() - started:.1f}s")

    status = json.loads(subprocess.run([str(BIN / "llmops"), "status", "--dir", str(repo), "--json"],
                                       env=external_cluster, capture_output=True, text=True, timeout=120).stdout)
    tuning = next(row for row in status if row["kind"] == "TuningJob")
    assert tuning["state"] == "ready" and tuning["outputs"]["steps"] == MAX_STEPS
    published = next((repo / ".llmops" / "store").rglob("metrics.json"))
    metrics = json.loads(published.read_text())
    # One trainer: a second one would have resumed from the first one's checkpoint, and said so.
    assert metrics["resumed_from_step"] is None
    assert "worker(s) training" not in output and "resumed from" not in output
    assert [step for step, _ in metrics["loss_per_step"]] == list(range(1, MAX_STEPS + 1))
