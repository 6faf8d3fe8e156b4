"""The transformers engine's continuous batching, against `LoadedModel.generate` on the same model.

Requests that join a running batch at different steps must get exactly the answer they get alone;
a row whose sampling fails, or whose client left, leaves without touching the others.
"""

from __future__ import annotations

import asyncio

import pytest

from llmops_engine.errors import EngineError
from llmops_engine.models import load_base
from llmops_engine.serving.engines.decoding import TransformersEngine
from llmops_engine.serving.engines.text import AnswerText

PROMPTS = ["Where is my invoice?", "How do I reset the password of the account I opened last year?", "hi",
           "Tell me a long story about a cat and a dog who became friends", "a b c d e f g h i j k l m n o p"]


def params(max_new_tokens: int = 12, **more) -> dict:
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0, **more}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_base("builtin:tiny-llama", tmp_path_factory.mktemp("store"))


async def _answer(engine, prompt: str, settings: dict, delay: float = 0.0, stops=()) -> tuple[str, dict]:
    await asyncio.sleep(delay)
    pieces = []
    async for event in engine.stream(prompt, settings, list(stops)):
        if "text" in event:
            pieces.append(event["text"])
        else:
            return "".join(pieces), event["done"]


def _run(model, *requests, max_batch_size: int = 8):
    engine = TransformersEngine(model, max_batch_size, 0.01)

    async def main():
        return await asyncio.gather(*(_answer(engine, *request) for request in requests))

    try:
        return asyncio.run(main()), engine
    finally:
        engine.close()


@pytest.mark.parametrize("delays", [[0, 0, 0, 0, 0], [0, 0.02, 0.05, 0.08, 0.11], [0.1, 0.05, 0, 0.03, 0.2]])
def test_rows_joining_at_any_step_answer_as_they_would_alone(model, delays):
    alone = [model.generate([p], 12)[0] for p in PROMPTS]
    answers, engine = _run(model, *[(p, params(), d) for p, d in zip(PROMPTS, delays)])
    for (streamed, done), reference in zip(answers, alone):
        assert streamed == done["text"] == reference.text
        assert (done["completion_tokens"], done["finish_reason"]) == (reference.completion_tokens, reference.finish_reason)
        assert done["prompt_tokens"] == reference.prompt_tokens
    assert engine.info()["mean_batch_size"] > 1  # they shared steps


def test_mixed_lengths_leave_the_batch_when_done(model):
    answers, engine = _run(model, (PROMPTS[0], params(3)), (PROMPTS[1], params(20)), (PROMPTS[2], params(1)))
    assert [done["completion_tokens"] for _, done in answers] == [3, 20, 1]
    info = engine.info()
    assert info["active"] == 0 and info["generated_tokens"] == 24
    assert info["batches"] == 19  # the first token of each comes from its prefill; the longest needs 19 more steps


def test_a_seed_gives_the_same_sample_whatever_it_is_batched_with(model):
    sampled = params(10, do_sample=True, temperature=0.9, top_p=0.9, seed=42)
    (alone, _), = _run(model, (PROMPTS[0], sampled))[0]
    crowded, _ = _run(model, (PROMPTS[0], sampled), (PROMPTS[1], params(10, do_sample=True, temperature=1.0, seed=7)),
                      (PROMPTS[2], params(10)))
    assert crowded[0][0] == alone
    other, _ = _run(model, (PROMPTS[0], params(10, do_sample=True, temperature=0.9, top_p=0.9, seed=43)))
    assert other[0][0] != alone  # the seed does matter


def test_a_row_whose_sampling_fails_fails_alone(model):
    engine = TransformersEngine(model, 8, 0.01)

    async def main():
        good = [asyncio.create_task(_answer(engine, p, params())) for p in PROMPTS[:3]]
        bad = asyncio.create_task(_answer(engine, PROMPTS[3], params(do_sample=True, temperature=5e-324)))
        huge_seed = asyncio.create_task(_answer(engine, PROMPTS[4], params(do_sample=True, seed=2**64)))
        return await asyncio.gather(*good), await asyncio.gather(bad, huge_seed, return_exceptions=True)

    try:
        good, bad = asyncio.run(main())
    finally:
        engine.close()
    assert all(done["completion_tokens"] == 12 for _, done in good)
    assert all(isinstance(error, EngineError) for error in bad), bad


def test_a_stream_closed_early_stops_its_row(model):
    engine = TransformersEngine(model, 8, 0.01)

    async def main():
        stream = engine.stream(PROMPTS[0], params(500), [])
        await anext(stream)  # (the toy model's bytes are seldom valid UTF-8: its first text comes late)
        await stream.aclose()
        at_close = engine.info()["generated_tokens"]
        for _ in range(100):
            if engine.info()["active"] == 0:
                break
            await asyncio.sleep(0.02)
        return at_close, engine.info()

    try:
        at_close, info = asyncio.run(main())
    finally:
        engine.close()
    assert info["active"] == 0 and info["generated_tokens"] - at_close <= 2 and at_close < 500


def test_a_closed_engine_finishes_what_it_has_and_refuses_more(model):
    engine = TransformersEngine(model, 8, 0.01)

    async def main():
        running = asyncio.create_task(_answer(engine, PROMPTS[0], params(30)))
        await asyncio.sleep(0.05)
        engine.close()
        with pytest.raises(EngineError, match="unloaded"):
            await _answer(engine, PROMPTS[1], params())
        return await running

    _, done = asyncio.run(main())
    assert done["completion_tokens"] == 30


@pytest.mark.parametrize("text,stops,expected,stopped", [
    ("Hello world STOP more", ["STOP"], "Hello world ", True),
    ("Hello world", ["world!"], "Hello world", False),  # a stop's prefix at the end is released at the end
    ("aaa\n\nbbb", ["\n\n", "bb"], "aaa", True),
    ("naïve café 日本語 🙂", [], "naïve café 日本語 🙂", False),
    ("x" * 40 + "END", ["END", "xEN"], "x" * 39, True),  # the earliest stop wins
])
def test_answer_text_releases_only_what_no_later_token_can_change(model, text, stops, expected, stopped):
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer = AnswerText(lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True), stops)
    released = ""
    for token in ids:
        piece = answer.feed(token)
        released += piece
        assert "\ufffd" not in piece  # never half a character
        assert not any(stop in released for stop in stops)  # never a stop string, even for a moment
    released += answer.finish()
    assert (released, answer.stopped) == (expected, stopped)
