"""Builtin base models: small Llama-architecture models built from a config, no download.

A builtin model is materialized once into the artifact store
(`<store>/models/builtin/<name>/`, a regular HF model directory with the byte-level
tokenizer) and reused by every later run. Its weights are a deterministic function of
the config and seed, so two machines materialize byte-identical models.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .tokenizer import VOCAB_SIZE

# hidden 128 / 4 layers / 4 heads: ~1M parameters, tunes in about a minute on 2 CPU cores.
BUILTIN_CONFIGS: dict[str, dict] = {
    "tiny-llama": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
        "seed": 1234,
    },
}
MANIFEST = "llmops_model.json"


def builtin_dir(name: str, store_root: Path) -> Path:
    return Path(store_root) / "models" / "builtin" / name


def materialize_builtin(name: str, store_root: Path) -> Path:
    """The builtin model's directory, creating it on first use."""
    from filelock import FileLock

    if name not in BUILTIN_CONFIGS:
        from .loading import ModelLoadError

        raise ModelLoadError(f"unknown builtin model '{name}'; available: {', '.join(BUILTIN_CONFIGS)}")
    target = builtin_dir(name, store_root)
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MANIFEST).is_file():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _build(name, staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(name: str, out_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .loading import weights_hash
    from .tokenizer import build_byte_tokenizer

    settings = dict(BUILTIN_CONFIGS[name])
    seed = settings.pop("seed")
    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **settings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar for a few-MB file is noise in apply's output
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    manifest = {"ref": f"builtin:{name}", "seed": seed, "weights_hash": weights_hash(out_dir)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
