"""The training loop each Ray Train worker runs.

It resumes from `ray.train.get_checkpoint()` when the run (same RunConfig name and
storage path) already reported one, so a killed apply continues where it stopped.
Batches are a pure function of the step (data.batch_indices), so a resumed run sees
the same data order as an uninterrupted one.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path


def train_loop_per_worker(config: dict) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # workers never download
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import ray.train
    import torch
    from transformers import AutoTokenizer, get_scheduler
    from transformers.utils import logging as hf_logging

    from ..errors import TrainingError
    from ..models.tokenizer import ensure_pad_token
    from . import checkpoint
    from .data import answer_end_ids, batch_indices, collate, encode_examples
    from .model import build_trainable_model

    hf_logging.disable_progress_bar()
    train = config["training"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = f"cuda:{context.get_local_rank()}" if config["use_gpu"] else "cpu"
    torch.manual_seed(train["seed"])  # identical adapter init on every worker

    base_path = _base_on_this_node(config)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(base_path))
    pad_id = tokenizer.pad_token_id
    end_ids = answer_end_ids(tokenizer, config.get("prompt_format", "text"), config["base_model"])
    encoded = encode_examples(tokenizer, config["pairs"], train["max_seq_len"], end_ids)
    if not encoded.examples:
        raise TrainingError(f"all {encoded.dropped_rows} rows have prompts of max_seq_len "
                            f"({train['max_seq_len']}) tokens or more, leaving no answer to train on; "
                            "raise training.max_seq_len")
    examples = encoded.examples

    model = build_trainable_model(base_path, config["method"], config["quantization"],
                                  config["lora"], device)
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train["learning_rate"], weight_decay=train["weight_decay"])
    total_steps = config["total_steps"]
    scheduler = get_scheduler(train["lr_scheduler"], optimizer,
                              num_warmup_steps=int(train["warmup_ratio"] * total_steps),
                              num_training_steps=total_steps)

    state = {"step": 0, "losses": [], "step_seconds": [], "tokens": 0, "train_seconds": 0.0, "resumed_from": None,
             "truncated_rows": encoded.truncated_rows, "dropped_rows": encoded.dropped_rows}
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as directory:
            state = checkpoint.restore(Path(directory), model, optimizer, scheduler)
        state["resumed_from"] = state["step"]
        state.setdefault("step_seconds", [])
        _progress(config, {"event": "resumed", "step": state["step"]})
    state["nodes"] = _node_ips(world)  # where this (last) run of the job trained, rank by rank

    accumulation = train["gradient_accumulation_steps"]
    started = time.perf_counter()
    if rank == 0:
        _progress(config, {"event": "started", "workers": world, "threads": torch.get_num_threads()})
        if encoded.summary(train["max_seq_len"]):
            _progress(config, {"event": "notice", "message": encoded.summary(train["max_seq_len"])})
    for step in range(state["step"], total_steps):
        step_started = time.perf_counter()
        step_loss = 0.0
        for micro in range(accumulation):
            indices = batch_indices(step, micro, len(examples), train["batch_size"], rank, world,
                                    accumulation, train["seed"])
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
            loss = model(**batch).loss / accumulation
            loss.backward()
            step_loss += loss.item()
            state["tokens"] += int(batch["attention_mask"].sum()) * world
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state["step"] = step + 1
        state["losses"].append([step + 1, step_loss])
        state["step_seconds"].append(time.perf_counter() - step_started)
        if rank == 0:
            _progress(config, {"event": "step", "step": step + 1, "total": total_steps, "loss": step_loss})
        final = step + 1 == total_steps
        if final or (step + 1) % train["save_every_steps"] == 0:
            state["train_seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            _report(model, optimizer, scheduler, state, config, rank, final, device)

    if state["step"] == total_steps and resume is not None and state["resumed_from"] == total_steps:
        # Training had already finished before a crash: re-report so the run has a result.
        _report(model, optimizer, scheduler, state, config, rank, True, device)


def _base_on_this_node(config: dict) -> Path:
    """The driver's base model dir, or (a node of a cluster without it) the same ref
    resolved here: builtin models materialize identically on every node."""
    path = Path(config["base_path"])
    if (path / "config.json").is_file():
        return path
    from ..models import resolve_base
    from ..state.stores import node_cache_dir

    return resolve_base(config["base_model"], node_cache_dir()).path


def _node_ips(world: int) -> list[str]:
    """The IP of the node each rank runs on (a collective: every rank calls it)."""
    import ray

    ip = ray.util.get_node_ip_address()
    if world == 1:
        return [ip]
    import torch.distributed

    ips: list[str | None] = [None] * world
    torch.distributed.all_gather_object(ips, ip)
    return [str(each) for each in ips]


def _report(model, optimizer, scheduler, state: dict, config: dict, rank: int, final: bool, device: str) -> None:
    """Every worker reports (Train V2 requires it); rank 0 attaches the checkpoint."""
    import ray.train

    from . import checkpoint

    state["peak_memory_mb"] = _peak_memory_mb(device)
    metrics = {"step": state["step"], "loss": state["losses"][-1][1] if state["losses"] else None, "final": final}
    with tempfile.TemporaryDirectory(prefix="llmops-ckpt-") as directory:
        result = None
        if rank == 0:
            checkpoint.save(Path(directory), model, optimizer, scheduler, state)
            if final:
                checkpoint.export_model(Path(directory), model, config["method"])
            result = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=result)
    if rank == 0:
        _progress(config, {"event": "checkpoint", "step": state["step"]})


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _progress(config: dict, event: dict) -> None:
    queue = config.get("progress")
    if queue is not None:
        try:
            queue.put_nowait(event)
        except Exception:  # progress display must never break training
            pass
