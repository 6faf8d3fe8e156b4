"""Resolve a base model reference to a local directory and load models for inference.

    builtin:<name>   materialized once into the artifact store (see builtin.py)
    path:<dir>       a local HF-format model directory (relative to the repository root)
    hf:<org/name>    a hub model, downloaded into the artifact store only when the network
                     is allowed (never in tests: HF_HUB_OFFLINE=1 makes it an error)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ControllerError


class ModelLoadError(ControllerError):
    """A base model or tuned model could not be found or loaded."""


@dataclass(frozen=True)
class BaseModel:
    ref: str
    path: Path
    hash: str  # content hash of the weights (builtin/path) or the hub commit (hf)


def weights_hash(model_dir: Path) -> str:
    """sha256 over the weight and config files of a model directory, in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    for path in files:
        if path.name.startswith("llmops_"):
            continue
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_base(ref: str, store_root: Path, root: Path | None = None) -> BaseModel:
    kind, _, name = ref.partition(":")
    if kind == "builtin":
        from .builtin import MANIFEST, materialize_builtin

        path = materialize_builtin(name, Path(store_root))
        return BaseModel(ref, path, json.loads((path / MANIFEST).read_text())["weights_hash"])
    if kind == "path":
        path = Path(name) if Path(name).is_absolute() else Path(root or Path.cwd()) / name
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{ref}: no HF model directory at {path} (config.json missing)")
        return BaseModel(ref, path, weights_hash(path))
    if kind == "hf":
        return _resolve_hub(ref, name, Path(store_root))
    raise ModelLoadError(f"unknown model reference '{ref}'; use builtin:<name>, path:<dir> or hf:<org/name>")


def _resolve_hub(ref: str, repo_id: str, store_root: Path) -> BaseModel:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = Path(
            snapshot_download(repo_id, cache_dir=store_root / "models" / "hf", local_files_only=offline)
        )
    except Exception as exc:  # offline miss, network or auth failure: all mean "not available here"
        hint = "downloads are disabled (HF_HUB_OFFLINE=1)" if offline else "the download failed"
        raise ModelLoadError(
            f"{ref}: model not available locally and {hint}: {exc}. Download it once with network "
            "access (unset HF_HUB_OFFLINE), or point base_model at a local copy with path:<dir>."
        ) from exc
    return BaseModel(ref, path, f"hf-commit:{path.name}")
