"""The applier's side of one TorchTrainer run per TuningJob fingerprint.

The run is driven by a detached step (detached.py) named after the run and its store, so it
outlives the `llmops apply` that started it: `run_training` attaches to the run already going
under that name or starts it, relays its progress, and collects its final checkpoint; `drive`
is what the step's actor runs.

The RunConfig name is derived from the fingerprint and the storage path is inside the
artifact store, so a run whose actor died (a lost node) is restarted under the same name;
Train V2's checkpoint manager restores its state from there and the loop resumes from the
latest checkpoint instead of starting from scratch.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import TrainingError
from .checkpoint import STATE_FILE


@dataclass
class RunResult:
    checkpoint_dir: Path  # final checkpoint, copied out of Ray's storage
    state: dict  # step, losses, tokens, train_seconds, peak_memory_mb, resumed_from
    wall_seconds: float


def run_name(fingerprint: str, max_steps_cap: int | None = None) -> str:
    # A CI-capped run must never be resumed as (or mistaken for) the full run.
    return f"tune-{fingerprint[:16]}" + (f"-cap{max_steps_cap}" if max_steps_cap else "")


def check_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float,
                    custom: dict[str, float] | None = None, local: bool = False) -> None:
    """Fail fast when the cluster cannot fit the job (Ray would wait forever)."""
    from ..raycluster import check_fits

    needs = {"GPU": workers * gpus_per_worker, "CPU": workers * cpus_per_worker}
    needs.update({name: workers * amount for name, amount in (custom or {}).items()})
    check_fits(needs, "the job", local,
               f"Lower spec.resources ({workers} workers × {cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU"
               + "".join(f", {amount:g} {name}" for name, amount in (custom or {}).items()) + ")")


def run_training(config: dict, *, name: str, storage: tuple[str, Any], resources: dict, local: bool,
                 work_dir: Path, report: Callable[[str], None]) -> RunResult:
    """Attach to the run `name` (started by an earlier apply) or start it, as a detached step
    (detached.py); wait for it with progress; return its final checkpoint, copied out of the store.
    `local`: the engine's own head (what is free now must fit a new run; Ctrl-C stops it)."""
    from ..detached import run_detached

    per_worker = {"CPU": resources["cpus_per_worker"], **resources.get("custom", {})}
    if resources["gpus_per_worker"]:
        per_worker["GPU"] = resources["gpus_per_worker"]
    checkpoint, seconds = run_detached(
        name, storage[0], "llmops_engine.training.run:drive", (config, name, storage, resources["workers"], per_worker),
        report=report, error=TrainingError, before_start=lambda: check_resources(**resources, local=local),
        describe=_progress_line, what="training run", outlive_interrupt=not local)
    target = work_dir / "final-checkpoint"
    shutil.rmtree(target, ignore_errors=True)
    with checkpoint.as_directory() as directory:
        shutil.copytree(directory, target)
    state = json.loads((target / STATE_FILE).read_text())
    return RunResult(checkpoint_dir=target, state=state, wall_seconds=seconds)


# --- in the detached step's actor --------------------------------------------------------
def drive(config: dict, name: str, storage: tuple[str, Any], workers: int, per_worker: dict[str, float], emit) -> tuple:
    """Run (or resume) the TorchTrainer run; its final checkpoint and how long the run took."""
    import ray
    from ray.util.queue import Queue

    started = time.perf_counter()
    progress = Queue(actor_options={"num_cpus": 0})
    trainer = _trainer({**config, "progress": progress}, name, storage, workers, per_worker)
    outcome: dict = {}
    fitting = threading.Thread(target=_fit_into, args=(trainer, outcome), daemon=True)
    fitting.start()
    while fitting.is_alive():
        _relay(progress, emit, QUEUE_WAIT_S)
        fitting.join(timeout=0.1)  # paces the loop should the queue actor be gone
    _relay(progress, emit, 0)
    ray.kill(progress.actor)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if result.error is not None or result.checkpoint is None:
        raise TrainingError(f"training failed: {result.error or 'no checkpoint was reported'}")
    return result.checkpoint, time.perf_counter() - started


# Workers push progress to a queue actor; the step's thread moves it to the appliers.
QUEUE_WAIT_S = 1.0


def _trainer(config: dict, name: str, storage: tuple[str, Any], workers: int, per_worker: dict[str, float]):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .loop import train_loop_per_worker

    use_gpu = per_worker.get("GPU", 0) > 0
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config, "use_gpu": use_gpu},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=storage[0],
            storage_filesystem=storage[1],
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
        ),
    )


def _fit_into(trainer, outcome: dict) -> None:
    try:
        outcome["result"] = trainer.fit()
    except Exception as exc:  # ray.train.TrainingFailedError and friends
        outcome["error"] = exc


def _relay(progress, emit, wait_s: float) -> None:
    """Queued progress events: the first one waited for up to `wait_s`, then what is there."""
    try:
        emit(progress.get(timeout=wait_s) if wait_s else progress.get_nowait())
        while True:
            emit(progress.get_nowait())
    except Exception:  # ray.util.queue.Empty, or the queue actor already gone
        return


def _progress_line(event: dict) -> str | None:
    if event["event"] == "step":
        every = max(1, event.get("total", 1) // 20)  # about 20 progress lines per run
        if event["step"] % every == 0 or event["step"] == event["total"]:
            return f"  step {event['step']}/{event['total']}  loss {event['loss']:.4f}"
        return None
    if event["event"] == "started":
        return f"  {event['workers']} worker(s) training, {event['threads']} torch threads each"
    if event["event"] == "notice":
        return f"  {event['message']}"
    if event["event"] == "resumed":
        return f"  resumed from checkpoint at step {event['step']}"
    if event["event"] == "checkpoint":
        return f"  checkpoint saved at step {event['step']}"
    return None
