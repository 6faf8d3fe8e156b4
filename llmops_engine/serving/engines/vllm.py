"""The `vllm` engine: a TuningJob's merged export answered by vLLM on a GPU, through Ray Serve LLM.

GPU users serve with vLLM; this engine lets a Deployment do that while the slot, the OpenAI
API, keys, guardrails and metrics stay the same. It is coded to Ray 2.60's documented Ray Serve
LLM API (whose `llm` extra pins vllm==0.29.0) and has not run here: no GPU, no vLLM.

What of Ray 2.60 is used, and why:

- `ray.serve.llm.LLMConfig` (public): `model_loading_config` {model_id, model_source: the merged
  export's directory}, `engine_kwargs` (vLLM's AsyncEngineArgs: max_model_len,
  gpu_memory_utilization, ...), `experimental_configs` {stream_batching_interval_ms: 0}.
  `ray.serve.llm` cannot be imported without vLLM (its OpenAI models are vLLM's: ImportError
  "Neither vLLM nor SGLang is installed"), so `llm_config_for` returns LLMConfig's fields as a
  plain dict and the LLMConfig is built in the replica that runs the engine.
- `ray.serve.llm.LLMServer` (public, stable; documented as usable "standalone or combined with your
  own Ray Serve deployments"): `LLMServer.sync_init(llm_config)` then `await server.start()` builds
  Ray's VLLMEngine and starts vLLM's AsyncLLM in this replica; `await server.completions(request)`
  with a `ray.serve.llm.openai_api_models.CompletionRequest` (stream=True) returns an async
  generator of lists of OpenAI SSE chunks ("data: {json}\\n\\n") or ErrorResponse objects.
  Completions, not chat: the slot renders the prompt itself (the tuned model's Prompt and chat
  template), so vLLM gets the rendered text as a raw completion prompt.
- Not `build_llm_deployment(llm_config)`: that deploys a Serve deployment of its own per model,
  while here the slot is the deployment (a version swap is a reconfigure of the slot; keys,
  guardrails and metrics live in it), so the slot holds the engine in-process like the others.

Placement. On a GPU, Ray's VLLMEngine always runs vLLM with its "ray" executor: the GPU is used by
a worker actor vLLM starts in the replica's placement group (VLLMEngineConfig.get_or_create_pg),
not by the replica itself. So a vllm slot needs Serve `placement_group_bundles` [{CPU, GPU: 1}]
with a replica that asks for no GPU (`slot_deployment_options`, what
LLMServer.get_deployment_options computes) — not ray_actor_options num_gpus: 1: a replica that
holds the GPU outside a placement group makes vLLM ask for a new placement group with another GPU,
which a one-GPU node cannot give.

One private attribute is touched: close() shuts vLLM down through Ray's VLLMEngine._engine_client
(vLLM's AsyncLLM), because LLMServer has no shutdown — a Serve replica frees the GPU by ending.

Streamed text is vLLM's: its incremental detokenizer never emits half a UTF-8 character and
holds back the tail that could begin a stop string (stop strings are excluded from the output).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator

from ...errors import EngineError, ModelLoadError

VLLM_MISSING = ("engine: vllm needs the vllm package (Ray Serve LLM's engine: pip install 'ray[llm]' on the "
                "cluster's nodes), and it is not installed where llmops runs")
ENGINE_BUNDLE = {"GPU": 1}  # Ray's GPU backend: one bundle per device; one device (no tensor parallelism)
START_TIMEOUT_S = 900.0  # loading weights and capturing CUDA graphs; Ray's own limit is an hour
FINISH_REASONS = ("stop", "length")


def vllm_problem(cluster_resources: dict[str, float], vllm_installed: bool | None = None) -> str | None:
    """Why `engine: vllm` cannot serve on a cluster with these resources (ray.cluster_resources()),
    or None. `vllm_installed` None: whether vllm can be imported here (located, not imported)."""
    if float(cluster_resources.get("GPU", 0) or 0) < 1:
        cpus = float(cluster_resources.get("CPU", 0) or 0)
        return (f"engine: vllm needs a GPU; this Ray cluster has none ({cpus:g} CPUs). Serve the model with "
                "engine: transformers, or engine: llama-cpp (its GGUF export), or connect to a Ray cluster "
                "with a GPU")
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    return None if vllm_installed else VLLM_MISSING


def slot_deployment_options(replica_cpus: float = 1.0) -> dict[str, Any]:
    """The Serve deployment options of a slot that holds a vLLM engine: the replica's own resources
    merged into the engine's GPU bundle, as LLMServer.get_deployment_options does (see the module
    docstring for why the replica itself asks for no GPU)."""
    return {"ray_actor_options": {"num_cpus": replica_cpus, "num_gpus": 0},
            "placement_group_bundles": [{"CPU": replica_cpus, **ENGINE_BUNDLE}],
            "placement_group_strategy": "PACK"}


def llm_config_for(merged_dir: Path, model_id: str, max_model_len: int, *,
                   gpu_memory_utilization: float = 0.9, engine_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of the ray.serve.llm.LLMConfig that serves a merged export (fp16 HF weights).
    `max_model_len` bounds prompt + answer tokens; `engine_kwargs` adds or overrides vLLM engine
    arguments (e.g. enforce_eager). Side-effect free."""
    if max_model_len < 1:
        raise ValueError(f"max_model_len must be at least 1, not {max_model_len}")
    return {
        "model_loading_config": {"model_id": model_id, "model_source": str(Path(merged_dir).absolute())},
        "engine_kwargs": {"max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization,
                          **(engine_kwargs or {})},
        # LLMServer would otherwise gather a stream's chunks for 50 ms before passing them on.
        "experimental_configs": {"stream_batching_interval_ms": 0},
    }


def completion_request(model_id: str, prompt: str, params: dict[str, Any], stops: list[str],
                       stop_token_ids: list[int]) -> dict[str, Any]:
    """The streamed OpenAI completion request (vLLM's CompletionRequest fields) for one rendered
    prompt and the slot's generation settings. Side-effect free.

    Greedy unless do_sample with a temperature above 0; only temperature and top_p shape sampling,
    as on the transformers engine: the penalties, top_k and min_p a model's generation_config may
    set (vLLM applies them where a request leaves them unset) are turned off."""
    temperature = float(params.get("temperature") or 0.0)
    if params.get("do_sample") and temperature > 0:
        sampling = {"temperature": temperature, "top_p": float(params.get("top_p") or 1.0), "seed": params.get("seed")}
    else:
        sampling = {"temperature": 0.0, "top_p": 1.0}
    return {
        "model": model_id, "prompt": prompt, "max_tokens": int(params["max_new_tokens"]), **sampling,
        "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "stop": [s for s in stops if s], "stop_token_ids": list(stop_token_ids),
        "add_special_tokens": False,  # the rendered prompt is complete (its template wrote any BOS)
        "stream": True, "stream_options": {"include_usage": True},
    }


class CompletionChunks:
    """Reads what LLMServer.completions streams into engine events. Side-effect free.

    An item is a list (LLMServer batches a stream's output) of SSE strings — "data: {json}\\n\\n",
    a text chunk {choices: [{text, finish_reason}]}, the usage chunk {choices: [], usage} last, an
    error {error: {message}} — or of ErrorResponse objects (a request vLLM refused)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, item: Any) -> list[dict[str, Any]]:
        events = []
        for element in item if isinstance(item, list) else [item]:
            if not isinstance(element, str):
                error = getattr(element, "error", None)
                message = getattr(error, "message", None) or repr(element)[:300]
                raise EngineError(f"engine vllm refused the request: {message}"[:500])
            for packet in element.split("\n\n"):
                events += self._chunk(packet.strip())
        return events

    def done(self) -> dict[str, Any]:
        """The last event, once the stream ended."""
        if self.finish_reason not in FINISH_REASONS:
            raise EngineError(f"engine vllm ended the answer without finishing it (finish_reason "
                              f"{self.finish_reason!r})")
        if self.usage is None:
            raise EngineError("engine vllm ended the answer without its token counts")
        return {"done": {"text": "".join(self.parts), "prompt_tokens": int(self.usage["prompt_tokens"]),
                         "completion_tokens": int(self.usage["completion_tokens"]),
                         "finish_reason": self.finish_reason}}

    def _chunk(self, packet: str) -> list[dict[str, Any]]:
        if not packet.startswith("data:"):
            return []
        data = packet[len("data:"):].strip()
        if data == "[DONE]":
            return []
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise EngineError(f"engine vllm failed while generating: {message}"[:500])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events = []
        for choice in chunk.get("choices") or []:
            if choice.get("text"):
                self.parts.append(choice["text"])
                events.append({"text": choice["text"]})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events


async def relay(chunks: AsyncGenerator[Any, None]) -> AsyncIterator[dict[str, Any]]:
    """Engine events from LLMServer's stream, the {"done"} last. Closing this closes `chunks`,
    which lets go of vLLM's generators beneath it; Python closes those as they are dropped, and
    vLLM's AsyncLLM.generate aborts its request when closed (GeneratorExit) or cancelled."""
    reader = CompletionChunks()
    try:
        async for item in chunks:
            for event in reader.feed(item):
                yield event
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - vLLM's and Ray's errors, translated at this boundary
        raise EngineError(f"engine vllm failed while generating: {type(exc).__name__}: {exc}"[:500]) from exc
    finally:
        await chunks.aclose()
    yield reader.done()


class VllmEngine:
    """A merged export in vLLM, started in this process through Ray Serve LLM's LLMServer.
    Build it with `await VllmEngine.open(...)` (starting vLLM is asynchronous) inside a replica
    placed as `slot_deployment_options` says; vLLM batches concurrent streams itself."""

    def __init__(self, server: Any, request_class: type, llm_config: Any, tokenizer: Any,
                 model_id: str, stop_token_ids: list[int]) -> None:
        self.server, self.request_class, self.llm_config = server, request_class, llm_config
        self.tokenizer, self.model_id, self.stop_token_ids = tokenizer, model_id, stop_token_ids
        self.requests = 0

    @classmethod
    async def open(cls, merged_dir: str | Path, model_id: str, max_model_len: int, *,
                   end_of_turn: str | None = None, gpu_memory_utilization: float = 0.9,
                   engine_kwargs: dict[str, Any] | None = None,
                   start_timeout_s: float = START_TIMEOUT_S) -> "VllmEngine":
        """Start vLLM on the merged export in `merged_dir`. `end_of_turn`: the chat template's
        end-of-turn text (e.g. "<|im_end|>"), where the model's EOS might not be it."""
        merged_dir = Path(merged_dir)
        if not (merged_dir / "config.json").is_file():
            raise ModelLoadError(f"engine vllm: no merged export (config.json) in {merged_dir}")
        if importlib.util.find_spec("vllm") is None:
            raise ModelLoadError(VLLM_MISSING)
        server = llm_config = None
        try:
            from ray.serve.llm import LLMConfig, LLMServer
            from ray.serve.llm.openai_api_models import CompletionRequest
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(merged_dir)
            llm_config = LLMConfig(**llm_config_for(merged_dir, model_id, max_model_len,
                                                    gpu_memory_utilization=gpu_memory_utilization,
                                                    engine_kwargs=engine_kwargs))
            server = LLMServer.sync_init(llm_config)
            await asyncio.wait_for(server.start(), timeout=start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - vLLM's and Ray's errors, translated at this boundary
            if server is not None:
                with contextlib.suppress(Exception):  # whatever of vLLM had started: its error is the news
                    _shut_down(server, llm_config)
            message = f"engine vllm could not start {merged_dir}: {type(exc).__name__}: {exc}"
            raise ModelLoadError(message[:2000]) from exc
        ends = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"][:1] if end_of_turn else []
        return cls(server, CompletionRequest, llm_config, tokenizer, model_id, ends)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def info(self) -> dict[str, Any]:
        loading = self.llm_config.model_loading_config
        return {"engine": "vllm", "model_id": self.model_id, "model_source": loading.model_source,
                "max_model_len": self.llm_config.max_request_context_length,
                "end_token_ids": self.stop_token_ids, "requests": self.requests}

    async def stream(self, prompt: str, params: dict[str, Any], stops: list[str]) -> AsyncIterator[dict[str, Any]]:
        if self.server is None:
            raise EngineError("engine vllm is closed")
        try:
            # Our own request id: prompts of one Serve request would otherwise share Serve's.
            fields = completion_request(self.model_id, prompt, params, stops, self.stop_token_ids)
            request = self.request_class(**fields, request_id=f"llmops-{uuid.uuid4().hex}")
            chunks = await self.server.completions(request)
        except Exception as exc:  # noqa: BLE001 - a request vLLM's models reject, a dead engine
            raise EngineError(f"engine vllm could not take the request: {type(exc).__name__}: {exc}"[:500]) from exc
        self.requests += 1
        events = relay(chunks)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    def close(self) -> None:
        """Stop vLLM and give its GPU back (streams still open end in an EngineError: vLLM reports
        them failed, or they stop without a finish reason)."""
        server, self.server = self.server, None
        if server is not None:
            _shut_down(server, self.llm_config)


def _shut_down(server: Any, llm_config: Any) -> None:
    """LLMServer has no shutdown (a Serve replica ends with its process): vLLM's engine client
    (Ray's VLLMEngine._engine_client, vLLM's AsyncLLM) is shut down here, and a placement group
    vLLM had to create (when it ran outside a replica's) is removed."""
    from ray.util.placement_group import get_current_placement_group, remove_placement_group

    if server.engine is None:  # Ray's VLLMEngine was never built: nothing of vLLM runs
        return
    client = getattr(server.engine, "_engine_client", None)
    if client is not None:
        client.shutdown()
    group = llm_config.get_or_create_callback().ctx.placement_group  # the one start() used
    if group is not None and group != get_current_placement_group():
        remove_placement_group(group)
