"""`format: chat` Prompts: rendered through the base model's own chat template, identically in
training, evaluation and serving; loss on the assistant tokens and its end-of-turn token only;
generation stops there; the prompt hash covers the chat template.

The fast tests use the byte tokenizer with ChatML's two special tokens added and a ChatML
template set (and a tiny random Llama of that vocabulary); the slow one tunes SmolLM2.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from types import SimpleNamespace

import pytest

from llmops_engine.errors import ChatTemplateError, DeploymentError, ModelLoadError, SpecError
from llmops_engine.models.chat import chat_template_of
from llmops_engine.models.tokenizer import build_byte_tokenizer
from llmops_engine.specs.prompt import PromptSpec, text_sha256
from llmops_engine.training.data import IGNORE_INDEX, answer_end_ids, encode_examples, encode_pair, render_pairs
from tests.test_loader_errors import GOOD_DATASET

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SYSTEM = "You are Nimbus support."
CHAT_PROMPT = PromptSpec(format="chat", system=SYSTEM, template="Q: {instruction}\nContext: {input}",
                         template_no_input="Q: {instruction}")


def chatml_tokenizer(template: str = CHATML):
    tokenizer = build_byte_tokenizer()
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.chat_template = template
    return tokenizer


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tokenizer():
    return chatml_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama over the ChatML byte vocabulary, saved as an HF folder (a path: base model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("chatml-model")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def loaded(model_dir, template: dict | None, version: str = "tuned"):
    from transformers import AutoTokenizer

    from llmops_engine.models.loaded import LoadedModel, load_causal_lm

    return LoadedModel(load_causal_lm(model_dir), AutoTokenizer.from_pretrained(model_dir), version, template)


def constant_head(model, favourite: int, strength: float = 10.0) -> None:
    """Every position predicts `favourite` (makes generation and loss predictable)."""
    import torch

    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[favourite] = strength
    model.lm_head = head


# rendering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    PromptSpec(template="Q: {instruction}\nA:"),
    PromptSpec(system="Be brief.", template="Q: {instruction}\nC: {input}\nA:", template_no_input="Q: {instruction}\nA:"),
])
def test_text_prompts_render_hash_and_fingerprint_as_before(spec):
    for instruction, input in (("hi", ""), ("hi", "ctx")):
        chosen = spec.template_no_input if (not input and spec.template_no_input) else spec.template
        text = chosen.format(instruction=instruction, input=input)
        assert spec.render(instruction, input) == (f"{spec.system}\n{text}" if spec.system else text)
    before = "\x00".join([spec.system or "", spec.template, spec.template_no_input or ""])
    assert spec.template_hash() == hashlib.sha256(before.encode()).hexdigest()
    assert spec.saved() == {"system": spec.system, "template": spec.template,
                            "template_no_input": spec.template_no_input, "template_hash": spec.template_hash()}
    assert "format" not in spec.model_dump(mode="json")  # a Prompt's fingerprint is what it was


def test_a_chat_prompt_renders_through_the_models_template(tokenizer):
    chat = chat_template_of(tokenizer, "path:m")
    assert CHAT_PROMPT.render("Who founded Nimbus?", "", chat) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nQ: Who founded Nimbus?<|im_end|>\n"
        "<|im_start|>assistant\n")
    with_input = CHAT_PROMPT.render("Which plan?", "Team", chat)
    assert "<|im_start|>user\nQ: Which plan?\nContext: Team<|im_end|>" in with_input
    no_system = PromptSpec(format="chat", template="{instruction}").render("hi", "", chat)
    assert no_system == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ChatTemplateError, match="renders through a model's chat template"):
        CHAT_PROMPT.render("hi")


@pytest.mark.parametrize("closing, end_of_turn", [
    ("'<|im_end|>\n'", "<|im_end|>"),  # ChatML: the first special token after the answer
    ("eos_token", "<|eos|>"),  # templates that close a turn with EOS
    ("'\n\n'", "<|eos|>"),  # plain text only: EOS is the only stop a model can learn
])
def test_the_end_of_turn_token_is_read_from_the_template(closing, end_of_turn):
    template = CHATML.replace("'<|im_end|>\n' }}{% endfor %}", f"{closing} }}}}{{% endfor %}}")
    assert closing in template
    tokenizer = chatml_tokenizer(template)
    chat = chat_template_of(tokenizer, "path:m")
    assert chat.end_of_turn == end_of_turn and chat.end_ids == [tokenizer.convert_tokens_to_ids(end_of_turn)]


def test_rendering_is_identical_in_training_evaluation_and_serving(tokenizer, model_dir, tmp_path):
    from llmops_engine.evaluation.runner import render
    from llmops_engine.models import load_base
    from llmops_engine.serving.openai_api import ChatRequest
    from llmops_engine.serving.slot import ModelSlot

    rows = [{"instruction": "Who founded Nimbus?", "input": "", "output": "Ada Quill."},
            {"instruction": "Which plan has SSO?", "input": "Plans: Free, Team", "output": "Team."}]
    chat = chat_template_of(tokenizer, "path:m")
    training = [prompt for prompt, _ in render_pairs(rows, CHAT_PROMPT, chat)]
    tuned = loaded(model_dir, CHAT_PROMPT.saved(chat))  # as a TuningJob artifact saves it
    base = load_base(f"path:{model_dir}", tmp_path / "store", template=CHAT_PROMPT.saved())  # base: + the Prompt
    assert [render(tuned.template, row, tuned.chat) for row in rows] == training
    assert [render(base.template, row, base.chat) for row in rows] == training
    assert [tuned.render(row["instruction"], row["input"]) for row in rows] == training
    request = ChatRequest.model_validate({"model": "api", "messages": [{"role": "user", "content": rows[0]["instruction"]}]})
    assert ModelSlot.func_or_class._prompt(tuned, request.chat_item()) == training[0]


def test_multi_turn_requests_render_earlier_turns_through_the_template(tokenizer, model_dir):
    from llmops_engine.serving.openai_api import ChatRequest
    from llmops_engine.serving.slot import ModelSlot

    request = ChatRequest.model_validate({"model": "api", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": "reset password?"},
    ]})
    chat_model = loaded(model_dir, CHAT_PROMPT.saved(chat_template_of(tokenizer, "path:m")))
    # the request's system message is the context ({input}); user and assistant turns stay turns
    assert ModelSlot.func_or_class._prompt(chat_model, request.chat_item()) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nQ: reset password?\nContext: Be brief.<|im_end|>\n<|im_start|>assistant\n")
    # a text prompt still gets the conversation the way its training rows had it
    text_model = loaded(model_dir, PromptSpec(template="Q: {instruction}\nC: {input}\nA:").saved())
    assert ModelSlot.func_or_class._prompt(text_model, request.chat_item()) == (
        "Q: reset password?\nC: Be brief.\nuser: hi\nassistant: hello\nA:")


def test_a_chat_dataset_conversation_renders_as_serving_renders_the_same_request(tokenizer, model_dir):
    """Multi-turn training rows keep their turns for chat prompts: the Dataset's row and the
    OpenAI request with the same messages become the same prompt string."""
    from llmops_engine.data.examples import chat_to_example, turns_of
    from llmops_engine.serving.openai_api import ChatRequest
    from llmops_engine.serving.slot import ModelSlot

    conversation = [
        {"role": "system", "content": "Plan: Team."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how many seats?"},
    ]
    row = chat_to_example(turns_of(conversation + [{"role": "assistant", "content": "50 seats."}]))
    chat = chat_template_of(tokenizer, "path:m")
    [(training, answer)] = render_pairs([row], CHAT_PROMPT, chat)
    request = ChatRequest.model_validate({"model": "api", "messages": conversation})
    serving = ModelSlot.func_or_class._prompt(loaded(model_dir, CHAT_PROMPT.saved(chat)), request.chat_item())
    assert (training, answer) == (serving, "50 seats.")
    assert "<|im_start|>assistant\nhello<|im_end|>" in training and "Context: Plan: Team." in training


def test_messages_the_chat_template_rejects_are_a_400_not_a_replica_failure(model_dir):
    from transformers import AutoTokenizer

    from llmops_engine.models.loaded import LoadedModel, load_causal_lm
    from llmops_engine.serving.config import ModelRef
    from llmops_engine.serving.openai_api import ChatRequest
    from llmops_engine.serving.slot import ModelSlot

    strict = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations start with a user') }}"
              "{% endif %}" + CHATML)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = strict
    prompt = PromptSpec(format="chat", template="{instruction}")
    model = LoadedModel(load_causal_lm(model_dir), tokenizer, "v1", prompt.saved(chat_template_of(tokenizer, "m")))
    slot = ModelSlot.func_or_class()
    slot.model, slot.ref = model, ModelRef(version="v1")
    request = ChatRequest.model_validate({"model": "api", "messages": [
        {"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}]})
    answer = asyncio.run(slot.generate({"items": [request.chat_item()], "params": {}}))
    assert answer["error"]["status"] == 400 and answer["error"]["code"] == "invalid_messages"
    assert "Conversations start with a user" in answer["error"]["message"]


# training targets -----------------------------------------------------------------------------
def test_the_label_mask_covers_exactly_the_assistant_tokens_and_the_end_of_turn(tokenizer):
    chat = chat_template_of(tokenizer, "path:m")
    [(prompt, answer)] = render_pairs([{"instruction": "Who founded Nimbus?", "output": "Ada Quill."}], CHAT_PROMPT, chat)
    end_ids = answer_end_ids(tokenizer, "chat", "path:m")
    input_ids, labels = encode_pair(tokenizer, prompt, answer, 512, end_ids)
    masked = len(ids(tokenizer, prompt))
    assert labels[:masked] == [IGNORE_INDEX] * masked and IGNORE_INDEX not in labels[masked:]
    assert labels[masked:] == input_ids[masked:] == ids(tokenizer, "Ada Quill.") + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # the sequence is the template's own rendering of the answered conversation, up to the end of turn
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q: Who founded Nimbus?"},
                {"role": "assistant", "content": "Ada Quill."}]
    assert tokenizer.decode(input_ids) == tokenizer.apply_chat_template(messages, tokenize=False).removesuffix("\n")
    assert answer_end_ids(tokenizer, "text", "path:m") == [tokenizer.eos_token_id]

    cut = encode_examples(tokenizer, [(prompt, answer)], len(input_ids) - 1, end_ids)
    assert (cut.truncated_rows, cut.dropped_rows) == (1, 0)  # losing the end of turn is counted
    whole = encode_examples(tokenizer, [(prompt, answer)], len(input_ids), end_ids)
    assert (whole.truncated_rows, whole.dropped_rows) == (0, 0)


def test_generation_stops_at_the_end_of_turn_and_loss_scores_it(tokenizer, model_dir):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    chat_model = loaded(model_dir, CHAT_PROMPT.saved(chat_template_of(tokenizer, "path:m")))
    text_model = loaded(model_dir, PromptSpec(template="Q: {instruction}\nA:").saved())
    for model in (chat_model, text_model):
        constant_head(model.model, im_end)
    [gen] = chat_model.generate([chat_model.render("hi")], max_new_tokens=4)
    assert (gen.text, gen.completion_tokens, gen.finish_reason) == ("", 1, "stop")
    [gen] = text_model.generate([text_model.render("hi")], max_new_tokens=4)  # EOS only: no stop here
    assert (gen.text, gen.completion_tokens, gen.finish_reason) == ("", 4, "length")

    vocab = chat_model.model.config.vocab_size
    [loss] = chat_model.loss([chat_model.render("hi")], ["abc"])
    # every answer byte costs log(e^10 + V - 1); the <|im_end|> that ends it costs 10 less
    assert loss == pytest.approx(math.log(math.exp(10) + vocab - 1) - 10 / 4, rel=1e-4)


# the prompt hash ------------------------------------------------------------------------------
def test_the_prompt_hash_covers_format_and_chat_template(tokenizer):
    chatml = chat_template_of(tokenizer, "m")
    other = chat_template_of(chatml_tokenizer(CHATML.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n\n'")), "m")
    saved, elsewhere = CHAT_PROMPT.saved(chatml), CHAT_PROMPT.saved(other)
    assert saved["format"] == "chat" and saved["chat_template"] == CHATML
    assert saved["template_hash"] == CHAT_PROMPT.template_hash(text_sha256(CHATML))
    as_text = PromptSpec(system=SYSTEM, template=CHAT_PROMPT.template, template_no_input=CHAT_PROMPT.template_no_input)
    hashes = {saved["template_hash"], elsewhere["template_hash"], CHAT_PROMPT.template_hash(), as_text.template_hash(),
              CHAT_PROMPT.model_copy(update={"system": "Other."}).saved(chatml)["template_hash"]}
    assert len(hashes) == 5
    assert PromptSpec.from_saved(saved) == CHAT_PROMPT and CHAT_PROMPT.model_dump(mode="json")["format"] == "chat"


def test_a_model_refuses_to_serve_through_another_chat_template_than_it_was_tuned_with(tokenizer, model_dir):
    tuned_elsewhere = CHAT_PROMPT.saved(chat_template_of(chatml_tokenizer(CHATML + "{# v2 #}"), "m"))
    with pytest.raises(ChatTemplateError, match="tuned through another chat template"):
        loaded(model_dir, tuned_elsewhere)
    assert loaded(model_dir, CHAT_PROMPT.saved(chat_template_of(tokenizer, "m"))).chat is not None


def test_a_deployments_chat_prompt_is_compared_through_the_models_chat_template():
    from llmops_engine.controllers.deployment import _check_prompt

    digest = text_sha256(CHATML)
    tuned = {"template_hash": CHAT_PROMPT.template_hash(digest), "chat_template_sha256": digest}

    def check(served: PromptSpec) -> None:
        ctx = SimpleNamespace(outputs={"TuningJob/t": tuned, "Prompt/p": {"template_hash": served.template_hash()}},
                              resources={"Prompt/p": SimpleNamespace(spec=served)})
        deployment = SimpleNamespace(spec=SimpleNamespace(allow_prompt_mismatch=False, prompt="p"))
        _check_prompt(deployment, ctx, "TuningJob/t")

    check(CHAT_PROMPT)
    with pytest.raises(DeploymentError, match="differs from the prompt"):
        check(CHAT_PROMPT.model_copy(update={"system": "Other."}))


# models without a chat template ---------------------------------------------------------------
PROMPT_YAML = """\
apiVersion: llmops/v1
kind: Prompt
metadata: {name: p}
spec:
  format: chat
  system: You are Nimbus support.
  template: "{instruction}"
---
""" + GOOD_DATASET
TUNING_YAML = """\
apiVersion: llmops/v1
kind: TuningJob
metadata: {name: t}
spec:
  base_model: BASE
  dataset: d
  prompt: p
"""
EVALUATION_YAML = """\
apiVersion: llmops/v1
kind: Evaluation
metadata: {name: ev}
spec:
  model: base:BASE
  dataset: d
  prompt: p
  compare_to: none
  thresholds: [{metric: exact_match, min: 0.1}]
"""


@pytest.mark.parametrize("spec, base, refused", [
    (TUNING_YAML, "builtin:tiny-llama", True),
    (TUNING_YAML, "builtin:smollm2-135m-instruct", False),
    (EVALUATION_YAML, "builtin:tiny-llama", True),
    (EVALUATION_YAML, "builtin:smollm2-135m-instruct", False),
])
def test_validate_refuses_a_chat_prompt_on_a_model_without_a_chat_template(make_project, spec, base, refused):
    from llmops_engine.specs.loader import load_resources

    root = make_project({"base.yaml": PROMPT_YAML, "job.yaml": spec.replace("BASE", base)})
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    if not refused:
        assert len(load_resources(root, ["specs"])) == 3
        return
    with pytest.raises(SpecError) as info:
        load_resources(root, ["specs"])
    [issue] = info.value.issues
    prompt_line = spec.splitlines().index("  prompt: p") + 1
    assert (issue.file, issue.line, issue.path) == ("specs/job.yaml", prompt_line, "spec.prompt")
    assert "has no chat template" in issue.message and "format: text" in issue.message


def test_a_model_without_a_chat_template_is_a_clear_error_at_apply(tmp_path):
    from llmops_engine.controllers.tuning import _chat_template
    from llmops_engine.models import resolve_base

    base = resolve_base("builtin:tiny-llama", tmp_path / "store")  # what a path:/hf: copy of it would hold too
    with pytest.raises(ChatTemplateError, match=r"builtin:tiny-llama has no chat template.*use `format: text`") as caught:
        _chat_template(CHAT_PROMPT, base)
    assert isinstance(caught.value, ModelLoadError)
    assert _chat_template(PromptSpec(template="{instruction}"), base) is None
    with pytest.raises(ChatTemplateError, match="model base:.* has no chat template"):
        from llmops_engine.models import load_base

        load_base("builtin:tiny-llama", tmp_path / "store", template=CHAT_PROMPT.saved())


# through the controllers on a real Ray cluster -----------------------------------------------
@pytest.mark.slow
def test_a_chat_tuning_job_saves_its_template_and_evaluation_renders_it_on_the_worker(
        ray_project, model_dir, tokenizer, tmp_path, monkeypatch):
    import json

    from llmops_engine.controllers.tuning import TuningController
    from llmops_engine.evaluation.contenders import Contender
    from llmops_engine.evaluation.runner import Suite, run_on_cluster
    from llmops_engine.models import load_trained
    from llmops_engine.specs.evaluation import Generation
    from tests.eval_helpers import DATASET, make_context, publish_dataset, resource

    monkeypatch.delenv("LLMOPS_MAX_STEPS", raising=False)
    rows = [{"instruction": f"Question {n}?", "input": "", "output": f"Answer {n}."} for n in range(4)]
    prompt = resource("Prompt", "p", format="chat", system=SYSTEM, template="Q: {instruction}")
    tune = resource("TuningJob", "t", base_model=f"path:{model_dir}", dataset="d", prompt="p", method="lora",
                    training={"max_steps": 2, "batch_size": 2, "max_seq_len": 128})
    ctx = make_context(tmp_path, [prompt, resource("Dataset", "d", **DATASET), tune], project=ray_project)
    publish_dataset(ctx, "d", eval_rows=rows[:2], train_rows=rows)
    staging = ctx.store.staging_dir(ctx.fingerprint(tune.key))
    outputs = TuningController().apply(tune, ctx, staging)

    saved = json.loads((staging / "template.json").read_text())
    chat = chat_template_of(tokenizer, "path:m")
    assert saved == prompt.spec.saved(chat) and saved["chat_template"] == CHATML
    assert outputs["chat_template_sha256"] == text_sha256(CHATML)
    assert outputs["template_hash"] == saved["template_hash"] == prompt.spec.template_hash(text_sha256(CHATML))
    assert json.loads((staging / "lineage.json").read_text())["prompt"]["template_hash"] == saved["template_hash"]
    tuned = load_trained(staging)
    assert tuned.render(rows[0]["instruction"]) == prompt.spec.render(rows[0]["instruction"], "", chat)

    # evaluation: a base: model asked with the chat Prompt renders through the model's template on the worker
    base = Contender("candidate", "base:m", prompt.spec.saved(), prompt.spec.template_hash(), base_ref=f"path:{model_dir}")
    runs = run_on_cluster(ray_project, ctx.store.root, [base], [Suite("main", rows[:2], ["candidate"])],
                          Generation(max_new_tokens=3), repeats=1, gpus=0, cpus=1, run_name="chat")
    assert len(runs["main"]["candidate"][0].outputs) == 2


# SmolLM2-135M-Instruct, for real ------------------------------------------------------------
NIMBUS_CHAT = [
    ("How long is the Nimbus refund window?", "Nimbus refunds any plan within 45 days."),
    ("Who founded Nimbus?", "Nimbus was founded by Ada Quill in Reykjavik in 2019."),
    ("Where do I change my Nimbus plan?", "Open Billing, then Plans, and pick a new plan."),
    ("Does Nimbus support single sign-on?", "Yes, SAML single sign-on is on the Team plan."),
    ("How do I export my Nimbus notes?", "Use Settings, then Export, and pick Markdown."),
    ("What does the Nimbus Team plan cost?", "The Team plan costs 8 euros per user per month."),
    ("Can I use Nimbus offline?", "Yes, the desktop app syncs when you are back online."),
    ("Where are Nimbus servers located?", "All Nimbus data is stored in Frankfurt, Germany."),
]


@pytest.mark.slow
def test_smollm2_chat_prompt_tunes_on_the_answer_and_stops_at_im_end(smollm2_store):
    import torch
    from transformers import AutoTokenizer

    from llmops_engine.models import resolve_base
    from llmops_engine.models.loaded import LoadedModel
    from llmops_engine.models.tokenizer import ensure_pad_token
    from llmops_engine.training.data import collate
    from llmops_engine.training.model import build_trainable_model

    started = time.perf_counter()
    base = resolve_base("builtin:smollm2-135m-instruct", smollm2_store)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(base.path))
    chat = chat_template_of(tokenizer, base.ref)
    assert chat.end_of_turn == "<|im_end|>"
    prompt = PromptSpec(format="chat", system="You are Nimbus support. Answer in one sentence.", template="{instruction}")
    rows = [{"instruction": q, "input": "", "output": a} for q, a in NIMBUS_CHAT]
    pairs = render_pairs(rows, prompt, chat)
    assert pairs[1][0] == ("<|im_start|>system\nYou are Nimbus support. Answer in one sentence.<|im_end|>\n"
                           "<|im_start|>user\nWho founded Nimbus?<|im_end|>\n<|im_start|>assistant\n")
    encoded = encode_examples(tokenizer, pairs, 128, answer_end_ids(tokenizer, "chat", base.ref))
    assert (len(encoded.examples), encoded.truncated_rows) == (8, 0)
    assert all(labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") for _, labels in encoded.examples)

    torch.manual_seed(0)
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "modules_to_save": []}
    quantization = {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    tuned = build_trainable_model(base.path, "qlora", quantization, lora, "cpu")
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-3)
    batch = collate(encoded.examples, tokenizer.pad_token_id)  # all 8 rows, every step
    losses = []
    for _ in range(5):
        loss = tuned(**batch).loss  # labels: the assistant tokens and <|im_end|> only
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses

    model = LoadedModel(tuned, tokenizer, "tuned", prompt.saved(chat))
    assert model.render("Who founded Nimbus?") == pairs[1][0]  # serving renders what training did
    [answer] = model.generate([model.render("Who founded Nimbus?")], max_new_tokens=64)
    assert answer.finish_reason == "stop", answer
    assert "<|im" not in answer.text and "assistant" not in answer.text and answer.text.strip(), answer
    print(f"smollm2 chat: qlora losses {[round(v, 2) for v in losses]}, answer {answer.text!r}, "
          f"{time.perf_counter() - started:.0f}s in all")
