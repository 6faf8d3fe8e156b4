"""TuningJob controller: fine-tune a base model on a Dataset with Ray Train.

The recipe, top to bottom:
  0. connect to the Ray cluster
  1. inputs: train split of the Dataset, the Prompt spec, the resolved base model
  2. examples rendered with the Prompt (what serving will send), response-only labels
  3. one TorchTrainer run named after the fingerprint, checked to fit the cluster, driven by a
     detached actor (a killed apply's run goes on; the next apply attaches; resumes after a crash)
  4. artifacts into staging: adapter/ (or model/), tokenizer/, template.json, model.json,
     lineage.json, metrics.json, loss.csv, loss.png, exports.json, optional merged/ and
     gguf/model.<type>.gguf (verified against the merged model before anything is published)

Heavy libraries (torch, ray, transformers, peft) are imported inside the functions: the
planner may import this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import TrainingError
from ..specs.resource import Resource
from .base import ApplyContext, BaseController, Outputs

MAX_STEPS_ENV = "LLMOPS_MAX_STEPS"  # CI cap on optimizer steps; recorded in metrics when used
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "ray", "accelerate")


class TuningController(BaseController):
    kind = "TuningJob"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        spec = resource.spec
        fingerprint = ctx.fingerprint(resource.key)
        dataset_key, prompt_key = f"Dataset/{spec.dataset}", f"Prompt/{spec.prompt}"

        # 0. the cluster (a new run is checked to fit it before it starts: Ray would wait forever)
        from .. import raycluster
        from ..training.run import run_name, run_training

        cluster = raycluster.connect(ctx.project)

        # 1. inputs
        rows = _read_train_rows(ctx.artifact_dir(dataset_key) / "train.jsonl", dataset_key)
        prompt_spec = ctx.resources[prompt_key].spec
        from ..models import resolve_base

        base = resolve_base(spec.base_model, ctx.store.root, ctx.project.root)
        chat = _chat_template(prompt_spec, base)
        if "gguf" in spec.export:  # refused now rather than after training
            from ..models.gguf_export import check_base, tokenizer_source

            check_base(base.path, tokenizer_source(spec.base_model, ctx.project.root))

        # 2. examples
        from ..training.data import render_pairs, steps_per_epoch

        pairs = render_pairs(rows, prompt_spec, chat)
        training = spec.training
        per_epoch = steps_per_epoch(len(pairs), training.batch_size, spec.resources.workers,
                                    training.gradient_accumulation_steps)
        total_steps, cap = _total_steps(training.max_steps or training.epochs * per_epoch)

        # 3. train on Ray
        quantization = spec.effective_quantization()
        config = {
            "base_path": str(base.path),
            "base_model": spec.base_model,
            "method": spec.method,
            "quantization": quantization.model_dump() if quantization else None,
            "lora": spec.lora.model_dump(),
            "training": training.model_dump(),
            "pairs": pairs,
            "prompt_format": prompt_spec.format,
            "total_steps": total_steps,
        }
        name = run_name(fingerprint, cap)
        ctx.report(f"{resource.key}: {spec.method} on {spec.base_model}, {len(pairs)} examples, "
                   f"{total_steps} steps, Ray run {name} at {cluster.address}")
        with tempfile.TemporaryDirectory(prefix="llmops-tune-") as work:
            result = run_training(config, name=name, storage=ctx.store.ray_storage(),
                                  resources=spec.resources.model_dump(), local=ctx.project.ray_address() is None,
                                  work_dir=Path(work), report=ctx.report)
            weights_dir = "model" if spec.method == "full" else "adapter"
            shutil.move(str(result.checkpoint_dir / weights_dir), staging / weights_dir)

        # 4. artifacts
        return _write_artifacts(resource, ctx, staging, base, prompt_spec.saved(chat), result, cap)


def _read_train_rows(path: Path, dataset_key: str) -> list[dict]:
    from ..training.data import read_rows

    try:
        rows = read_rows(path)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read the train split of {dataset_key} ({path}): {exc}; re-apply the dataset") from exc
    if not rows:
        raise TrainingError(f"{dataset_key} has an empty train split; nothing to tune on")
    return rows


def _chat_template(prompt_spec, base):
    """The base model's own chat template when the Prompt is a chat prompt (else None);
    a model without one is a ChatTemplateError that says what to use instead."""
    if prompt_spec.format != "chat":
        return None
    from transformers import AutoTokenizer

    from ..models.chat import chat_template_of

    return chat_template_of(AutoTokenizer.from_pretrained(base.path), base.ref)


def _total_steps(planned: int) -> tuple[int, int | None]:
    raw = os.environ.get(MAX_STEPS_ENV)
    if not raw:
        return planned, None
    if not raw.isdigit() or int(raw) < 1:
        raise TrainingError(f"{MAX_STEPS_ENV} must be a positive integer, got {raw!r}")
    return min(planned, int(raw)), int(raw)


def _write_artifacts(resource, ctx, staging: Path, base, template: dict, result, cap) -> Outputs:
    from transformers import AutoTokenizer

    from ..specs.prompt import text_sha256
    from ..training.report import training_metrics, write_loss_curve

    spec = resource.spec
    fingerprint = ctx.fingerprint(resource.key)
    version = fingerprint[:12]
    quantization = spec.effective_quantization()

    AutoTokenizer.from_pretrained(base.path).save_pretrained(staging / "tokenizer")
    model_info = {"base_model": spec.base_model, "base_path": str(base.path), "method": spec.method,
                  "quantization": quantization.model_dump() if quantization else None, "version": version}
    metrics = training_metrics(result.state, result.wall_seconds)
    metrics["max_steps_cap"] = cap
    _write_json(staging / "template.json", template)
    _write_json(staging / "model.json", model_info)
    _write_json(staging / "metrics.json", metrics)
    write_loss_curve(result.state["losses"], staging, f"{resource.name} ({version})")
    exports = _write_exports(resource, ctx, staging, base)
    lineage = _lineage(resource, ctx, base, template["template_hash"], fingerprint, cap)
    _write_json(staging / "lineage.json", {**lineage, "exports": exports})
    ctx.report(f"{resource.key}: loss {metrics['initial_loss']:.3f} -> {metrics['final_loss']:.3f} "
               f"in {metrics['steps']} steps ({metrics['train_seconds']:.0f}s), model version {version}")
    chat = {"chat_template_sha256": text_sha256(template["chat_template"])} if template.get("chat_template") else {}
    return {
        **chat,  # a Deployment's chat Prompt is compared with this model through the same template
        "model_version": version,
        "template_hash": template["template_hash"],
        "initial_loss": metrics["initial_loss"],
        "final_loss": metrics["final_loss"],
        "steps": metrics["steps"],
        "method": spec.method,
        "base_model": spec.base_model,
        "weights": "model/" if spec.method == "full" else "adapter/",
        "exports": _exports_summary(exports),
    }


def _lineage(resource, ctx, base, template_hash: str, fingerprint: str, cap) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    dataset_key = f"Dataset/{resource.spec.dataset}"
    try:
        dataset_hash = ctx.outputs_of(dataset_key).get("content_hash")
    except KeyError:
        dataset_hash = None
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "resource": resource.key,
        "fingerprint": fingerprint,
        "base_model": {"ref": base.ref, "hash": base.hash, **base.source},
        "dataset": {"resource": dataset_key, "fingerprint": ctx.fingerprint(dataset_key), "content_hash": dataset_hash},
        "prompt": {"resource": f"Prompt/{resource.spec.prompt}", "template_hash": template_hash},
        "seed": resource.spec.training.seed,
        "max_steps_cap": cap,
        "libraries": versions,
    }


def _write_exports(resource, ctx, staging: Path, base) -> dict:
    """Each export the spec asks for, with its digest, also written to exports.json.

    The GGUF is written from the full-precision merged model before merged/ turns it to fp16.
    """
    from ..models.weights import weights_hash

    spec = resource.spec
    weights_dir = "model" if spec.method == "full" else "adapter"
    exports: dict[str, dict] = {}
    if "adapter" in spec.export:
        exports[weights_dir] = {"path": f"{weights_dir}/", "sha256": weights_hash(staging / weights_dir)}
    model = _merged_model(staging, base.path, spec.method) if {"merged", "gguf"} & set(spec.export) else None
    if "gguf" in spec.export:
        from ..models.gguf_export import export_gguf, tokenizer_source

        source = tokenizer_source(spec.base_model, ctx.project.root)
        exports["gguf"] = export_gguf(model, staging, spec.gguf_type, staging / "tokenizer", source, resource.name)
        gguf = exports["gguf"]
        ctx.report(f"{resource.key}: gguf export {gguf['type']}, {gguf['bytes'] / 1e6:.0f} MB, verified: max logit "
                   f"difference {gguf['max_logit_diff']:.3g} (tolerance {gguf['tolerance']:.3g})")
    if "merged" in spec.export:
        _export_merged(staging, base.path, model)
        exports["merged"] = {"path": "merged/", "sha256": weights_hash(staging / "merged")}
    _write_json(staging / "exports.json", exports)
    return exports


def _exports_summary(exports: dict) -> dict:
    """What the state record keeps of exports.json: enough for `status` and to find each file."""
    kept = ("path", "sha256", "type", "max_logit_diff")
    return {name: {key: entry[key] for key in kept if key in entry} for name, entry in exports.items()}


def _merged_model(staging: Path, base_path: Path, method: str = "lora"):
    """The tuned model in full precision: model/ for a full fine-tune, else the adapter folded into
    the base loaded in full precision (merging into 4-bit weights would re-quantize)."""
    from peft import PeftModel

    from ..models.loaded import load_causal_lm

    if method == "full":
        return load_causal_lm(staging / "model")
    return PeftModel.from_pretrained(load_causal_lm(base_path), staging / "adapter").merge_and_unload()


def _export_merged(staging: Path, base_path: Path, merged=None) -> None:
    """fp16 weights with the adapter merged in, for runtimes without peft (converts `merged` in place)."""
    import torch

    merged = merged if merged is not None else _merged_model(staging, base_path)
    merged.to(torch.float16).save_pretrained(staging / "merged", safe_serialization=True)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
