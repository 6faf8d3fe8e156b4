"""Helpers for the evaluation tests: resources, an ApplyContext over a temp store, and
published upstream artifacts (a Dataset's eval split)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmops_engine.controllers.base import ApplyContext
from llmops_engine.project import Project, ProjectSettings
from llmops_engine.specs import KINDS, Metadata
from llmops_engine.specs.resource import Resource
from llmops_engine.state.artifacts import ArtifactStore, LocalStore

PROMPT = {"template": "Q: {instruction}\nA:"}
DATASET = {"source": {"path": "data/x.jsonl"}, "columns": {"instruction": "q", "output": "a"}}


def resource(kind: str, name: str, **spec) -> Resource:
    return Resource(kind, Metadata(name=name), KINDS[kind].model_validate(spec), file="test.yaml", line=1)


def fingerprint_of(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def make_context(root: Path, resources: list[Resource], records=None, project: Project | None = None,
                 store: ArtifactStore | None = None) -> ApplyContext:
    project = project or Project(root, ProjectSettings())
    store = store or LocalStore(str(root / "store"), root / "store")
    fingerprints = {r.key: fingerprint_of(r.key, r.normalized_spec()) for r in resources}
    lines: list[str] = []
    ctx = ApplyContext(project, store, {r.key: r for r in resources}, fingerprints, records or {}, lines.append)
    ctx.reported = lines  # what ctx.report printed, for assertions
    return ctx


def publish_dataset(ctx: ApplyContext, name: str, eval_rows: list[dict], train_rows=()) -> Path:
    """Write a Dataset's published artifacts as the data controller would."""
    directory = ctx.artifact_dir(f"Dataset/{name}")
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx.outputs[f"Dataset/{name}"] = {"train_rows": len(train_rows), "eval_rows": len(eval_rows)}
    return directory


# --- a tuned model without the tuning controller -----------------------------------------
TEMPLATE = {"system": None, "template": "Q: {instruction}\nA:", "template_no_input": None}

# Short canned answers the tiny byte-level model memorizes in a few seconds.
ROWS = [
    {"instruction": "How do I reset my password?", "input": "", "output": "Settings > Security."},
    {"instruction": "Can I get a refund?", "input": "", "output": "Yes, within 14 days."},
    {"instruction": "Where is my invoice?", "input": "", "output": "Billing > History."},
    {"instruction": "When is support open?", "input": "", "output": "Mon-Fri 9-18 CET."},
    {"instruction": "How do I export my data?", "input": "", "output": "Settings > Export."},
    {"instruction": "How do I delete my account?", "input": "", "output": "Account > Delete."},
]


def train_tiny(store_root: Path, out_dir: Path, rows=ROWS, steps: int = 80, lr: float = 3e-3, seed: int = 0,
               base_model: str = "builtin:tiny-llama") -> Path:
    """Full fine-tune of builtin:tiny-llama on `rows` with a plain loop (the whole set is one
    batch), saved as a TuningJob artifact directory (model/, tokenizer/, template.json,
    model.json): just enough training for an evaluation test, not a training recipe.
    `base_model` is what model.json declares as the base (the model an Evaluation compares with)."""
    import torch

    from llmops_engine.evaluation.runner import render
    from llmops_engine.models import load_base
    from llmops_engine.specs.prompt import PromptSpec

    base = load_base("builtin:tiny-llama", store_root)
    model, tokenizer = base.model.train(), base.tokenizer
    ids, labels = [], []
    for row in rows:
        prompt = tokenizer(render(TEMPLATE, row), add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = lambda seqs, value: torch.tensor([s + [value] * (width - len(s)) for s in seqs])  # noqa: E731
    batch = {
        "input_ids": pad(ids, tokenizer.pad_token_id),
        "labels": pad(labels, -100),
        "attention_mask": pad([[1] * len(s) for s in ids], 0),
    }
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core runner: more threads only contend
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir / "model", safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    template_hash = PromptSpec(template=TEMPLATE["template"]).template_hash()
    (out_dir / "template.json").write_text(json.dumps({**TEMPLATE, "template_hash": template_hash}))
    meta = {"base_model": base_model, "method": "full", "quantization": None, "version": "test-tuned"}
    (out_dir / "model.json").write_text(json.dumps(meta))
    return out_dir


def as_model_folder(artifact_dir: Path, out_dir: Path) -> Path:
    """A TuningJob artifact (model/ + tokenizer/) as one HF model folder, usable as path:<dir>."""
    import shutil

    for part in ("model", "tokenizer"):
        shutil.copytree(artifact_dir / part, out_dir, dirs_exist_ok=True)
    return out_dir
