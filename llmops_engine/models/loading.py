"""Resolve a base model reference to a local HF model directory.

    builtin:<name>   materialized once into the artifact store (see builtin.py): tiny-llama
                     (a toy for tests) or smollm2-135m-instruct (real weights from a pip package)
    gguf:<path>      a Llama-family GGUF file in the repository, dequantized once (see gguf.py)
    path:<dir>       a local HF-format model directory (relative to the repository root)
    hf:<org/name>    a hub model from the standard Hugging Face cache (HF_HUB_CACHE, or
                     HF_HOME/hub); downloaded into that cache only when HF_HUB_OFFLINE is unset
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelLoadError
from .gguf import GgufSource
from .weights import weights_hash


@dataclass(frozen=True)
class BaseModel:
    ref: str
    path: Path
    hash: str  # content hash of the weights (builtin/path/gguf) or the hub commit (hf)
    source: dict = field(default_factory=dict)  # lineage of converted files: gguf_sha256, package


def resolve_base(ref: str, store_root: Path, root: Path | None = None) -> BaseModel:
    kind, _, name = ref.partition(":")
    if kind == "builtin":
        from .builtin import MANIFEST, PACKAGED_MODELS, materialize_builtin, packaged_gguf_path

        if name in PACKAGED_MODELS:
            file, package = packaged_gguf_path(name)
            return _from_gguf(GgufSource(ref, file, package), Path(store_root))
        path = materialize_builtin(name, Path(store_root))
        return BaseModel(ref, path, json.loads((path / MANIFEST).read_text())["weights_hash"])
    if kind == "gguf":
        from .gguf import repo_gguf

        return _from_gguf(GgufSource(ref, repo_gguf(name, Path(root or Path.cwd()), ref)), Path(store_root))
    if kind == "path":
        path = Path(name) if Path(name).is_absolute() else Path(root or Path.cwd()) / name
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{ref}: no HF model directory at {path} (config.json missing)")
        return BaseModel(ref, path, weights_hash(path))
    if kind == "hf":
        return _resolve_hub(ref, name)
    raise ModelLoadError(f"unknown model reference '{ref}'; "
                         "use builtin:<name>, gguf:<file>, path:<dir> or hf:<org/name>")


def _from_gguf(source: GgufSource, store_root: Path) -> BaseModel:
    from .gguf import materialize_gguf

    path, manifest = materialize_gguf(source, store_root)
    lineage = {key: manifest[key] for key in ("gguf_file", "gguf_sha256", "package")}
    return BaseModel(source.ref, path, manifest["weights_hash"], lineage)


def hub_cache_dir() -> Path:
    """The standard Hugging Face cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def _resolve_hub(ref: str, repo_id: str) -> BaseModel:
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except Exception as cached_miss:  # huggingface_hub's "not in the cache" errors share no base class
        if offline:
            raise ModelLoadError(
                f"{ref}: not in the Hugging Face cache at {cache} and downloads are disabled (HF_HUB_OFFLINE=1). "
                f"Fill the cache once on a machine with network (`hf download {repo_id}`, then copy {cache}), "
                "point HF_HUB_CACHE at a cache that holds it, or use a local copy with path:<dir>"
            ) from cached_miss
        try:
            path = Path(snapshot_download(repo_id, cache_dir=cache))
        except Exception as exc:  # network, auth, or unknown repository: all mean "not available here"
            raise ModelLoadError(
                f"{ref}: not in the Hugging Face cache at {cache} and the download failed ({type(exc).__name__}: "
                f"{exc}). Check the model id and network access, or use a local copy with path:<dir>"
            ) from exc
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{ref}: the cached snapshot {path} has no config.json (an incomplete download?); "
                             f"download it again with `hf download {repo_id}`")
    return BaseModel(ref, path, f"hf-commit:{path.name}")
