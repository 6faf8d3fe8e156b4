"""A model version's engine, started in the replica from its ModelRef.

Every engine is handed the same thing: the version's tokenizer and saved Prompt (what renders
and counts its prompts — identical on every engine, so a model is asked exactly as it was
tuned) and the weights in the engine's own format: the tuned model itself (transformers), the
TuningJob's GGUF export or the base model's GGUF file (llama-cpp), the merged export (vllm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ModelLoadError
from ..config import ModelRef

CONTEXT_FOR_ANSWERS = 1024  # an engine's context beyond the longest prompt accepted (answers are capped lower)


async def start_engine(ref: ModelRef, batching: dict[str, Any], max_prompt_tokens: int) -> tuple[Any, Any]:
    """(the version's PromptedTokenizer, its engine)."""
    context = max_prompt_tokens + CONTEXT_FOR_ANSWERS
    if ref.engine == "llama-cpp":
        from .llama_cpp import LlamaCppEngine

        prompting = _prompting(ref)
        return prompting, LlamaCppEngine(gguf_file(ref), n_ctx=context, end_of_turn=_end_of_turn(prompting),
                                         encode=prompting.encode)
    if ref.engine == "vllm":
        from .vllm import VllmEngine

        prompting = _prompting(ref)
        engine = await VllmEngine.open(merged_dir(ref), ref.version, context, end_of_turn=_end_of_turn(prompting))
        return prompting, engine
    from .decoding import TransformersEngine

    model = load_model(ref)
    return model, TransformersEngine(model, batching["max_batch_size"], batching["batch_wait_timeout_s"])


def load_model(ref: ModelRef):
    """The version's weights in transformers: a TuningJob artifact, or a base model asked with `ref.prompt`."""
    from llmops_engine.models import load_base, load_trained

    if not ref.path:
        return load_base(ref.base, Path(ref.store_root or "."), template=ref.prompt)
    model = load_trained(_artifact(ref))
    if ref.prompt:
        model.use_template(ref.prompt)
    return model


def gguf_file(ref: ModelRef) -> Path:
    """The GGUF a llama-cpp version runs: its TuningJob's export, or the file its base model came from."""
    if ref.path:
        return _artifact(ref) / _export(ref, "gguf")["path"]
    kind, _, name = (ref.base or "").partition(":")
    if kind == "gguf":
        return Path(name)
    if kind == "builtin":
        from llmops_engine.models.builtin import PACKAGED_MODELS, packaged_gguf_path

        if name in PACKAGED_MODELS:
            return packaged_gguf_path(name)[0]
    raise ModelLoadError(f"engine llama-cpp runs GGUF files; {ref.base} is not one (serve a TuningJob that "
                         "exports gguf, or a builtin:smollm2-135m-instruct / gguf: model)")


def merged_dir(ref: ModelRef) -> Path:
    """The full weights a vllm version runs: the TuningJob's merged export (or full fine-tune), or the base model."""
    if not ref.path:
        from llmops_engine.models import resolve_base

        return resolve_base(ref.base, Path(ref.store_root or ".")).path
    artifact = _artifact(ref)
    return artifact / "model" if (artifact / "model").is_dir() else artifact / _export(ref, "merged")["path"]


def _end_of_turn(prompting) -> str | None:
    """The chat template's end-of-turn token as text (another engine's vocabulary finds it by name)."""
    chat = prompting.chat
    return prompting.tokenizer.convert_ids_to_tokens(chat.end_ids[0]) if chat and chat.end_ids else None


def _prompting(ref: ModelRef):
    from llmops_engine.models import resolve_base
    from llmops_engine.models.loaded import PromptedTokenizer, load_trained_prompting

    if ref.path:
        prompting = load_trained_prompting(_artifact(ref))
        if ref.prompt:
            prompting.use_template(ref.prompt)
        return prompting
    from transformers import AutoTokenizer

    base = resolve_base(ref.base, Path(ref.store_root or "."))
    return PromptedTokenizer(AutoTokenizer.from_pretrained(base.path), f"base:{base.hash[:12]}", ref.prompt)


def _artifact(ref: ModelRef) -> Path:
    from llmops_engine.state.stores import object_on_this_node

    return Path(object_on_this_node(ref.store_url, ref.fingerprint, ref.path))


def _export(ref: ModelRef, name: str) -> dict[str, Any]:
    exports_file = _artifact(ref) / "exports.json"
    exports = json.loads(exports_file.read_text()) if exports_file.is_file() else {}
    if name not in exports:
        raise ModelLoadError(f"model version {ref.version} has no '{name}' export; add it to its TuningJob's "
                             "`export` and apply it again")
    return exports[name]
