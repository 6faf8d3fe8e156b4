"""Training metrics next to the adapter: loss.csv, loss.png, metrics.json content."""

from __future__ import annotations

import csv
from pathlib import Path


def write_loss_curve(losses: list[list[float]], out_dir: Path, title: str) -> None:
    with (out_dir / "loss.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows([int(step), f"{loss:.6f}"] for step, loss in losses)

    import matplotlib

    matplotlib.use("Agg")  # no display on CI runners or Ray workers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot([s for s, _ in losses], [v for _, v in losses], linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (response tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out_dir / "loss.png")
    plt.close(figure)


def training_metrics(state: dict, wall_seconds: float) -> dict:
    losses = [loss for _, loss in state["losses"]]
    head = losses[: max(1, len(losses) // 20)]  # smooth single-step noise at both ends
    tail = losses[-max(1, len(losses) // 20):]
    train_seconds = state.get("train_seconds") or wall_seconds
    return {
        "steps": state["step"],
        "initial_loss": round(sum(head) / len(head), 6),
        "final_loss": round(sum(tail) / len(tail), 6),
        "loss_per_step": [[int(s), round(v, 6)] for s, v in state["losses"]],
        "tokens": state["tokens"],
        "tokens_per_second": round(state["tokens"] / train_seconds, 1) if train_seconds else None,
        "train_seconds": round(train_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "median_step_seconds": _median(state.get("step_seconds") or []),
        "peak_memory_mb": round(state.get("peak_memory_mb", 0.0), 1),
        "resumed_from_step": state.get("resumed_from"),
        "nodes": state.get("nodes", []),  # node IP of each training worker (rank order)
        "truncated_rows": state.get("truncated_rows", 0),  # answer end cut at max_seq_len
        "dropped_rows": state.get("dropped_rows", 0),  # no answer token within max_seq_len
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 4)
