"""The model-loading API shared by tuning, evaluation and serving (no Ray, no training)."""

from __future__ import annotations

import math
import shutil

import pytest

from llmops_engine.models import ModelLoadError, load_base, resolve_base
from llmops_engine.models.builtin import builtin_dir
from llmops_engine.models.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("model-store")


@pytest.fixture(scope="module")
def base(store):
    return load_base("builtin:tiny-llama", store)


def _constant_head(model, favourite: int, strength: float = 10.0):
    """Replace lm_head so every position predicts `favourite` (makes generation predictable)."""
    import torch

    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[favourite] = strength
    model.lm_head = head


def test_byte_tokenizer_round_trips_and_saves(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_byte_tokenizer()
    text = "Grüße > Billing\n### Answer:"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode()) and max(ids) < 256
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.decode(ids) == text
    assert (loaded.eos_token_id, loaded.pad_token_id) == (256, 257)
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids


def test_builtin_is_materialized_once_and_deterministic(store, base, tmp_path):
    directory = builtin_dir("tiny-llama", store)
    weights = directory / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = resolve_base("builtin:tiny-llama", store)
    assert again.path == directory and weights.stat().st_mtime_ns == before
    elsewhere = resolve_base("builtin:tiny-llama", tmp_path)  # a fresh store builds the same bytes
    assert elsewhere.hash == again.hash
    assert base.version == f"base:{again.hash[:12]}"


def test_generate_stops_at_eos(base):
    _constant_head(base.model, base.tokenizer.eos_token_id)
    [gen] = base.generate(["Q: hi\nA:"], max_new_tokens=8)
    assert (gen.text, gen.completion_tokens, gen.finish_reason) == ("", 1, "stop")
    assert gen.prompt_tokens == len("Q: hi\nA:")


def test_generate_hits_the_length_limit(base):
    _constant_head(base.model, ord("a"))
    gens = base.generate(["x", "a longer prompt"], max_new_tokens=5)
    assert [(g.text, g.completion_tokens, g.finish_reason) for g in gens] == [("aaaaa", 5, "length")] * 2
    assert [g.prompt_tokens for g in gens] == [1, len("a longer prompt")]


def test_left_padding_does_not_change_greedy_output(store):
    model = load_base("builtin:tiny-llama", store)  # untouched random weights
    alone = model.generate(["What is my plan?"], max_new_tokens=12)[0]
    batched = model.generate(["What is my plan?", "a much longer prompt that forces left padding"],
                             max_new_tokens=12)[0]
    assert batched.text == alone.text


def test_loss_counts_only_response_tokens(base):
    _constant_head(base.model, base.tokenizer.eos_token_id)
    vocab = base.model.config.vocab_size
    losses = base.loss(["a long prompt that is masked", "p"], ["abc", "abcdefg"])
    for loss, length in zip(losses, (3, 7)):
        # every response byte costs log(e^10 + V - 1); the EOS costs 10 less; averaged over length + 1
        expected = math.log(math.exp(10) + vocab - 1) - 10 / (length + 1)
        assert loss == pytest.approx(expected, rel=1e-4)


def test_render_needs_a_template(base):
    with pytest.raises(ModelLoadError, match="no prompt template"):
        base.render("hi")


def test_path_and_hub_references(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    copy = tmp_path / "my-model"
    shutil.copytree(builtin_dir("tiny-llama", store), copy)
    assert resolve_base("path:my-model", store, root=tmp_path).hash == resolve_base("builtin:tiny-llama", store).hash
    with pytest.raises(ModelLoadError, match="config.json missing"):
        resolve_base("path:nowhere", store, root=tmp_path)
    # Offline, a hub model that is not cached is a clear error, never a download.
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        resolve_base("hf:llmops-test/not-cached", store)
    with pytest.raises(ModelLoadError, match="unknown builtin model 'huge-llama'; available: tiny-llama, smollm2"):
        resolve_base("builtin:huge-llama", store)
    with pytest.raises(ModelLoadError, match="unknown model reference"):
        resolve_base("s3:bucket/model", store)
