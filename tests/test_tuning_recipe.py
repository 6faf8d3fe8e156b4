"""Training recipe pieces that need no cluster: label masking, batching, spec rules, metrics."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmops_engine.specs.prompt import PromptSpec
from llmops_engine.specs.tuning import TuningJobSpec
from llmops_engine.training.data import IGNORE_INDEX, batch_indices, collate, encode_pair, render_pairs
from llmops_engine.training.report import training_metrics, write_loss_curve
from llmops_engine.models.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def test_examples_render_with_the_prompt_and_mask_it(tokenizer):
    prompt = PromptSpec(template="Q: {instruction}\nC: {input}\nA:", template_no_input="Q: {instruction}\nA:")
    pairs = render_pairs([{"instruction": "hi", "input": "", "output": "yo"},
                          {"instruction": "hi", "input": "ctx", "output": "yo"}], prompt)
    assert pairs == [("Q: hi\nA:", "yo"), ("Q: hi\nC: ctx\nA:", "yo")]
    ids, labels = encode_pair(tokenizer, *pairs[0], max_seq_len=64)
    assert ids == list(b"Q: hi\nA:yo") + [tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len("Q: hi\nA:") + list(b"yo") + [tokenizer.eos_token_id]
    short_ids, short_labels = encode_pair(tokenizer, *pairs[0], max_seq_len=9)
    assert len(short_ids) == len(short_labels) == 9 and short_labels[-1] == ord("y")


def test_collate_pads_right_and_masks_padding(tokenizer):
    batch = collate([([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4], [4])], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 257, 257]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batches_cover_each_epoch_and_are_reproducible():
    epoch = [batch_indices(step, 0, 10, 4, 0, 1, 1, seed=7) for step in range(3)]
    assert set(sum(epoch, [])) == set(range(10)) and all(len(b) == 4 for b in epoch)
    assert epoch == [batch_indices(step, 0, 10, 4, 0, 1, 1, seed=7) for step in range(3)]
    assert batch_indices(3, 0, 10, 4, 0, 1, 1, seed=7) != epoch[0]  # the next epoch reshuffles
    # two workers see disjoint halves of a step
    first, second = (set(batch_indices(0, 0, 16, 4, rank, 2, 1, seed=1)) for rank in (0, 1))
    assert not first & second


@pytest.mark.parametrize("change, message", [
    ({"quantization": {"bits": 8}}, "qlora needs quantization.bits: 4"),
    ({"method": "lora", "quantization": {"bits": 4}}, "write method: qlora"),
    ({"method": "full", "quantization": {"bits": 4}}, "cannot train quantized weights"),
    ({"method": "full", "export": ["adapter", "merged"]}, "already merged"),
    ({"resources": {"gpus_per_worker": 1.5}}, "whole number"),
    ({"base_model": "builtin:huge"}, "unknown builtin model"),
])
def test_cross_field_rules_are_spec_errors(change, message):
    spec = {"base_model": "builtin:tiny-llama", "dataset": "d", "prompt": "p", **change}
    with pytest.raises(ValidationError, match=message):
        TuningJobSpec.model_validate(spec)


def test_lora_may_use_8_bit_and_qlora_defaults_to_nf4():
    lora = TuningJobSpec.model_validate({"base_model": "builtin:tiny-llama", "dataset": "d", "prompt": "p",
                                         "method": "lora", "quantization": {"bits": 8}})
    assert lora.effective_quantization().bits == 8
    qlora = TuningJobSpec.model_validate({"base_model": "builtin:tiny-llama", "dataset": "d", "prompt": "p"})
    assert qlora.effective_quantization().type == "nf4"


def test_loss_curve_and_metrics(tmp_path):
    losses = [[step, 5.0 - step * 0.1] for step in range(1, 41)]
    write_loss_curve(losses, tmp_path, "demo")
    assert (tmp_path / "loss.csv").read_text().splitlines()[:2] == ["step,loss", "1,4.900000"]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    metrics = training_metrics({"step": 40, "losses": losses, "tokens": 8000, "train_seconds": 4.0}, 9.0)
    assert metrics["initial_loss"] == pytest.approx(4.85) and metrics["final_loss"] == pytest.approx(1.05)
    assert metrics["tokens_per_second"] == 2000.0


def test_ci_step_cap_comes_from_the_environment(monkeypatch):
    from llmops_engine.controllers.tuning import _total_steps
    from llmops_engine.errors import TrainingError

    monkeypatch.delenv("LLMOPS_MAX_STEPS", raising=False)
    assert _total_steps(108) == (108, None)
    monkeypatch.setenv("LLMOPS_MAX_STEPS", "20")
    assert _total_steps(108) == (20, 20) and _total_steps(5) == (5, 20)
    monkeypatch.setenv("LLMOPS_MAX_STEPS", "many")
    with pytest.raises(TrainingError, match="positive integer"):
        _total_steps(108)


def test_merged_export_matches_base_plus_adapter(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from llmops_engine.controllers.tuning import _export_merged
    from llmops_engine.models import resolve_base
    from llmops_engine.models.loaded import load_causal_lm

    base = resolve_base("builtin:tiny-llama", tmp_path / "store")
    torch.manual_seed(0)
    tuned = get_peft_model(load_causal_lm(base.path), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    tuned.save_pretrained(tmp_path / "adapter")
    _export_merged(tmp_path, base.path)
    merged = load_causal_lm(tmp_path / "merged")
    ids = torch.tensor([list(b"How do I cancel?")])
    with torch.no_grad():
        expected, got = tuned(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=5e-2)  # merged weights are stored in fp16
    assert not torch.allclose(expected, load_causal_lm(base.path)(input_ids=ids).logits, atol=5e-2)


# (scenario, cluster total, free now, local head?, error fragment or None)
RESOURCE_SCENARIOS = [
    ("fits", {"CPU": 4.0}, {"CPU": 4.0}, True, None),
    ("never fits anywhere", {"CPU": 1.0}, {"CPU": 1.0}, False, "the Ray cluster has 1"),
    ("local head: replicas hold the CPUs", {"CPU": 4.0}, {"CPU": 1.0}, True, "only 1 of its 4 free"),
    ("a remote cluster may free or add CPUs", {"CPU": 4.0}, {"CPU": 1.0}, False, None),
]


@pytest.mark.parametrize("scenario,total,free,local,fragment", RESOURCE_SCENARIOS, ids=[s[0] for s in RESOURCE_SCENARIOS])
def test_a_job_that_would_wait_forever_fails_fast(monkeypatch, scenario, total, free, local, fragment):
    import ray

    from llmops_engine.errors import PlanError
    from llmops_engine.training.run import check_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: total)
    monkeypatch.setattr(ray, "available_resources", lambda: free)
    if fragment is None:
        check_resources(workers=1, gpus_per_worker=0, cpus_per_worker=2, local=local)
        return
    with pytest.raises(PlanError, match=fragment):
        check_resources(workers=1, gpus_per_worker=0, cpus_per_worker=2, local=local)


def test_the_local_head_leaves_room_for_idle_replicas_beside_a_training_job(monkeypatch):
    from llmops_engine.raycluster import local_head_cpus
    from llmops_engine.serving.config import REPLICA_CPUS, SLOTS

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    demo_deployments, demo_training_cpus = 2, 2
    assert local_head_cpus() >= demo_training_cpus + demo_deployments * len(SLOTS) * REPLICA_CPUS
