"""A model slot: one Serve deployment holding at most one model version.

Which version it holds is its user_config, so loading a new version into the spare slot
is a `reconfigure` on the running replicas — no restart. Requests are collected by
`@serve.batch` and run as one `LoadedModel.generate` call per group of equal settings.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Any

from ray import serve

from .config import ModelRef


def load_model(ref: ModelRef):
    from llmops_engine.models import load_base, load_trained
    from llmops_engine.state.artifacts import object_on_this_node

    if ref.path:
        return load_trained(object_on_this_node(ref.store_url, ref.fingerprint, ref.path))
    return load_base(ref.base, Path(ref.store_root or "."))


def render_chat(model, instruction: str, context: str) -> str:
    if model.template:
        return model.render(instruction, context)
    # A base model has no template: a plain transcript is the best it can get.
    return (f"{context}\n" if context else "") + f"user: {instruction}\nassistant:"


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@serve.deployment
class ModelSlot:
    """Holds at most one model version; which one is its user_config (swap = reconfigure)."""

    def __init__(self) -> None:
        self.ref: ModelRef | None = None
        self.model = None
        self.load_error: dict[str, str] | None = None
        self.max_prompt_tokens = 1024
        self.batches = self.batched_requests = 0  # how full batches get (bench, tuning)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_prompt_tokens = config["max_prompt_tokens"]
        batching = config["batching"]
        self._batched.set_max_batch_size(batching["max_batch_size"])
        self._batched.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        ref = ModelRef.from_json(config.get("model"))
        if _same_weights(ref, self.ref):
            self.ref = ref
            return
        self.model, self.ref, self.load_error = None, None, None
        gc.collect()  # free the old weights before loading the new ones
        if ref is None:
            return
        try:
            self.model = load_model(ref)
        except Exception as exc:  # noqa: BLE001 - stay up and empty; the engine reads the error
            # Raising here would make Serve restart the replica again and again; an empty
            # slot that reports why is what the rollout needs to fail fast and clearly.
            self.load_error = {"version": ref.version, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            return
        self.ref = ref

    async def info(self) -> dict[str, Any]:
        import torch

        return {"version": self.ref.version if self.ref else None, "loaded": self.model is not None,
                "load_error": self.load_error,
                "torch_threads": torch.get_num_threads(), "batches": self.batches,
                "mean_batch_size": self.batched_requests / self.batches if self.batches else 0.0}

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request: {"items": [{"prompt"} | {"instruction", "input"}], "params": {...}, "live"}."""
        if self.model is None or self.ref is None:
            raise RuntimeError("this slot holds no model")
        version = self.ref.version
        if request.get("live") and self.ref.fault_error_rate and random.random() < self.ref.fault_error_rate:
            raise RuntimeError(f"injected fault in model version {version}")
        result = await self._batched(request)
        return {**result, "version": version}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _batched(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches += 1
        self.batched_requests += len(requests)
        # Run on the event loop, on purpose: generation of a small model is Python-bound, so in a
        # worker thread it would fight the loop for the GIL and requests would trickle in one by
        # one; blocking lets the requests that arrive meanwhile pile up into the next full batch
        # (measured: mean batch 7.2 instead of 2.2 at 16 clients, bench/serve_bench.py).
        return self._run_batch(requests)

    def _run_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        model = self.model
        results: list[dict[str, Any]] = [{} for _ in requests]
        groups: dict[tuple, list[tuple[int, int, str]]] = {}
        for r, request in enumerate(requests):
            prompts = [self._prompt(model, item) for item in request["items"]]
            too_long = [len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
            if max(too_long) > self.max_prompt_tokens:
                param = "messages" if "instruction" in request["items"][0] else "prompt"
                results[r] = {"error": {"status": 400, "code": "context_length_exceeded", "param": param,
                                        "message": f"the prompt has {max(too_long)} tokens; this deployment "
                                                   f"accepts at most {self.max_prompt_tokens}"}}
                continue
            results[r] = {"gens": [None] * len(prompts)}
            key = _group_key(request["params"])
            for i, prompt in enumerate(prompts):
                groups.setdefault(key, []).append((r, i, prompt))
        for key, members in groups.items():
            params = dict(key)
            outs = model.generate([m[2] for m in members], **params)
            for (r, i, _), out in zip(members, outs):
                results[r]["gens"][i] = self._finish(model, out, requests[r].get("stops") or [])
        return results

    @staticmethod
    def _prompt(model, item: dict[str, Any]) -> str:
        if "prompt" in item:
            return item["prompt"]
        return render_chat(model, item["instruction"], item.get("input", ""))

    @staticmethod
    def _finish(model, out, stops: list[str]) -> dict[str, Any]:
        text, stopped = cut_at_stop(out.text, stops)
        completion_tokens = out.completion_tokens
        if stopped:
            completion_tokens = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        return {"text": text, "prompt_tokens": out.prompt_tokens, "completion_tokens": completion_tokens,
                "finish_reason": "stop" if stopped else out.finish_reason}


def _same_weights(a: ModelRef | None, b: ModelRef | None) -> bool:
    strip = lambda r: None if r is None else (r.version, r.path, r.base, r.store_root)  # noqa: E731
    return strip(a) == strip(b)


def _group_key(params: dict[str, Any]) -> tuple:
    # Requests with the same generation settings share one generate() call.
    keep = {"max_new_tokens": params["max_new_tokens"], "do_sample": params["do_sample"]}
    if params["do_sample"]:
        keep.update(temperature=params["temperature"], top_p=params["top_p"], seed=params["seed"])
    return tuple(sorted(keep.items()))
