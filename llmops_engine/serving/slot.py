"""A model slot: one Serve deployment holding at most one model version.

Which version it holds is its user_config, so loading a new version into the spare slot
is a `reconfigure` on the running replicas — no restart. Requests are collected by
`@serve.batch` and run as one `LoadedModel.generate` call per group of equal settings.
A grounded version (a knowledge base in its ModelRef) retrieves each chat request's chunks here,
off the event loop, before batching: the index is part of the version, like the weights.

A batch is shared by many clients, so nothing one request carries may fail or stall the
others: prompts are checked per request before they are queued (an empty sequence would
crash a 4-bit kernel and with it the replica), every prompt is its own batch entry (so
`max_batch_size` bounds the tokens of every batch, and a many-prompt request queues behind
the others instead of widening a batch), and an exception inside a batch is traced to the
entries that caused it and fails only their requests.

A provider version (its ModelRef has an `upstream`) holds HTTP clients instead of weights, plus
at most one local model of its fallback chain; `generate` asks the chain in order (relay.py) and
`stream` relays the provider's tokens as they arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

from ray import serve

from ..errors import ChatTemplateError, ProviderError
from .config import ModelRef
from .openai_api import MAX_PROMPTS_PER_REQUEST
from ..providers.chat import chat_body, gen_of
from .relay import UNSUPPORTED_COMPLETIONS, exhausted, refused, relay_error


def load_model(ref: ModelRef):
    from llmops_engine.models import load_base, load_trained
    from llmops_engine.state.stores import object_on_this_node

    if not ref.path:
        return load_base(ref.base, Path(ref.store_root or "."), template=ref.prompt)
    model = load_trained(object_on_this_node(ref.store_url, ref.fingerprint, ref.path))
    if ref.prompt:
        model.use_template(ref.prompt)
    return model


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


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@serve.deployment
class ModelSlot:
    """Holds at most one model version; which one is its user_config (swap = reconfigure)."""

    def __init__(self) -> None:
        self.ref: ModelRef | None = None
        self.model = None
        self.retriever = None
        self.clients: dict[str, Any] = {}  # provider label -> ProviderClient (a provider version's chain)
        self.key_hashes: dict[str, str] = {}  # SHA-256 of the provider keys the clients hold
        self.retired: list[Any] = []  # clients of a version swapped out, closed on the next request
        self.load_error: dict[str, str] | None = None
        self.max_prompt_tokens = 1024
        self.batches = self.batched_requests = 0  # how full batches get (bench, tuning)
        self.peak_batch_tokens = 0  # most padded tokens (prompt + new) one generate call held
        self.policy = None  # the guardrails retrieved chunks pass (their input checks), if any

    def reconfigure(self, config: dict[str, Any]) -> None:
        from .guarding import compile_policy

        self.max_prompt_tokens = config["max_prompt_tokens"]
        self.policy = compile_policy(config.get("guardrails"))
        batching = config["batching"]
        self._batched.set_max_batch_size(batching["max_batch_size"])
        self._batched.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        ref = ModelRef.from_json(config.get("model"))
        hashes = config.get("provider_key_sha256") or {}
        if _same_weights(ref, self.ref) and hashes == self.key_hashes:
            self.ref = ref
            return
        self.retired += self.clients.values()
        if _same_weights(ref, self.ref):  # a rotated provider key: new clients, same weights
            self.ref, self.clients = None, {}
        else:
            self.model, self.retriever, self.ref, self.clients = None, None, None, {}
            gc.collect()  # free the old weights before loading the new ones
        self.load_error, self.key_hashes = None, hashes
        if ref is None:
            return
        try:
            if self.model is None and self.retriever is None:
                self.retriever = load_retriever(ref)
                local = ref.local_model()
                self.model = load_model(local) if local else None
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
                "torch_threads": torch.get_num_threads() if torch else None, "batches": self.batches,
                "mean_batch_size": self.batched_requests / self.batches if self.batches else 0.0,
                "peak_batch_tokens": self.peak_batch_tokens}

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request: {"items": [{"prompt"} | {"instruction", "input"}], "params": {...}, "live"}."""
        if self.ref is None:
            raise RuntimeError("this slot holds no model")
        await self._close_retired()
        version = self.ref.version
        if request.get("live") and self.ref.fault_error_rate and random.random() < self.ref.fault_error_rate:
            raise RuntimeError(f"injected fault in model version {version}")
        items, sources, grounding = await self._grounded(request["items"])
        if self.ref.upstream is not None:
            return {**await self._relayed(request, items, sources), **grounding}
        return {**await self._local(request, items, sources), **grounding}

    async def stream(self, request: dict[str, Any]):
        """A provider version's chat request as it streams: {"head": {answered_by, sources}}, then
        the provider's chunks ({"chunk": ...}) as they arrive, or a local fallback's whole answer
        ({"gen": ...}); an {"error": ...} instead of the head when no model could answer, or after
        chunks when the provider broke off mid-stream (nothing is retried once a token was relayed)."""
        if self.ref is None or self.ref.upstream is None:
            raise RuntimeError("this slot holds no provider version")
        await self._close_retired()
        version = self.ref.version
        items, sources, grounding = await self._grounded(request["items"])
        if any("instruction" not in item for item in items):
            yield {"error": UNSUPPORTED_COMPLETIONS, "version": version}
            return
        failures: list[tuple[str, str]] = []
        for member in self.ref.chain():
            head = {"head": {"answered_by": member.label, "version": version, **grounding,
                             **({"sources": sources} if self.retriever else {})}}
            if member.upstream is None:
                result = await self._local(request, items, sources)
                yield result if "error" in result else head
                if "error" not in result:
                    yield {"gen": result["gens"][0]}
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

    async def _close_retired(self) -> None:
        """Close the HTTP clients of a version swapped out (reconfigure cannot await)."""
        retired, self.retired = self.retired, []
        for client in retired:
            await client.aclose()

    async def _relayed(self, request: dict[str, Any], items: list[dict[str, Any]],
                       sources: list[dict[str, Any]]) -> dict[str, Any]:
        """Ask the chain in order: a failing provider hands the request to the next model."""
        version = self.ref.version
        if any("instruction" not in item for item in items):
            return {"error": UNSUPPORTED_COMPLETIONS, "version": version}
        grounded = {"sources": sources} if self.retriever else {}
        failures: list[tuple[str, str]] = []
        for member in self.ref.chain():
            if member.upstream is None:
                return {**await self._local(request, items, sources), "answered_by": member.label}
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

    async def _local(self, request: dict[str, Any], items: list[dict[str, Any]],
                     sources: list[dict[str, Any]]) -> dict[str, Any]:
        """Answer with the model this replica loaded, batched with other requests."""
        model, version = self.model, self.ref.version
        try:
            prompts = [self._prompt(model, item) for item in items]
        except ChatTemplateError as exc:  # the client's messages, not the replica, are at fault
            error = {"status": 400, "code": "invalid_messages", "param": "messages", "message": str(exc)[:500]}
            return {"error": error, "version": version}
        lengths = [len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        if error := self._rejection(request, lengths):
            return {"error": error, "version": version}
        entry = {"params": request["params"], "stops": request.get("stops") or []}
        gens = await asyncio.gather(*(self._batched({**entry, "prompt": p, "tokens": n}) for p, n in zip(prompts, lengths)))
        failures = [g["failure"] for g in gens if "failure" in g]
        if failures:
            # Raised, not returned: a version whose generation fails must count against it in
            # canary analysis (and the ingress retries the request on the primary slot).
            raise RuntimeError(f"generation failed in model version {version}: {failures[0]}")
        return {"gens": gens, "version": version, **({"sources": sources} if self.retriever else {})}

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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _batched(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches += 1
        self.batched_requests += len(entries)
        # Run on the event loop, on purpose: generation of a small model is Python-bound, so in a
        # worker thread it would fight the loop for the GIL and requests would trickle in one by
        # one; blocking lets the requests that arrive meanwhile pile up into the next full batch
        # (measured: mean batch 7.2 instead of 2.2 at 16 clients, bench/serve_bench.py).
        return self._run_batch(entries)

    def _run_batch(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A result per entry, never an exception: a raise here would fail every request in the batch."""
        results: list[dict[str, Any]] = [{} for _ in entries]
        groups: dict[tuple, list[int]] = {}
        for index, entry in enumerate(entries):
            groups.setdefault(_group_key(entry["params"]), []).append(index)
        for key, members in groups.items():
            self._generate_group(dict(key), members, entries, results)
        return results

    def _generate_group(self, params: dict[str, Any], members: list[int], entries: list[dict[str, Any]],
                        results: list[dict[str, Any]]) -> None:
        model = self.model
        width = max(entries[i]["tokens"] for i in members) + params["max_new_tokens"]  # left padding
        self.peak_batch_tokens = max(self.peak_batch_tokens, len(members) * width)
        try:
            outs = model.generate([entries[i]["prompt"] for i in members], **params)
            finished = [self._finish(model, out, entries[i]["stops"]) for i, out in zip(members, outs)]
        except Exception as exc:  # noqa: BLE001 - isolated per entry below, reported by generate()
            if len(members) > 1:
                for index in members:  # one at a time: only the entry that raises fails
                    self._generate_group(params, [index], entries, results)
                return
            results[members[0]] = {"failure": f"{type(exc).__name__}: {exc}"[:500]}
            return
        for index, result in zip(members, finished):
            results[index] = result

    @staticmethod
    def _prompt(model, item: dict[str, Any]) -> str:
        if "prompt" in item:
            return item["prompt"]
        return render_chat(model, item["instruction"], item.get("input", ""), item.get("history"), item.get("context", ""))

    @staticmethod
    def _finish(model, out, stops: list[str]) -> dict[str, Any]:
        text, stopped = cut_at_stop(out.text, stops)
        completion_tokens = out.completion_tokens
        if stopped:
            completion_tokens = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        return {"text": text, "prompt_tokens": out.prompt_tokens, "completion_tokens": completion_tokens,
                "finish_reason": "stop" if stopped else out.finish_reason}


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
    strip = lambda r: None if r is None else (r.version, r.path, r.base, r.store_root, r.knowledge)  # noqa: E731
    return strip(a) == strip(b)


def _group_key(params: dict[str, Any]) -> tuple:
    # Requests with the same generation settings share one generate() call.
    keep = {"max_new_tokens": params["max_new_tokens"], "do_sample": params["do_sample"]}
    if params["do_sample"]:
        keep.update(temperature=params["temperature"], top_p=params["top_p"], seed=params["seed"])
    return tuple(sorted(keep.items()))
