"""Scoring a provider's model: each eval example as a chat request, a few in flight at once.

It runs in the apply process, not in the Ray task that loads local models: nothing is loaded,
and the provider's key is already in this environment (it never has to travel to a worker).
Examples are rendered exactly as a prompt-only Deployment renders requests (the Prompt as chat
messages, with a knowledge base's chunks as {context}), and the raw runs have the shape the Ray
task returns, so metrics, gates and the report treat a hosted model like any other. Answers
are not reused across evaluations (answers.py): a hosted model can change under the same id.
"""

from __future__ import annotations

import asyncio
import time

from ..errors import EvaluationError, ProviderError
from ..providers.client import ProviderClient, Upstream, api_key
from ..providers.chat import chat_body, gen_of
from .contenders import Contender
from .runner import Suite, grounded, open_retriever, question

CONCURRENCY = 4  # requests in flight per provider model: polite to a rate-limited endpoint, 4× a serial run


def score_hosted(contenders: list[Contender], suites: list[Suite], generation: dict, repeats: int) -> dict:
    """suite -> role -> one raw run per repeat, for the provider contenders."""
    results: dict[str, dict[str, list[dict]]] = {suite.name: {} for suite in suites}
    for contender in contenders:
        retriever = open_retriever(contender)
        for suite in suites:
            if contender.role not in suite.roles:
                continue
            examples, sources = grounded([question(e) for e in suite.examples], retriever, contender.knowledge)
            runs = [asyncio.run(_answer_all(contender, examples, {**generation, "seed": generation["seed"] + repeat}))
                    for repeat in range(repeats)]
            results[suite.name][contender.role] = [{**run, "losses": None, "sources": sources} for run in runs]
    return results


async def _answer_all(contender: Contender, examples: list[dict], generation: dict) -> dict:
    upstream = Upstream.from_json(contender.upstream)
    client = ProviderClient(upstream, api_key(upstream))
    limit = asyncio.Semaphore(CONCURRENCY)

    async def answer(index: int, example: dict) -> tuple[str, int, float]:
        async with limit:
            began = time.perf_counter()
            try:
                gen = gen_of(await client.chat(chat_body(contender.template, example, generation, [])))
            except ProviderError as exc:
                raise EvaluationError(f"{contender.role} ({contender.label}) could not answer example {index + 1}: "
                                      f"{exc}") from exc
            return gen["text"], gen["completion_tokens"], (time.perf_counter() - began) * 1000

    try:
        answers = await asyncio.gather(*(answer(i, e) for i, e in enumerate(examples)))
    finally:
        await client.aclose()
    return {"outputs": [a[0] for a in answers], "output_tokens": [a[1] for a in answers],
            "latencies_ms": [a[2] for a in answers], "reused": 0}
