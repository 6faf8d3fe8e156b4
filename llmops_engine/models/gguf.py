"""GGUF checkpoints as base models: checked, dequantized once, kept as a safetensors folder.

Real pretrained weights reach this machine inside GGUF files (a pip package ships one,
or a repository commits one). Training and serving need a regular HF model folder, so
a GGUF is converted once into `<store>/models/gguf/<sha256 of the file>/` and every later
run loads that folder (a fraction of a second instead of half a minute of dequantizing).
Keying by the file's sha256 means a cluster and CI that share the artifact store convert
each file once, and a changed file can never be served from a stale folder. The folder is
built in a temporary directory and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..digests import file_sha256
from ..errors import ModelLoadError
from .tokenizer import ensure_pad_token
from .weights import weights_hash

# llama.cpp writes "llama" for the whole family (Llama 2/3, SmolLM, TinyLlama, most Mistral files).
LLAMA_FAMILY = ("llama", "mistral")
GGUF_PACKAGE_INSTALL = "pip install gguf"
MANIFEST = "llmops_model.json"


@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF came from, as lineage records it."""

    ref: str
    path: Path
    package: str | None = None  # "name==version" when a pip package ships the file


def repo_gguf(relative: str, root: Path, ref: str) -> Path:
    """The GGUF file a `gguf:<path>` reference names, confined to the repository."""
    from ..paths import is_glob, match_files

    if is_glob(relative):
        raise ModelLoadError(f"{ref}: name one .gguf file, not a pattern")
    matches = match_files(Path(root), relative)
    if matches.problem:
        raise ModelLoadError(f"{ref}: {matches.problem}")
    if not matches.files:
        raise ModelLoadError(f"{ref}: no file '{relative}' in the repository ({root}); commit the .gguf "
                             "file or fix the path (it is relative to the repository root)")
    return matches.files[0]


def materialize_gguf(source: GgufSource, store_root: Path) -> tuple[Path, dict]:
    """The HF model folder converted from `source`, and its manifest; converts on first use."""
    from filelock import FileLock

    file_sha = file_sha256(source.path)
    target = Path(store_root) / "models" / "gguf" / file_sha
    if (target / MANIFEST).is_file():
        return target, json.loads((target / MANIFEST).read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / MANIFEST).is_file():  # else another process converted it while we waited
            staging = Path(tempfile.mkdtemp(prefix=f".{file_sha[:12]}-", dir=target.parent))
            try:
                _convert(source, file_sha, staging)
                _readable_by_all(staging)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target, json.loads((target / MANIFEST).read_text())


def _readable_by_all(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; a shared store serves other users' jobs too."""
    folder.chmod(0o755)
    for file in folder.iterdir():
        file.chmod(0o644)


def _convert(source: GgufSource, file_sha: str, out_dir: Path) -> None:
    architecture = _architecture(source)
    model, tokenizer = _load_dequantized(source)
    model.should_save_on_this_rank = lambda is_main_process: True  # any rank converts for its node (see builtin.py)
    model.save_pretrained(out_dir, safe_serialization=True)
    ensure_pad_token(tokenizer).save_pretrained(out_dir)
    manifest = {
        "ref": source.ref,
        "gguf_file": source.path.name,
        "gguf_sha256": file_sha,
        "package": source.package,
        "architecture": architecture,
        "weights_hash": weights_hash(out_dir),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _architecture(source: GgufSource) -> str:
    """The file's `general.architecture`, refusing anything that is not a complete Llama-family GGUF.

    Checked from the header before transformers spends half a minute dequantizing: the
    architecture, and that the file is long enough for every tensor it declares (the usual
    damage is an interrupted copy or download). Bytes within tensors are not checked.
    """
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError as exc:
        raise ModelLoadError(f"{source.ref}: reading GGUF files needs the 'gguf' package; install it with "
                             f"`{GGUF_PACKAGE_INSTALL}`") from exc
    try:
        with source.path.open("rb") as handle:
            header = _read_header(handle, source.path.stat().st_size)
        architecture = header.get("general.architecture")
        if not isinstance(architecture, str):
            raise ValueError("the header names no general.architecture")
        _check_complete(header, GGML_QUANT_SIZES, source.path.stat().st_size)
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{source.ref}: {source.path.name} is not a readable GGUF file ({exc}); "
                             "replace it with a complete, uncorrupted copy") from exc
    if architecture not in LLAMA_FAMILY:
        raise ModelLoadError(f"{source.ref}: {source.path.name} is a '{architecture}' model; llmops tunes "
                             f"Llama-family GGUF files ({', '.join(LLAMA_FAMILY)}). Use a Llama-family "
                             "checkpoint, or an HF model folder with path:<dir>")
    return architecture


_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_SIZES = {value_type: struct.calcsize(fmt) for value_type, fmt in _SCALAR_FORMATS.items()}
_STRING, _ARRAY = 8, 9  # GGUF value types
_KEPT_KEYS = ("general.architecture", "general.alignment")


def _read_header(handle, size: int) -> dict:
    """The keys we need, plus `tensors` (dims, type, offset) and `data_start`; every length is
    checked against the file size, so a corrupt length field cannot make us read or allocate much."""
    if handle.read(4) != b"GGUF":
        raise ValueError("it does not start with the GGUF magic bytes")
    version, tensor_count, pair_count = struct.unpack("<IQQ", _read(handle, 20, size))
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    header: dict = {}
    for _ in range(pair_count):
        key = _read_string(handle, size)
        value_type = struct.unpack("<I", _read(handle, 4, size))[0]
        if key in _KEPT_KEYS and value_type == _STRING:
            header[key] = _read_string(handle, size)
        elif key in _KEPT_KEYS and value_type in _SCALAR_FORMATS:
            header[key] = struct.unpack(_SCALAR_FORMATS[value_type], _read(handle, _SCALAR_SIZES[value_type], size))[0]
        else:
            _skip_value(handle, value_type, size)
    tensors = []
    for _ in range(tensor_count):
        _skip(handle, struct.unpack("<Q", _read(handle, 8, size))[0], size)  # the tensor's name
        dims = struct.unpack("<I", _read(handle, 4, size))[0]
        shape = struct.unpack(f"<{dims}Q", _read(handle, 8 * dims, size))
        tensor_type, offset = struct.unpack("<IQ", _read(handle, 12, size))
        tensors.append((shape, tensor_type, offset))
    alignment = int(header.get("general.alignment", 32)) or 32
    header["tensors"] = tensors
    header["data_start"] = -(-handle.tell() // alignment) * alignment
    return header


def _check_complete(header: dict, quant_sizes, size: int) -> None:
    end = header["data_start"]
    for shape, tensor_type, offset in header["tensors"]:
        if tensor_type not in quant_sizes:
            raise ValueError(f"tensor type {tensor_type} is unknown to the installed gguf package")
        block, block_bytes = quant_sizes[tensor_type]
        elements = 1
        for dim in shape:
            elements *= dim
        end = max(end, header["data_start"] + offset + elements // block * block_bytes)
    if end > size:
        raise ValueError(f"truncated: it is {size} bytes but its tensors end at byte {end}")


def _read_string(handle, size: int) -> str:
    return _read(handle, struct.unpack("<Q", _read(handle, 8, size))[0], size).decode("utf-8")


def _skip_value(handle, value_type: int, size: int) -> None:
    if value_type == _STRING:
        _skip(handle, struct.unpack("<Q", _read(handle, 8, size))[0], size)
    elif value_type == _ARRAY:
        item_type, count = struct.unpack("<IQ", _read(handle, 12, size))
        if item_type in _SCALAR_SIZES:
            _skip(handle, count * _SCALAR_SIZES[item_type], size)
        elif item_type == _STRING:
            for _ in range(count):  # each string costs at least 8 bytes, so the file size bounds the loop
                _skip(handle, struct.unpack("<Q", _read(handle, 8, size))[0], size)
        else:
            raise ValueError(f"array of value type {item_type} in the header")
    elif value_type in _SCALAR_SIZES:
        _skip(handle, _SCALAR_SIZES[value_type], size)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")


def _read(handle, count: int, size: int) -> bytes:
    _check_room(handle, count, size)
    return handle.read(count)


def _skip(handle, count: int, size: int) -> None:
    _check_room(handle, count, size)
    handle.seek(count, 1)


def _check_room(handle, count: int, size: int) -> None:
    # A length field pointing past the end of the file: truncated, or not a GGUF at all.
    if count > size - handle.tell():
        raise ValueError("truncated: a header field runs past the end of the file")


def _load_dequantized(source: GgufSource):
    """The GGUF as a plain float32 model that `save_pretrained` accepts, plus its tokenizer.

    transformers marks a GGUF-loaded model with a `quantization_config` and then refuses
    to save it; the weights are already dequantized, so they are moved into a model built
    from the same config without that marker.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor progress bars would flood apply's output
    folder, name = source.path.parent, source.path.name
    try:
        # The GGUF reader's own tqdm bar ignores that switch; errors are raised, not printed.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                output_loading_info=True)
    except Exception as exc:  # transformers' GGUF path raises ValueError/KeyError/RuntimeError/OSError alike
        raise ModelLoadError(f"{source.ref}: transformers cannot load {name} ({type(exc).__name__}: {exc}); "
                             "the file may be corrupt or use an unsupported tensor type") from exc
    if info["missing_keys"]:  # transformers would fill them with random values and only warn
        missing = sorted(info["missing_keys"])
        raise ModelLoadError(f"{source.ref}: {name} lacks {len(missing)} weight(s) the architecture needs "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); it is "
                             "incomplete or not a causal language model")
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer
