"""TuningJob end to end on a real local Ray cluster with the builtin model (QLoRA on CPU).

The controller is called directly with a hand-built ApplyContext, as the reconciler does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmops_engine.controllers.tuning import TuningController
from llmops_engine.errors import PlanError
from llmops_engine.models import load_trained, resolve_base
from llmops_engine.project import Project, ProjectSettings
from llmops_engine.training.run import run_name
from tests.eval_helpers import DATASET, make_context, publish_dataset, resource

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TINY_DEMO = REPO / "tests" / "fixtures" / "tiny_demo"  # the demo as it was on the builtin tiny model
CONTENT_HASH = {"train": "0" * 32, "eval": "1" * 32}


@pytest.fixture(autouse=True)
def _uncapped(monkeypatch):
    """These tests set their own step counts; CI's LLMOPS_MAX_STEPS cap must not change them."""
    monkeypatch.delenv("LLMOPS_MAX_STEPS", raising=False)


def demo_rows(limit: int = 240) -> list[dict]:
    # The raw file is DVC-tracked (absent from a fresh clone); the shipped generator makes it.
    from llmops_engine.data.demo import generate

    rows = generate()[:limit]
    return [{"instruction": r["question"], "input": r.get("context") or "", "output": r["answer"]} for r in rows]


def tuning_setup(root: Path, project: Project, store=None, **training):
    """The tiny demo's Prompt + TuningJob specs (the builtin model under QLoRA, training
    overridden), with a published train split."""
    prompt_doc = yaml.safe_load((TINY_DEMO / "prompt.yaml").read_text())
    tuning_doc = yaml.safe_load((TINY_DEMO / "tuning.yaml").read_text())
    spec = {**tuning_doc["spec"], "dataset": "support-tickets", "prompt": "support-answer"}
    spec["training"] = {**spec.get("training", {}), **training}
    tune = resource("TuningJob", "support-qlora", **spec)
    resources = [resource("Prompt", "support-answer", **prompt_doc["spec"]),
                 resource("Dataset", "support-tickets", **DATASET), tune]
    ctx = make_context(root, resources, project=project, store=store)
    rows = demo_rows()
    publish_dataset(ctx, "support-tickets", eval_rows=rows[:20], train_rows=rows[20:])
    ctx.outputs["Dataset/support-tickets"]["content_hash"] = CONTENT_HASH
    return tune, ctx


def apply_once(tune, ctx):
    staging = ctx.store.staging_dir(ctx.fingerprint(tune.key))
    return TuningController().apply(tune, ctx, staging), staging


def test_qlora_learns_and_records_its_lineage(ray_project, tmp_path):
    tune, ctx = tuning_setup(tmp_path, ray_project, max_steps=30, batch_size=8, save_every_steps=15)
    outputs, staging = apply_once(tune, ctx)

    assert outputs["final_loss"] < 0.7 * outputs["initial_loss"], outputs
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "tokenizer/tokenizer.json",
                 "template.json", "model.json", "lineage.json", "metrics.json", "loss.csv", "loss.png"):
        assert (staging / name).is_file(), name
    fingerprint = ctx.fingerprint(tune.key)
    lineage = json.loads((staging / "lineage.json").read_text())
    prompt_hash = ctx.resources["Prompt/support-answer"].spec.template_hash()
    assert lineage["fingerprint"] == fingerprint and lineage["seed"] == tune.spec.training.seed
    assert lineage["base_model"] == {"ref": "builtin:tiny-llama",
                                     "hash": resolve_base("builtin:tiny-llama", ctx.store.root).hash}
    assert lineage["dataset"]["content_hash"] == CONTENT_HASH
    assert lineage["prompt"]["template_hash"] == prompt_hash == outputs["template_hash"]
    assert lineage["libraries"]["peft"] and lineage["libraries"]["bitsandbytes"]
    model_info = json.loads((staging / "model.json").read_text())
    assert model_info["quantization"]["type"] == "nf4" and model_info["version"] == fingerprint[:12]
    metrics = json.loads((staging / "metrics.json").read_text())
    assert len(metrics["loss_per_step"]) == 30 and metrics["tokens_per_second"] > 0
    assert metrics["peak_memory_mb"] > 0
    assert any("step 30/30" in line for line in ctx.reported)  # live progress reached the user

    model = load_trained(staging)
    assert any(type(m).__name__ == "Linear4bit" for m in model.model.modules())  # really QLoRA
    [gen] = model.generate([model.render("How do I cancel my subscription?", "Product: Nimbus Notes.")], 24)
    assert gen.completion_tokens > 0

    # The same fingerprint again (e.g. apply died after training): the finished run is reused.
    again, _ = apply_once(tune, ctx)
    assert again["final_loss"] == outputs["final_loss"]
    assert [p.name for p in (ctx.store.root / "ray_runs").iterdir()] == [run_name(fingerprint)]
    assert any("resumed from checkpoint at step 30" in line for line in ctx.reported)


def test_more_gpus_than_the_cluster_has_fails_fast(ray_project, tmp_path):
    tune, ctx = tuning_setup(tmp_path, ray_project, max_steps=2)
    spec = tune.spec.model_copy(update={"resources": tune.spec.resources.model_copy(
        update={"workers": 2, "gpus_per_worker": 1})})
    tune = type(tune)(tune.kind, tune.metadata, spec, tune.file, tune.line)
    ctx.fingerprints[tune.key] = "f" * 64
    started = time.monotonic()
    with pytest.raises(PlanError, match=r"resources: the job needs 2 GPU .* the Ray cluster has 0"):
        apply_once(tune, ctx)
    assert time.monotonic() - started < 60 and not (ctx.store.root / "ray_runs").exists()


def test_a_custom_resource_no_node_declares_fails_fast(ray_project, tmp_path):
    tune, ctx = tuning_setup(tmp_path, ray_project, max_steps=2)
    spec = tune.spec.model_copy(update={"resources": tune.spec.resources.model_copy(
        update={"custom": {"trainer_node": 1}})})
    tune = type(tune)(tune.kind, tune.metadata, spec, tune.file, tune.line)
    ctx.fingerprints[tune.key] = "e" * 64
    with pytest.raises(PlanError, match=r"needs 1 trainer_node but the Ray cluster has 0.* 1 trainer_node\)"):
        apply_once(tune, ctx)
    assert not (ctx.store.root / "ray_runs").exists()


def _apply_in_this_process(root: str, project_root: str) -> None:
    """Entry point of the subprocess the kill test SIGKILLs mid-training."""
    project = Project(Path(project_root), ProjectSettings())
    tune, ctx = tuning_setup(Path(root), project, **KILL_TRAINING)
    apply_once(tune, ctx)


KILL_TRAINING = {"max_steps": 40, "batch_size": 8, "save_every_steps": 4}


def _latest_checkpoint_step(runs: Path) -> int:
    steps = [0]
    for path in runs.glob("*/checkpoint_*/state.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except ValueError:
            continue  # Ray is still copying this checkpoint into the run directory
    return max(steps)


def _registered_checkpoint_step(runs: Path) -> int:
    """Latest step Ray Train has registered (written to its snapshot): what a resume can see."""
    steps = [0]
    for path in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(path.read_text())["checkpoint_results"]
        except (ValueError, KeyError):
            continue  # being rewritten
        steps += [r["metrics"]["step"] for r in results]
    return max(steps)


def _start_and_kill_applier(tmp_path: Path, ray_project: Project) -> tuple[int, int]:
    """Run the tuning apply in a subprocess and SIGKILL it once a checkpoint is registered; the
    registered and the latest checkpoint step at that moment."""
    code = f"from tests.test_tuning_e2e import _apply_in_this_process as a; a({str(tmp_path)!r}, {str(ray_project.root)!r})"
    log = (tmp_path / "child.log").open("w")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    runs = tmp_path / "store" / "ray_runs"
    try:
        deadline = time.monotonic() + 300
        while _registered_checkpoint_step(runs) == 0:
            tail = (tmp_path / "child.log").read_text()[-3000:]
            assert child.poll() is None, f"the training subprocess exited before its first checkpoint:\n{tail}"
            assert time.monotonic() < deadline, f"no checkpoint within 300 s:\n{tail}"
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
    registered, killed_at = _registered_checkpoint_step(runs), _latest_checkpoint_step(runs)
    assert 0 < registered <= killed_at < KILL_TRAINING["max_steps"]
    return registered, killed_at


def _training_driver(ctx, tune):
    import ray

    from llmops_engine.detached import NAMESPACE, step_actor_name

    name = step_actor_name(run_name(ctx.fingerprint(tune.key)), ctx.store.ray_storage()[0])
    return ray.get_actor(name, namespace=NAMESPACE)


def _wait_until_gone(ctx, tune) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _training_driver(ctx, tune)
        except ValueError:
            return
        time.sleep(0.2)
    pytest.fail("the training run's actor is still there")


def test_a_killed_apply_leaves_training_running_and_the_next_apply_attaches(ray_project, tmp_path):
    _start_and_kill_applier(tmp_path, ray_project)

    tune, ctx = tuning_setup(tmp_path, ray_project, **KILL_TRAINING)
    outputs, staging = apply_once(tune, ctx)

    assert any("attached to training run" in line for line in ctx.reported), ctx.reported
    metrics = json.loads((staging / "metrics.json").read_text())
    # The first run went on: no second trainer was started (it would have resumed from a checkpoint).
    assert metrics["resumed_from_step"] is None
    assert not any("worker(s) training" in line or "resumed from" in line for line in ctx.reported)
    assert [step for step, _ in metrics["loss_per_step"]] == list(range(1, 41)) and outputs["steps"] == 40
    _wait_until_gone(ctx, tune)  # collected: the run's actor ends


def test_a_lost_training_driver_resumes_from_its_checkpoint(ray_project, tmp_path):
    import ray

    registered, killed_at = _start_and_kill_applier(tmp_path, ray_project)
    tune, ctx = tuning_setup(tmp_path, ray_project, **KILL_TRAINING)
    ray.kill(_training_driver(ctx, tune))  # as if its node had been lost
    _wait_until_gone(ctx, tune)
    runs = tmp_path / "store" / "ray_runs"
    registered = max(registered, _registered_checkpoint_step(runs))

    outputs, staging = apply_once(tune, ctx)

    metrics = json.loads((staging / "metrics.json").read_text())
    resumed = metrics["resumed_from_step"]
    # Resumes from the latest checkpoint Ray Train had registered (one still being persisted when
    # the driver died may be lost), never from scratch.
    assert registered <= resumed and resumed % KILL_TRAINING["save_every_steps"] == 0
    assert [step for step, _ in metrics["loss_per_step"]] == list(range(1, 41))  # history spans both runs
    assert len(list(runs.iterdir())) == 1  # one run folder: resumed under the same name
    assert outputs["steps"] == 40
