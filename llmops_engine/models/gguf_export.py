"""GGUF export of a tuned Llama-family model, for llama.cpp and the runtimes built on it.

The `gguf` package writes the file format but ships no converter, so this module is the
converter: HF tensor names mapped to llama.cpp's, q/k projections permuted into llama.cpp's
rotary layout, the hyperparameters llama.cpp reads, and the tokenizer. A base that came from
a GGUF file hands its `tokenizer.*` keys (vocabulary, merges, special ids, chat template)
over unchanged; any other base must have a byte-level BPE tokenizer, written as llama.cpp's
`gpt2` tokenizer model. Anything else is refused rather than written wrong.

A written file is only published after `verify_gguf` loaded it back through transformers'
independent GGUF reader and its logits matched the merged model's: a converter bug (a
missing permutation, a wrong tensor) shows up there and fails the TuningJob.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError

GGUF_TYPES = ("f16", "q8_0")
LLAMA_MODEL_TYPES = ("llama", "mistral")  # llama.cpp writes both as architecture "llama"
GGUF_ARCH = "llama"
Q8_0_BLOCK = 32  # elements per Q8_0 block: only rows of a multiple of this length can be quantized

# The next token each of these is followed by is compared; short and mixed (prose, code, digits,
# a question) so that attention, not just the embedding of one token, decides the logits.
VERIFY_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "How do I reset my password?",
    "1, 2, 3, 4,",
)

# Tolerance on the largest |logit difference| against the full-precision merged model, as a
# fraction of the largest |logit| the merged model produced on the same prompts (so one rule fits
# a toy with logits near 1 and a real model with logits near 35). Measured on SmolLM2-135M
# (largest logit 35.7): f16 differs by 0.035 (0.1 %), q8_0 by 0.66 (1.8 %); the same file with
# q/k left unpermuted differs by 13.4 (38 %). The limits leave 5x (f16) and ~3x (q8_0) headroom
# over the measured rounding error and stay an order of magnitude below that damage.
RELATIVE_TOLERANCE = {"f16": 0.005, "q8_0": 0.05}


@dataclass(frozen=True)
class GgufCheck:
    """What `verify_gguf` measured: recorded in exports.json and lineage."""

    max_logit_diff: float
    argmax_agrees: bool  # the most likely next token after each prompt is the same
    tolerance: float


def check_exportable(config) -> None:
    """Refuse a model this converter cannot write faithfully, naming what is wrong."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LLAMA_MODEL_TYPES:
        raise ExportError(f"GGUF export supports Llama-family models ({', '.join(LLAMA_MODEL_TYPES)}); this "
                          f"model's architecture is '{model_type}'. Export 'merged' instead and convert it with "
                          "llama.cpp's own converter")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"GGUF export writes plain rotary embeddings; this model uses rope scaling "
                          f"'{rope['rope_type']}'. Export 'merged' and convert it with llama.cpp's converter")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise ExportError(f"GGUF export writes bias-free Llama layers; this model sets {flag}")


def check_base(model_dir: Path, source_gguf: Path | None) -> None:
    """Before training: refuse a base whose architecture or tokenizer the GGUF export cannot write."""
    from transformers import AutoConfig

    check_exportable(AutoConfig.from_pretrained(model_dir))
    if source_gguf is None:
        _byte_level_bpe(model_dir)


def write_gguf(model, path: Path, gguf_type: str, tokenizer_dir: Path, source_gguf: Path | None,
               name: str) -> None:
    """Write `model` (a float LlamaForCausalLM) as a GGUF file of `gguf_type` at `path`.

    Tokenizer keys come from `source_gguf` when the base was read from one, else from the HF
    tokenizer in `tokenizer_dir`.
    """
    import gguf

    config = model.config
    check_exportable(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, GGUF_ARCH)
    try:
        _write_hparams(writer, config, gguf_type, name)
        if source_gguf is not None:
            _copy_tokenizer(writer, source_gguf, config.vocab_size)
        else:
            _write_bpe_tokenizer(writer, tokenizer_dir, config.vocab_size)
        for gguf_name, array, qtype in _tensors(model, gguf_type):
            writer.add_tensor(gguf_name, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _rope_parameters(config) -> dict:
    # transformers 5 keeps rope_theta/rope_type in rope_parameters; older configs have rope_theta itself.
    params = dict(getattr(config, "rope_parameters", None) or {})
    if getattr(config, "rope_scaling", None):
        params.setdefault("rope_type", config.rope_scaling.get("rope_type") or config.rope_scaling.get("type"))
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_hparams(writer, config, gguf_type: str, name: str) -> None:
    import gguf

    head_dim = _head_dim(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_parameters(config).get("rope_theta", 10000.0)))
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    if head_dim != config.hidden_size // config.num_attention_heads:  # llama.cpp derives it otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensors(model, gguf_type: str):
    """(llama.cpp name, data, type) for every weight, in llama.cpp's conventions: 1-D tensors (norms)
    in f32; 2-D weights in f16, or Q8_0 when their rows split into whole blocks (else f16)."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"GGUF export: no llama.cpp tensor name for '{hf_name}'")
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_for_llama_cpp(data, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_for_llama_cpp(data, kv_heads)
        yield (gguf_name, *_encode(data, gguf_type))


def permute_for_llama_cpp(weights, heads: int):
    """HF keeps each head's rotary pairs as (first half, second half); llama.cpp interleaves them.

    The inverse of transformers' `_reverse_permute_weights` (modeling_gguf_pytorch_utils.py),
    the same reshuffle llama.cpp's convert_hf_to_gguf.py applies to q_proj and k_proj.
    """
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _encode(data, gguf_type: str):
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if data.ndim <= 1:
        return data.astype(np.float32), GGMLQuantizationType.F32
    if gguf_type == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
        return quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return data.astype(np.float16), GGMLQuantizationType.F16


def _copy_tokenizer(writer, source: Path, vocab_size: int) -> None:
    """Every `tokenizer.*` key of the source GGUF (vocabulary, merges, ids, chat template), unchanged."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(source)
    except (OSError, ValueError) as exc:
        raise ExportError(f"GGUF export: cannot read the tokenizer of the base model's GGUF {source}: {exc}") from exc
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value_type = GGUFValueType(field.types[0])
        sub_type = GGUFValueType(field.types[-1]) if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type)
        copied += 1
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ExportError(f"GGUF export: the base model's GGUF {source.name} has no tokenizer to copy")
    if len(tokens.data) != vocab_size:
        raise ExportError(f"GGUF export: the base GGUF's tokenizer has {len(tokens.data)} tokens but the model "
                          f"has {vocab_size} embeddings")


def _write_bpe_tokenizer(writer, tokenizer_dir: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's `gpt2` model: tokens by id, their types, merges, special ids.
    Rows of the embedding past the tokenizer's vocabulary (padding) get unused placeholder tokens."""
    from gguf import TokenType

    tokenizer, merges = _byte_level_bpe(tokenizer_dir)
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"GGUF export: the tokenizer has ids up to {max(vocab.values())} but the model "
                          f"has {vocab_size} embeddings")
    added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
    tokens = [f"[PAD{index}]" for index in range(vocab_size)]
    types = [TokenType.UNUSED] * vocab_size
    for token, index in vocab.items():
        tokens[index] = token
        if token in added:
            types[index] = TokenType.CONTROL if added[token] else TokenType.USER_DEFINED
        else:
            types[index] = TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    # gguf cannot write an empty array, so a vocabulary without merges (the byte-level toy) has no merges
    # key; transformers reads such a file, llama.cpp refuses it. Every real BPE vocabulary has merges.
    writer.add_token_merges(merges)
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _byte_level_bpe(tokenizer_dir: Path):
    """The HF tokenizer and its merges ("a b" strings), refusing any tokenizer that is not byte-level BPE:
    llama.cpp's gpt2 model would tokenize anything else differently from how the model was tuned."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(backend.get("pre_tokenizer")):
        kind = model.get("type") or type(tokenizer).__name__
        detail = " without byte-level pre-tokenization" if model.get("type") == "BPE" else ""
        raise ExportError(f"GGUF export writes byte-level BPE tokenizers (or copies the tokenizer of a GGUF base); "
                          f"this model's tokenizer is {kind}{detail}. Export 'merged' and convert it with "
                          "llama.cpp's converter")
    return tokenizer, [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _is_byte_level(pre_tokenizer: dict | None) -> bool:
    if not pre_tokenizer:
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(part) for part in pre_tokenizer.get("pretokenizers") or [])


def verify_gguf(model, path: Path, gguf_type: str, tokenizer_dir: Path) -> GgufCheck:
    """Load the written file back with transformers' GGUF reader and compare its next-token logits with
    `model`'s on VERIFY_PROMPTS; an ExportError with both numbers when they differ beyond the tolerance."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    loaded = _load_back(path)
    model.eval()
    diff, scale, agrees = 0.0, 0.0, True
    with torch.no_grad():
        for prompt in VERIFY_PROMPTS:
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
            expected = model(input_ids=ids).logits[0].float()
            got = loaded(input_ids=ids).logits[0].float()
            diff = max(diff, (expected - got).abs().max().item())
            scale = max(scale, expected.abs().max().item())
            agrees = agrees and bool(expected[-1].argmax() == got[-1].argmax())
    tolerance = RELATIVE_TOLERANCE[gguf_type] * scale
    check = GgufCheck(max_logit_diff=round(diff, 6), argmax_agrees=agrees, tolerance=round(tolerance, 6))
    if not diff <= tolerance:  # `not <=` also catches NaN
        raise ExportError(f"GGUF export {path.name} failed verification: its logits differ from the merged model's "
                          f"by up to {diff:.4g}, beyond the tolerance {tolerance:.4g} ({RELATIVE_TOLERANCE[gguf_type]:.1%} "
                          f"of the largest logit {scale:.4g}); nothing was published")
    return check


def _load_back(path: Path):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader's own tqdm bar
            return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    except Exception as exc:  # transformers' GGUF path raises ValueError/KeyError/RuntimeError/OSError alike
        raise ExportError(f"GGUF export {path.name} failed verification: transformers cannot load it back "
                          f"({type(exc).__name__}: {exc}); nothing was published") from exc


def export_gguf(model, artifact_dir: Path, gguf_type: str, tokenizer_dir: Path, source_gguf: Path | None,
                name: str) -> dict:
    """Write `gguf/model.<type>.gguf` under `artifact_dir`, verify it, and return its exports.json entry
    (`path` relative to `artifact_dir`: the llama-cpp engine finds the file through it)."""
    from ..digests import file_sha256

    relative = f"gguf/model.{gguf_type}.gguf"
    path = artifact_dir / relative
    write_gguf(model, path, gguf_type, tokenizer_dir, source_gguf, name)
    check = verify_gguf(model, path, gguf_type, tokenizer_dir)
    return {"path": relative, "type": gguf_type, "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "max_logit_diff": check.max_logit_diff, "argmax_agrees": check.argmax_agrees,
            "tolerance": check.tolerance}


def tokenizer_source(base_ref: str, root: Path) -> Path | None:
    """The GGUF file a base model was read from (its tokenizer keys are copied), or None for an HF base."""
    kind, _, name = base_ref.partition(":")
    if kind == "builtin":
        from .builtin import PACKAGED_MODELS, packaged_gguf_path

        return packaged_gguf_path(name)[0] if name in PACKAGED_MODELS else None
    if kind == "gguf":
        from .gguf import repo_gguf

        return repo_gguf(name, root, base_ref)
    return None
