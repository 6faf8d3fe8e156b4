"""A resumable checkpoint: trainable weights, optimizer, scheduler, RNG state and step.

The final checkpoint also holds the exportable result (`adapter/` via peft's
save_pretrained, or `model/` for a full fine-tune), so the driver only copies it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

STATE_FILE = "state.json"


def save(directory: Path, model, optimizer, scheduler, state: dict) -> None:
    import numpy as np
    import torch

    from .model import trainable_state

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(trainable_state(_unwrap(model)), directory / "trainable.pt")
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, directory / "rng.pt")
    (directory / STATE_FILE).write_text(json.dumps(state))


def restore(directory: Path, model, optimizer, scheduler) -> dict:
    """Load a checkpoint into live objects; returns its state (step, loss history...)."""
    import numpy as np
    import torch

    weights = torch.load(directory / "trainable.pt", map_location="cpu")
    result = _unwrap(model).load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not match the model: unexpected {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", map_location="cpu"))
    rng = torch.load(directory / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return json.loads((directory / STATE_FILE).read_text())


def export_model(directory: Path, model, method: str) -> None:
    """The shippable weights: the peft adapter (safetensors) or the full model."""
    target = directory / ("model" if method == "full" else "adapter")
    _unwrap(model).save_pretrained(target, safe_serialization=True)


def _unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel wraps the model
