"""Answers already given: the same prompt, asked of the same model with the same greedy settings,
is answered once per machine.

Two Evaluations that score the same system on the same questions (a gate and a comparison, a
threshold edit, a new variant beside old ones) reuse each other's answers instead of decoding
again. The key is what decides the answer: the model as files (a tuned artifact's weights and
tokenizer, hashed: a version names a spec, and the same spec trained twice gives other weights;
a base model's weights hash), the libraries that run it, the prompt exactly as rendered (template,
chat template and retrieved context included), the generation settings, the device and its thread
count. Sampled generation is never reused (a row's sample depends on what the rest of its batch
drew), and an evaluation that reports latency reuses nothing it decodes: a latency is measured
now, not remembered.

Batch composition is not in the key: a reused answer was decoded beside other prompts than it
would be now. Measured on the demo, that changed nothing: answers decoded in a 92-example run and
in a 32-example subset were identical (64 of 64) and their losses agreed to 3e-6.
Lives on the evaluation's worker: one JSON file per model, merged and replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

FORMAT = 1  # in every key: a new entry layout never reads an old one
MAX_ANSWERS_PER_MODEL = 50_000  # oldest dropped first: a bound on the file, not a working limit
MODEL_FILES = ("adapter", "model", "tokenizer", "model.json")  # what a tuned artifact answers with


def model_identity(model_version: str, model_dir: str | None) -> str:
    """What decides a model's answers besides the prompt and the settings."""
    files = _files_sha256(Path(model_dir)) if model_dir else None
    return _digest("model", model_version, files, _libraries())


def decode_key(identity: str, device: str, threads: int, generation: dict, prompt: str) -> str | None:
    """The key of a decoded answer, or None when it must not be reused (sampling)."""
    if generation["do_sample"]:
        return None
    settings = {"max_new_tokens": generation["max_new_tokens"], "batch_size": generation["batch_size"]}
    return _digest("decode", identity, device, threads, settings, prompt)


def loss_key(identity: str, device: str, prompt: str, expected: str) -> str:
    return _digest("loss", identity, device, prompt, expected)


class AnswerBook:
    """The answers of one model. `reuse=False` keeps new answers without handing out old ones."""

    def __init__(self, directory: Path, identity: str, reuse: bool = True) -> None:
        self.identity = identity
        self.path = directory / f"{identity[:32]}.json"
        self.answers: dict[str, dict] = _read(self.path) if reuse else {}
        self.added: dict[str, dict] = {}

    def answer(self, key: str | None) -> dict | None:
        """A decoded answer {output, tokens, latency_ms}, or None (none kept, or not usable)."""
        found = self.answers.get(key) if key is not None else None
        usable = (isinstance(found, dict) and isinstance(found.get("output"), str)
                  and isinstance(found.get("tokens"), int) and isinstance(found.get("latency_ms"), (int, float)))
        return found if usable else None

    def loss(self, key: str) -> float | None:
        found = self.answers.get(key)
        value = found.get("loss") if isinstance(found, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def put(self, key: str | None, entry: dict) -> None:
        if key is not None:
            self.answers[key] = self.added[key] = entry

    def save(self) -> None:
        """Merge what was added into the file as it is now (another evaluation may have written
        it meanwhile), then replace it in one step."""
        if not self.added:
            return
        merged = {**_read(self.path), **self.added}
        kept = dict(list(merged.items())[-MAX_ANSWERS_PER_MODEL:])
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


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _files_sha256(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        top = model_dir / name
        for path in sorted([top] if top.is_file() else top.rglob("*") if top.is_dir() else []):
            if path.is_file():
                digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
                with path.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _libraries() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _read(path: Path) -> dict[str, dict]:
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: answer again
    return answers if isinstance(answers, dict) else {}
