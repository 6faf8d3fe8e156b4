"""GGUF export: the writer round-trips through transformers' reader, verification catches a broken
file, unsupported models and spec mistakes are refused clearly, exports are recorded with digests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from llmops_engine.digests import file_sha256
from llmops_engine.errors import ExportError, SpecError
from llmops_engine.models.gguf_export import (
    VERIFY_PROMPTS, check_base, check_exportable, export_gguf, permute_for_llama_cpp, verify_gguf, write_gguf,
)
from llmops_engine.specs.loader import load_resources
from llmops_engine.specs.resource import Resource
from llmops_engine.specs.tuning import TuningJobSpec

SMOLLM2 = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """builtin:tiny-llama materialized into a store of its own, and its model in full precision."""
    from llmops_engine.models import resolve_base
    from llmops_engine.models.loaded import load_causal_lm

    base = resolve_base("builtin:tiny-llama", tmp_path_factory.mktemp("store"))
    return base, load_causal_lm(base.path)


def _sharpened(model):
    """A copy whose q/k are scaled 5x: random toy weights attend almost uniformly, so how q and k are laid
    out barely matters; a real model's attention is peaked, and so is this one's. (Measured: the correct
    file differs by ~0.03 of its tolerance in f16 and ~0.3 in q8_0, the unpermuted one by ~10x it.)"""
    import copy

    import torch

    sharp = copy.deepcopy(model)
    with torch.no_grad():
        for layer in sharp.model.layers:
            layer.self_attn.q_proj.weight.mul_(5)
            layer.self_attn.k_proj.weight.mul_(5)
    return sharp


@pytest.mark.parametrize("gguf_type, weight_type", [("f16", "F16"), ("q8_0", "Q8_0")])
def test_written_file_loads_back_with_the_same_logits(tiny, tmp_path, gguf_type, weight_type):
    from gguf import GGUFReader

    base, model = tiny
    entry = export_gguf(model, tmp_path, gguf_type, base.path, None, "tiny")
    path = tmp_path / entry["path"]
    assert entry["path"] == f"gguf/model.{gguf_type}.gguf" and entry["type"] == gguf_type
    assert entry["sha256"] == file_sha256(path) and entry["bytes"] == path.stat().st_size
    assert entry["max_logit_diff"] <= entry["tolerance"] and entry["argmax_agrees"]
    reader = GGUFReader(path)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == weight_type
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"  # 1-D stays f32
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.attention.head_count"].contents() == model.config.num_attention_heads
    assert fields["llama.block_count"].contents() == model.config.num_hidden_layers
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size


def test_q8_0_is_about_half_the_size_of_f16(tiny, tmp_path):
    base, model = tiny
    sizes = {t: export_gguf(model, tmp_path / t, t, base.path, None, "tiny")["bytes"] for t in ("f16", "q8_0")}
    assert 0.45 < sizes["q8_0"] / sizes["f16"] < 0.6


def test_permutation_is_the_inverse_of_transformers_reader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of dim 16
    permuted = permute_for_llama_cpp(weights, 8)
    assert not np.array_equal(permuted, weights)
    restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, 8, 8)
    assert np.array_equal(restored, weights)
    kv = weights[: 2 * 16]  # grouped-query attention: k has fewer heads
    assert np.array_equal(LlamaTensorProcessor()._reverse_permute_weights(permute_for_llama_cpp(kv, 2), 8, 2), kv)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_unpermuted_q_and_k_fail_verification(tiny, tmp_path, monkeypatch, gguf_type):
    from llmops_engine.models import gguf_export

    base, model = tiny
    sharp = _sharpened(model)
    path = tmp_path / f"model.{gguf_type}.gguf"
    write_gguf(sharp, path, gguf_type, base.path, None, "tiny")
    assert verify_gguf(sharp, path, gguf_type, base.path).max_logit_diff > 0  # the correct file passes
    monkeypatch.setattr(gguf_export, "permute_for_llama_cpp", lambda weights, heads: weights)
    write_gguf(sharp, path, gguf_type, base.path, None, "tiny")
    with pytest.raises(ExportError, match=r"differ from the merged model's by up to [\d.]+, beyond the tolerance"):
        verify_gguf(sharp, path, gguf_type, base.path)


def test_corrupted_tensor_fails_verification(tiny, tmp_path):
    from gguf import GGUFReader

    base, model = tiny
    path = tmp_path / "model.f16.gguf"
    write_gguf(model, path, "f16", base.path, None, "tiny")
    tensor = next(t for t in GGUFReader(path).tensors if t.name == "blk.1.ffn_down.weight")
    with path.open("r+b") as handle:  # overwrite the tensor's data with large f16 values
        handle.seek(tensor.data_offset)
        handle.write(np.full(tensor.n_elements, 3.0, dtype=np.float16).tobytes())
    with pytest.raises(ExportError, match="failed verification.*tolerance"):
        verify_gguf(model, path, "f16", base.path)


def test_a_file_transformers_cannot_read_fails_verification(tiny, tmp_path):
    base, model = tiny
    path = tmp_path / "model.f16.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ExportError, match="transformers cannot load it back"):
        verify_gguf(model, path, "f16", base.path)


def _configs():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    return {
        "gpt2": (GPT2Config(), "this model's architecture is 'gpt2'"),
        "qwen2": (Qwen2Config(), "this model's architecture is 'qwen2'"),
        "llama3-rope": (LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                        "rope scaling 'llama3'"),
        "attention-bias": (LlamaConfig(attention_bias=True), "sets attention_bias"),
        "llama": (LlamaConfig(), None),
        "mistral": (MistralConfig(), None),
    }


@pytest.mark.parametrize("case", ["gpt2", "qwen2", "llama3-rope", "attention-bias", "llama", "mistral"])
def test_only_plain_llama_family_models_are_exportable(case):
    config, refusal = _configs()[case]
    if refusal is None:
        check_exportable(config)
    else:
        with pytest.raises(ExportError, match=refusal):
            check_exportable(config)


def test_a_base_without_a_byte_level_bpe_tokenizer_is_refused_before_training(tiny, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base, model = tiny
    check_base(base.path, None)  # the byte-level toy is fine
    model.config.save_pretrained(tmp_path)
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(ExportError, match="tokenizer is WordLevel"):
        check_base(tmp_path, None)


def _trained_staging(tiny, staging: Path) -> None:
    """What training leaves in staging before exports: a (non-trivial) adapter and the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from llmops_engine.models.loaded import load_causal_lm

    base, _ = tiny
    torch.manual_seed(0)
    tuned = get_peft_model(load_causal_lm(base.path), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    tuned.save_pretrained(staging / "adapter")
    AutoTokenizer.from_pretrained(base.path).save_pretrained(staging / "tokenizer")


def test_exports_are_recorded_with_digests_and_listed_by_status(tiny, tmp_path):
    from llmops_engine.controllers.tuning import _exports_summary, _write_exports
    from llmops_engine.models.weights import weights_hash
    from llmops_engine.report import _summary

    base, _ = tiny
    _trained_staging(tiny, tmp_path)
    spec = TuningJobSpec(base_model="builtin:tiny-llama", dataset="d", prompt="p", method="lora",
                         export=["adapter", "merged", "gguf"], gguf_type="q8_0")
    resource = SimpleNamespace(spec=spec, name="t", key="TuningJob/t")
    reported: list[str] = []
    ctx = SimpleNamespace(project=SimpleNamespace(root=tmp_path), report=reported.append)
    exports = _write_exports(resource, ctx, tmp_path, base)

    assert json.loads((tmp_path / "exports.json").read_text()) == exports
    assert exports["adapter"] == {"path": "adapter/", "sha256": weights_hash(tmp_path / "adapter")}
    assert exports["merged"] == {"path": "merged/", "sha256": weights_hash(tmp_path / "merged")}
    gguf = exports["gguf"]
    assert set(gguf) == {"path", "type", "sha256", "bytes", "max_logit_diff", "argmax_agrees", "tolerance"}
    assert gguf["path"] == "gguf/model.q8_0.gguf" and gguf["sha256"] == file_sha256(tmp_path / gguf["path"])
    assert "gguf export q8_0" in reported[0] and "max logit difference" in reported[0]
    summary = _exports_summary(exports)
    assert summary["gguf"] == {key: gguf[key] for key in ("path", "sha256", "type", "max_logit_diff")}
    assert _summary({"model_version": "abc", "exports": summary}) == "model_version=abc exports=adapter,gguf(q8_0),merged"


def test_gguf_is_written_from_the_merged_model_not_the_base(tiny, tmp_path):
    """The adapter must be in the GGUF: its logits match the merged model and differ from the base's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops_engine.controllers.tuning import _merged_model

    base, base_model = tiny
    _trained_staging(tiny, tmp_path)
    merged = _merged_model(tmp_path, base.path)
    entry = export_gguf(merged, tmp_path, "f16", tmp_path / "tokenizer", None, "t")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model.f16.gguf", dtype=torch.float32)
    ids = torch.tensor([AutoTokenizer.from_pretrained(base.path)(VERIFY_PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        got, base_logits = loaded(input_ids=ids).logits, base_model(input_ids=ids).logits
    assert (got - base_logits).abs().max().item() > 10 * entry["tolerance"]


# Spec errors, each at its file:line: (case, spec lines, line, path, message fragment)
SPEC_CASES = [
    ("gguf-type-without-gguf", "  gguf_type: q8_0\n", 8, "spec.gguf_type", "add gguf to export"),
    ("unknown-export", "  export: [adapter, onnx]\n", 8, "spec.export.1", "'adapter', 'merged' or 'gguf'"),
    ("unknown-gguf-type", "  export: [gguf]\n  gguf_type: q4_k\n", 9, "spec.gguf_type", "'f16' or 'q8_0'"),
]
TUNING = ("apiVersion: llmops/v1\nkind: TuningJob\nmetadata: {name: t}\nspec:\n"
          "  base_model: builtin:tiny-llama\n  dataset: d\n  prompt: p\n")
PROMPT_AND_DATASET = ("apiVersion: llmops/v1\nkind: Prompt\nmetadata: {name: p}\nspec: {template: 'Q: {instruction}'}\n"
                      "---\napiVersion: llmops/v1\nkind: Dataset\nmetadata: {name: d}\nspec:\n"
                      "  source: {path: data/x.jsonl}\n  columns: {instruction: q, output: a}\n")


@pytest.mark.parametrize("case, lines, line, path, fragment", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_export_spec_errors_are_located(make_project, case, lines, line, path, fragment):
    root = make_project({"base.yaml": PROMPT_AND_DATASET, "job.yaml": TUNING + lines})
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    with pytest.raises(SpecError) as info:
        load_resources(root, ["specs"])
    issue = next(i for i in info.value.issues if fragment in i.message)
    assert (issue.file, issue.line, issue.path) == ("specs/job.yaml", line, path), str(issue)


def _fingerprint(**fields) -> str:
    from llmops_engine.fingerprint import compute_fingerprint
    from llmops_engine.specs.base import Metadata

    spec = TuningJobSpec(base_model="builtin:tiny-llama", dataset="d", prompt="p", **fields)
    return compute_fingerprint(Resource("TuningJob", Metadata(name="t"), spec, "x", 1), {}, {})


def test_gguf_type_changes_the_fingerprint_and_its_default_does_not():
    spec = TuningJobSpec(base_model="builtin:tiny-llama", dataset="d", prompt="p")
    assert "gguf_type" not in Resource("TuningJob", None, spec, "x", 1).normalized_spec()  # older jobs keep theirs
    assert _fingerprint(export=["gguf"]) == _fingerprint(export=["gguf"], gguf_type="f16")
    assert _fingerprint(export=["gguf"], gguf_type="q8_0") != _fingerprint(export=["gguf"])
    assert _fingerprint(export=["gguf"]) != _fingerprint()  # adding gguf re-runs the job


# --- the real model: SmolLM2-135M, its tokenizer copied from the GGUF it was read from ---

@pytest.fixture(scope="module")
def smollm2(smollm2_store):
    from llmops_engine.models import resolve_base
    from llmops_engine.models.gguf_export import tokenizer_source
    from llmops_engine.models.loaded import load_causal_lm

    base = resolve_base(SMOLLM2, smollm2_store)
    return base, load_causal_lm(base.path), tokenizer_source(SMOLLM2, Path.cwd())


@pytest.fixture(scope="module")
def smollm2_f16(smollm2, tmp_path_factory):
    base, model, source = smollm2
    out = tmp_path_factory.mktemp("smollm2")
    entry = export_gguf(model, out, "f16", base.path, source, "smollm2")  # verified on the way
    return out / entry["path"], entry


@pytest.mark.slow
def test_smollm2_export_copies_the_tokenizer_and_matches_the_logits(smollm2, smollm2_f16):
    from gguf import GGUFReader

    _, _, source = smollm2
    path, entry = smollm2_f16
    written, original = GGUFReader(path).fields, GGUFReader(source).fields
    tokenizer_keys = sorted(key for key in original if key.startswith("tokenizer."))
    assert "tokenizer.chat_template" in tokenizer_keys and "tokenizer.ggml.merges" in tokenizer_keys
    assert sorted(key for key in written if key.startswith("tokenizer.")) == tokenizer_keys
    for key in tokenizer_keys:
        assert written[key].contents() == original[key].contents(), key
    assert entry["max_logit_diff"] <= entry["tolerance"] and entry["argmax_agrees"]


@pytest.mark.slow
def test_smollm2_q8_0_export_is_within_tolerance(smollm2, tmp_path):
    base, model, source = smollm2
    entry = export_gguf(model, tmp_path, "q8_0", base.path, source, "smollm2")
    assert entry["max_logit_diff"] <= entry["tolerance"] and entry["argmax_agrees"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (optional extra; it builds from source)")
def test_llama_cpp_continues_a_prompt_as_transformers_does(smollm2, smollm2_f16):
    import torch
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    base, model, _ = smollm2
    prompt, new_tokens = "The capital of France is", 8
    ids = AutoTokenizer.from_pretrained(base.path)(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)[0, ids.shape[1]:].tolist()
    llm = Llama(model_path=str(smollm2_f16[0]), n_ctx=256, verbose=False)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    assert tokens == ids[0].tolist()  # the copied tokenizer splits the prompt as the HF one does
    got = []
    for token in llm.generate(tokens, temp=0.0, top_k=1):
        got.append(token)
        if len(got) == new_tokens:
            break
    assert got[:4] == expected[:4], (llm.detokenize(got), llm.detokenize(expected))


# --- end to end: a TuningJob on a real local Ray cluster exports and records, or fails before training ---

def _gguf_job(root: Path, project, base_model: str):
    from tests.eval_helpers import DATASET, make_context, publish_dataset, resource
    from tests.test_tuning_e2e import demo_rows

    tune = resource("TuningJob", "t", base_model=base_model, dataset="d", prompt="p", method="lora",
                    export=["adapter", "merged", "gguf"], gguf_type="q8_0",
                    training={"max_steps": 3, "batch_size": 4, "max_seq_len": 64})
    ctx = make_context(root, [resource("Prompt", "p", template="Q: {instruction}\nA:"),
                              resource("Dataset", "d", **DATASET), tune], project=project)
    rows = demo_rows(40)
    publish_dataset(ctx, "d", eval_rows=rows[:4], train_rows=rows[4:])
    return tune, ctx, ctx.store.staging_dir(ctx.fingerprint(tune.key))


@pytest.mark.slow
def test_tuning_job_publishes_a_verified_gguf_with_its_lineage(ray_project, tmp_path, monkeypatch):
    from llmops_engine.controllers.tuning import TuningController

    monkeypatch.delenv("LLMOPS_MAX_STEPS", raising=False)
    tune, ctx, staging = _gguf_job(tmp_path, ray_project, "builtin:tiny-llama")
    outputs = TuningController().apply(tune, ctx, staging)
    exports = json.loads((staging / "exports.json").read_text())
    assert sorted(exports) == ["adapter", "gguf", "merged"] and (staging / "gguf" / "model.q8_0.gguf").is_file()
    assert json.loads((staging / "lineage.json").read_text())["exports"] == exports
    assert outputs["exports"]["gguf"]["sha256"] == exports["gguf"]["sha256"] == file_sha256(staging / exports["gguf"]["path"])
    assert any("gguf export q8_0" in line for line in ctx.reported)


@pytest.mark.slow
def test_a_non_llama_base_fails_the_job_before_training(ray_project, tmp_path, monkeypatch):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from llmops_engine.controllers.tuning import TuningController
    from llmops_engine.models import resolve_base

    tiny_dir = resolve_base("builtin:tiny-llama", tmp_path / "tiny").path
    config = Qwen2Config(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path / "qwen")
    tune, ctx, staging = _gguf_job(tmp_path, ray_project, f"path:{tmp_path / 'qwen'}")
    with pytest.raises(ExportError, match="architecture is 'qwen2'"):
        TuningController().apply(tune, ctx, staging)
    assert not any("step 1/" in line for line in ctx.reported)  # refused before any training
