"""A model slot: one Serve deployment holding at most one model version.

Which version it holds is its user_config, so loading a new version into the spare slot
is a `reconfigure` on the running replicas — no restart. A local version runs on its engine
(engines/: transformers with continuous batching, llama-cpp, vllm); every answer is a stream of
the engine's tokens, collected into a whole answer unless the client streams.
A grounded version (a knowledge base in its ModelRef) retrieves each chat request's chunks here,
off the event loop, before batching: the index is part of the version, like the weights.

A batch is shared by many clients, so nothing one request carries may fail or stall the
others: prompts are checked per request before they are queued (an empty sequence would
crash a 4-bit kernel and with it the replica), every prompt is its own sequence (so
`max_batch_size` bounds the rows of every decode step, and a many-prompt request queues behind
the others instead of widening a batch), and the engine fails only the sequence at fault.

A provider version (its ModelRef has an `upstream`) holds HTTP clients instead of weights, plus
at most one local model of its fallback chain; `generate` asks the chain in order (relay.py) and
`stream` relays the provider's tokens as they arrive — or the local model's, as it makes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import sys
import time
from typing import Any

from ray import serve

from ..errors import ChatTemplateError, EngineError, ProviderError
from .config import ModelRef
from .openai_api import MAX_PROMPTS_PER_REQUEST
from ..providers.chat import chat_body, gen_of
from .relay import UNSUPPORTED_COMPLETIONS, exhausted, refused, relay_error

STREAM_WINDOW_S = 0.03  # how long a streamed chunk collects tokens after the first (see _next_window)


def load_retriever(ref: ModelRef):
    """The knowledge base index a grounded version retrieves from, or None."""
    if not ref.knowledge:
        return None
    from llmops_engine.knowledge.index import Index
    from llmops_engine.state.stores import object_on_this_node

    where = ref.knowledge
    return Index.open(object_on_this_node(where.get("store_url"), where["fingerprint"], where["path"]))


def render_chat(model, instruction: str, input: str, history: list[dict[str, str]] | None = None,
                context: str = "") -> str:
    if model.prompt_format == "chat":  # earlier turns go through the chat template as turns, not as input
        return model.render(instruction, "", history or [], context)
    if model.template:
        return model.render(instruction, input, context=context)
    # A base model has no template: a plain transcript is the best it can get.
    return "".join(f"{part}\n" for part in (context, input) if part) + f"user: {instruction}\nassistant:"


@serve.deployment
class ModelSlot:
    """Holds at most one model version; which one is its user_config (swap = reconfigure)."""

    def __init__(self) -> None:
        self.ref: ModelRef | None = None
        self.model = None  # the version's PromptedTokenizer: renders and counts its prompts
        self.engine = None  # runs the model (engines/)
        self.retriever = None
        self.clients: dict[str, Any] = {}  # provider label -> ProviderClient (a provider version's chain)
        self.key_hashes: dict[str, str] = {}  # SHA-256 of the provider keys the clients hold
        self.retired: list[Any] = []  # clients of a version swapped out, closed on the next request
        self.load_error: dict[str, str] | None = None
        self.max_prompt_tokens = 1024
        self.batching: dict[str, Any] = {}
        self.policy = None  # the guardrails retrieved chunks pass (their input checks), if any

    async def reconfigure(self, config: dict[str, Any]) -> None:
        from .guarding import compile_policy

        self.max_prompt_tokens = config["max_prompt_tokens"]
        self.policy = compile_policy(config.get("guardrails"))
        self.batching = config["batching"]
        if hasattr(self.engine, "configure"):  # an engine that batches takes the new settings live
            self.engine.configure(self.batching["max_batch_size"], self.batching["batch_wait_timeout_s"])
        ref = ModelRef.from_json(config.get("model"))
        hashes = config.get("provider_key_sha256") or {}
        if _same_weights(ref, self.ref) and hashes == self.key_hashes:
            self.ref = ref
            return
        self.retired += self.clients.values()
        if _same_weights(ref, self.ref):  # a rotated provider key: new clients, same weights
            self.ref, self.clients = None, {}
        else:
            if self.engine is not None:
                self.engine.close()  # it finishes the requests it has, then lets go of the weights
            self.model, self.engine, self.retriever, self.ref, self.clients = None, None, None, None, {}
            gc.collect()  # free the old weights before loading the new ones
        self.load_error, self.key_hashes = None, hashes
        if ref is None:
            return
        try:
            if self.model is None and self.retriever is None:
                self.retriever = load_retriever(ref)
                local = ref.local_model()
                if local:
                    from .engines.loading import start_engine

                    self.model, self.engine = await start_engine(local, self.batching, self.max_prompt_tokens)
            self.clients = provider_clients(ref, hashes)
        except Exception as exc:  # noqa: BLE001 - stay up and empty; the engine reads the error
            # Raising here would make Serve restart the replica again and again; an empty
            # slot that reports why is what the rollout needs to fail fast and clearly.
            self.load_error = {"version": ref.version, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            return
        self.ref = ref

    async def info(self) -> dict[str, Any]:
        torch = sys.modules.get("torch")  # a replica relaying a provider never imports it
        return {"version": self.ref.version if self.ref else None,
                "loaded": self.ref is not None and (self.model is not None or bool(self.clients)),
                "load_error": self.load_error,
                "torch_threads": torch.get_num_threads() if torch else None,
                **(self.engine.info() if self.engine is not None else {})}

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request: {"items": [{"prompt"} | {"instruction", "input"}], "params": {...}, "live"}."""
        if self.ref is None:
            raise RuntimeError("this slot holds no model")
        ref, local = self.ref, (self.model, self.engine)  # as they are now: a swap may land during an await
        await self._close_retired()
        self._inject_fault(request)
        items, sources, grounding = await self._grounded(request["items"])
        if ref.upstream is not None:
            return {**await self._relayed(ref, local, request, items, sources), **grounding}
        return {**await self._local(ref.version, local, request, items, sources), **grounding}

    async def stream(self, request: dict[str, Any]):
        """A request as it streams: {"head": {answered_by, version, sources}}, then OpenAI-shaped chunks
        ({"chunk": ...}) as the provider sends them or the local model makes them; an {"error": ...}
        instead of the head when no model could answer, or after chunks when the answer broke off
        mid-way (nothing is retried once a token left). Raw completion prompts: local versions only."""
        if self.ref is None:
            raise RuntimeError("this slot holds no model")
        ref, local = self.ref, (self.model, self.engine)  # as they are now: a swap may land during an await
        await self._close_retired()
        self._inject_fault(request)
        version = ref.version
        items, sources, grounding = await self._grounded(request["items"])
        if any("instruction" not in item for item in items):
            if ref.upstream is not None:
                yield {"error": UNSUPPORTED_COMPLETIONS, "version": version}
                return
            async for item in self._local_stream(version, local, request, items, {"head": {"answered_by": None, "version": version}}):
                yield item
            return
        failures: list[tuple[str, str]] = []
        for member in ref.chain():
            head = {"head": {"answered_by": member.label, "version": version, **grounding,
                             **({"sources": sources} if self.retriever else {})}}
            if member.upstream is None:
                async for item in self._local_stream(version, local, request, items, head):
                    yield item
                return
            relayed = False
            try:
                body = chat_body(member.prompt, items[0], request["params"], request.get("stops") or [])
                async for chunk in self.clients[member.label].stream_chat(body):
                    if not relayed:
                        relayed = True
                        yield head
                    yield {"chunk": chunk}
            except ProviderError as exc:
                if relayed:
                    yield {"error": relay_error(502, exc.code, f"{member.label} broke off mid-stream: {exc.code}")}
                    return
                if exc.client_fault:
                    yield {"error": refused(member.label, exc), "version": version}
                    return
                failures.append((member.label, exc.code))
                continue
            if not relayed:
                yield head
            return
        yield {"error": exhausted(failures), "version": version}

    async def _local_stream(self, version: str, local: tuple[Any, Any], request: dict[str, Any],
                            items: list[dict[str, Any]], head: dict[str, Any]):
        """The local model's answers as OpenAI chunks, token by token (one choice `index` per prompt,
        interleaved as the engine makes them). The head waits for the first token, so a version that
        fails before it can still hand the request to the stable slot."""
        model, engine = local
        try:
            prompts = [self._prompt(model, item) for item in items]
        except ChatTemplateError as exc:
            yield {"error": _invalid_messages(exc), "version": version}
            return
        if error := self._rejection(request, [engine.count_tokens(p) for p in prompts]):
            yield {"error": error, "version": version}
            return
        events: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.create_task(_pump(engine.stream(p, request["params"], request.get("stops") or []), i, events))
                 for i, p in enumerate(prompts)]
        try:
            index, event = await events.get()
            if isinstance(event, EngineError):
                yield {"error": {"status": 500, "code": "server_error", "message": _failed(version, event)}, "version": version}
                return
            yield head
            role = "assistant" if "instruction" in items[0] else None
            yield {"chunk": _chunk(event, index, role if index == 0 else None)}
            unfinished = len(prompts) - ("done" in event)
            while unfinished:
                window = await _next_window(events)
                for index, event in window:
                    if isinstance(event, EngineError):
                        yield {"error": relay_error(500, "server_error", _failed(version, event))}
                        return
                for index, event in _coalesced(window):
                    yield {"chunk": _chunk(event, index)}
                    unfinished -= "done" in event
        finally:
            for pump in pumps:  # a client that left (or a failed answer) stops every generation of the request
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    def _inject_fault(self, request: dict[str, Any]) -> None:
        """Test-only (ModelRef.fault_error_rate): fail this share of live requests, streamed or not."""
        if request.get("live") and self.ref.fault_error_rate and random.random() < self.ref.fault_error_rate:
            raise RuntimeError(f"injected fault in model version {self.ref.version}")

    async def _close_retired(self) -> None:
        """Close the HTTP clients of a version swapped out (reconfigure cannot await)."""
        retired, self.retired = self.retired, []
        for client in retired:
            await client.aclose()

    async def _relayed(self, ref: ModelRef, local: tuple[Any, Any], request: dict[str, Any],
                       items: list[dict[str, Any]], sources: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask the chain in order: a failing provider hands the request to the next model."""
        version = ref.version
        if any("instruction" not in item for item in items):
            return {"error": UNSUPPORTED_COMPLETIONS, "version": version}
        grounded = {"sources": sources} if self.retriever else {}
        failures: list[tuple[str, str]] = []
        for member in ref.chain():
            if member.upstream is None:
                return {**await self._local(version, local, request, items, sources), "answered_by": member.label}
            try:
                body = chat_body(member.prompt, items[0], request["params"], request.get("stops") or [])
                answer = await self.clients[member.label].chat(body)
            except ProviderError as exc:
                if exc.client_fault:
                    return {"error": refused(member.label, exc), "version": version}
                failures.append((member.label, exc.code))
                continue
            return {"gens": [gen_of(answer)], "version": version, "answered_by": member.label, **grounded}
        return {"error": exhausted(failures), "version": version}

    async def _local(self, version: str, local: tuple[Any, Any], request: dict[str, Any], items: list[dict[str, Any]],
                     sources: list[dict[str, Any]]) -> dict[str, Any]:
        """Whole answers from the model this replica loaded (its engine batches them with other requests)."""
        model, engine = local
        try:
            prompts = [self._prompt(model, item) for item in items]
        except ChatTemplateError as exc:  # the client's messages, not the replica, are at fault
            return {"error": _invalid_messages(exc), "version": version}
        if error := self._rejection(request, [engine.count_tokens(p) for p in prompts]):
            return {"error": error, "version": version}
        stops = request.get("stops") or []
        gens = await asyncio.gather(*(self._answer(engine, p, request["params"], stops) for p in prompts))
        failures = [g["failure"] for g in gens if "failure" in g]
        if failures:
            # Raised, not returned: a version whose generation fails must count against it in
            # canary analysis (and the ingress retries the request on the primary slot).
            raise RuntimeError(_failed(version, failures[0]))
        return {"gens": gens, "version": version, **({"sources": sources} if self.retriever else {})}

    @staticmethod
    async def _answer(engine, prompt: str, params: dict[str, Any], stops: list[str]) -> dict[str, Any]:
        try:
            async for event in engine.stream(prompt, params, stops):
                if "done" in event:
                    return event["done"]
        except EngineError as exc:
            return {"failure": str(exc)}
        return {"failure": "the engine ended the answer without finishing it"}

    async def _grounded(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict]:
        """Chat items with the chunks retrieved for their question as `context`, those chunks' sources,
        and how retrieval went ({retrieval_ms, guardrails}: what the input checks did to the chunks).
        Raw completion prompts are the client's own text: nothing is added to them."""
        retriever, settings = self.retriever, (self.ref.knowledge if self.ref else None) or {}
        if retriever is None:
            return items, [], {}
        from llmops_engine.knowledge.grounding import context_of, sources_of

        grounded, sources, findings, started = [], [], [], time.perf_counter()
        for item in items:
            if "instruction" not in item:
                grounded.append(item)
                continue
            # Off the event loop: other requests keep being batched while this one retrieves.
            hits = await asyncio.to_thread(retriever.search, item["instruction"], settings["top_k"], settings["mode"])
            hits = self._guarded_hits(hits, findings)
            grounded.append({**item, "context": context_of(hits)})
            sources += sources_of(hits)
        report = {"retrieval_ms": round((time.perf_counter() - started) * 1000, 2)}
        return grounded, sources, {**report, **({"guardrails": findings} if findings else {})}

    def _guarded_hits(self, hits: list, findings: list[dict[str, Any]]) -> list:
        """Retrieved chunks through the input checks, as if the client had sent them: a blocked
        chunk is left out of the context (the client did not write it), a masked one is masked."""
        if self.policy is None or not self.policy.checks("input"):
            return hits
        from .guarding import add_findings, findings_json

        kept = []
        for hit in hits:
            verdict = self.policy.check("input", hit.text)
            add_findings(findings, [{**finding, "stage": "retrieval"} for finding in findings_json(verdict)])
            if verdict.action != "block":
                kept.append(dataclasses.replace(hit, text=verdict.text))
        return kept

    def _rejection(self, request: dict[str, Any], lengths: list[int]) -> dict[str, Any] | None:
        """Why this request's prompts must not be queued, as a 400 error; None if they may.
        The ingress validates too; this holds for every caller of the slot."""
        param = "messages" if any("instruction" in item for item in request["items"]) else "prompt"
        if not lengths or min(lengths) == 0:
            return {"status": 400, "code": "empty_prompt", "param": param, "message": "prompts must not be empty"}
        if len(lengths) > MAX_PROMPTS_PER_REQUEST:
            return {"status": 400, "code": "too_many_prompts", "param": param,
                    "message": f"at most {MAX_PROMPTS_PER_REQUEST} prompts per request are accepted"}
        if max(lengths) > self.max_prompt_tokens:
            return {"status": 400, "code": "context_length_exceeded", "param": param,
                    "message": f"the prompt has {max(lengths)} tokens; this deployment "
                               f"accepts at most {self.max_prompt_tokens}"}
        return None

    @staticmethod
    def _prompt(model, item: dict[str, Any]) -> str:
        if "prompt" in item:
            return item["prompt"]
        return render_chat(model, item["instruction"], item.get("input", ""), item.get("history"), item.get("context", ""))


def provider_clients(ref: ModelRef, key_hashes: dict[str, str]) -> dict[str, Any]:
    """An HTTP client for each provider model of a version's chain, with the key the deploying
    apply handed over (keys.py; checked against the hash in this slot's config)."""
    from llmops_engine.providers.client import ProviderClient, Upstream
    from llmops_engine.serving.keys import fetch

    keys = fetch(key_hashes)
    clients = {}
    for member in ref.chain():
        if member.upstream is not None:
            upstream = Upstream.from_json(member.upstream)
            clients[member.label] = ProviderClient(upstream, keys.get(upstream.api_key_env or ""))
    return clients


def _same_weights(a: ModelRef | None, b: ModelRef | None) -> bool:
    strip = lambda r: None if r is None else (r.version, r.path, r.base, r.store_root, r.knowledge, r.engine)  # noqa: E731
    return strip(a) == strip(b)


async def _next_window(events: asyncio.Queue) -> list[tuple[int, Any]]:
    """The next event, and every other one that arrives within STREAM_WINDOW_S after it: each
    chunk crosses three Serve processes (slot, ingress, gateway) on its way out, and at a token per
    chunk those hops took a quarter of llama.cpp's CPU on 2 cores (bench/engines_bench.py). The
    first token never waits (it leaves before the loop that calls this)."""
    window = [await events.get()]
    if isinstance(window[0][1], dict) and "done" not in window[0][1]:
        await asyncio.sleep(STREAM_WINDOW_S)
    while not events.empty():
        window.append(events.get_nowait())
    return window


def _coalesced(window: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """A window's events as one event per prompt: its new text joined, with its end if it came."""
    merged: dict[int, dict[str, Any]] = {}
    for index, event in window:
        into = merged.setdefault(index, {"text": ""})
        into["text"] += event.get("text", "")
        if "done" in event:
            into["done"] = event["done"]
    return list(merged.items())


async def _pump(events, index: int, queue: asyncio.Queue) -> None:
    """One prompt's engine events into the request's queue, tagged with the prompt's index; any
    failure, or an end without "done", as an EngineError (the reader must never wait forever)."""
    try:
        async for event in events:
            await queue.put((index, event))
            if "done" in event:
                return
    except Exception as exc:  # noqa: BLE001 - whatever the engine raised, the request fails with it
        await queue.put((index, exc if isinstance(exc, EngineError) else EngineError(f"{type(exc).__name__}: {exc}")))
        return
    await queue.put((index, EngineError("the engine ended the answer without finishing it")))


def _chunk(event: dict[str, Any], index: int = 0, role: str | None = None) -> dict[str, Any]:
    """Engine events (new text, the end, or both) as the OpenAI chunk a provider would have sent
    (relayed the same way)."""
    delta = {"role": role} if role else {}
    if event.get("text"):
        delta["content"] = event["text"]
    choice = {"index": index, "delta": delta}
    if "done" not in event:
        return {"choices": [choice]}
    done = event["done"]
    return {"choices": [{**choice, "finish_reason": done["finish_reason"]}],
            "usage": {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"]}}


def _invalid_messages(exc: ChatTemplateError) -> dict[str, Any]:
    return {"status": 400, "code": "invalid_messages", "param": "messages", "message": str(exc)[:500]}


def _failed(version: str, reason: Any) -> str:
    return f"generation failed in model version {version}: {reason}"[:500]
