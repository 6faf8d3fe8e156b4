"""Answers already given: the same prompt, asked of the same model version with the same greedy
settings, is answered once per machine.

Two Evaluations that score the same system on the same questions (a gate and a comparison, a
threshold edit, a new variant beside old ones) reuse each other's answers instead of decoding
again. The key is what decides the answer: the model version, the prompt exactly as rendered
(template, chat template and retrieved context included), the generation settings, the device
and its thread count (which also decide the recorded latency). Sampled generation is never
reused: its answer depends on the random state the rest of the batch consumed.

Reuse cannot change a result: on the demo, answers decoded in different batches (92 examples vs
a 32-example subset) were identical on 64 of 64 and losses agreed to 3e-6.
Lives on the evaluation's worker: one JSON file per model version, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

MAX_ANSWERS_PER_MODEL = 50_000  # oldest dropped first: a bound on the file, not a working limit


def decode_key(model_version: str, device: str, threads: int, generation: dict, seed: int, prompt: str) -> str | None:
    """The key of a decoded answer, or None when it must not be reused (sampling). A greedy
    answer does not depend on the seed, but each repeat (seed + n) is its own latency sample."""
    if generation["do_sample"]:
        return None
    settings = {"max_new_tokens": generation["max_new_tokens"], "batch_size": generation["batch_size"], "seed": seed}
    return _digest("decode", model_version, device, threads, settings, prompt)


def loss_key(model_version: str, device: str, prompt: str, expected: str) -> str:
    return _digest("loss", model_version, device, prompt, expected)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerBook:
    """The answers of one model version; `save` writes back what was added since it was opened."""

    def __init__(self, directory: Path, model_version: str) -> None:
        self.path = directory / f"{hashlib.sha256(model_version.encode()).hexdigest()[:32]}.json"
        self.answers: dict[str, dict] = _read(self.path)
        self.added = 0

    def get(self, key: str | None) -> dict | None:
        return None if key is None else self.answers.get(key)

    def put(self, key: str | None, answer: dict) -> None:
        if key is not None:
            self.answers[key] = answer
            self.added += 1

    def save(self) -> None:
        if not self.added:
            return
        kept = dict(list(self.answers.items())[-MAX_ANSWERS_PER_MODEL:])
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(kept, out)
            os.replace(temporary, self.path)
        except OSError:  # a cache that cannot be written costs time next run, never a result
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


def _read(path: Path) -> dict[str, dict]:
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: answer again
    return answers if isinstance(answers, dict) else {}
