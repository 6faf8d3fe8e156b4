"""The driver side: one TorchTrainer run per TuningJob fingerprint.

The RunConfig name is derived from the fingerprint and the storage path is inside the
artifact store, so re-running the same fingerprint after a crash finds the same run
directory; Train V2's checkpoint manager restores its state from there and the loop
resumes from the latest checkpoint instead of starting a second run.
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


def check_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float, local: bool = False) -> None:
    """Fail fast when the cluster cannot fit the job (Ray would wait forever)."""
    from ..raycluster import check_fits

    check_fits({"GPU": workers * gpus_per_worker, "CPU": workers * cpus_per_worker},
               "the job", local, f"Lower spec.resources ({workers} workers × {cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU)")


def run_training(config: dict, *, name: str, storage: tuple[str, Any], resources: dict, work_dir: Path,
                 report: Callable[[str], None]) -> RunResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from .loop import train_loop_per_worker

    use_gpu = resources["gpus_per_worker"] > 0
    check_resources(**resources)  # the cluster's size only: the controller checked what is free
    per_worker = {"CPU": resources["cpus_per_worker"]}
    if use_gpu:
        per_worker["GPU"] = resources["gpus_per_worker"]
    progress = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config, "use_gpu": use_gpu, "progress": progress},
        scaling_config=ScalingConfig(num_workers=resources["workers"], use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=storage[0],
            storage_filesystem=storage[1],
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    started = time.perf_counter()
    outcome: dict = {}
    thread = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
    thread.start()
    while thread.is_alive():
        _drain(progress, report, wait_s=PROGRESS_WAIT_S)
        thread.join(timeout=0.1)  # paces the loop should the queue actor be gone
    _drain(progress, report, wait_s=0)
    ray.kill(progress.actor)

    if "error" in outcome:
        raise TrainingError(f"training failed: {outcome['error']}") from outcome["error"]
    result = outcome["result"]
    if result.error is not None or result.checkpoint is None:
        raise TrainingError(f"training failed: {result.error or 'no checkpoint was reported'}") from result.error
    target = work_dir / "final-checkpoint"
    shutil.rmtree(target, ignore_errors=True)
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(directory, target)
    state = json.loads((target / STATE_FILE).read_text())
    return RunResult(checkpoint_dir=target, state=state, wall_seconds=time.perf_counter() - started)


def _fit(trainer, outcome: dict) -> None:
    try:
        outcome["result"] = trainer.fit()
    except Exception as exc:  # ray.train.TrainingFailedError and friends
        outcome["error"] = exc


# The driver waits for progress inside the queue actor instead of polling it: on a small
# machine, polling every half second took ~6 % of a core in the driver and as much in the
# actor, beside the training workers (bench/train_bench.py).
PROGRESS_WAIT_S = 2.0


def _drain(progress, report: Callable[[str], None], wait_s: float) -> None:
    """Report queued progress events: the first one waited for up to `wait_s`, then what is there."""
    first = True
    while True:
        try:
            event = progress.get(timeout=wait_s) if first and wait_s else progress.get_nowait()
        except Exception:  # ray.util.queue.Empty, or the queue actor already gone
            return
        first = False
        every = max(1, event.get("total", 1) // 20)  # about 20 progress lines per run
        if event["event"] == "step" and (event["step"] % every == 0 or event["step"] == event["total"]):
            report(f"  step {event['step']}/{event['total']}  loss {event['loss']:.4f}")
        elif event["event"] == "started":
            report(f"  {event['workers']} worker(s) training, {event['threads']} torch threads each")
        elif event["event"] == "notice":
            report(f"  {event['message']}")
        elif event["event"] == "resumed":
            report(f"  resumed from checkpoint at step {event['step']}")
        elif event["event"] == "checkpoint":
            report(f"  checkpoint saved at step {event['step']}")
