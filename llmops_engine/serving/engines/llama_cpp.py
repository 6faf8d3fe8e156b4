"""The `llama-cpp` engine: a GGUF file answered by llama.cpp on CPU, token by token.

CPU users run quantized GGUFs in llama.cpp; this engine lets a Deployment serve a TuningJob's
GGUF export that way while the slot, the OpenAI API, keys and metrics stay the same.
llama-cpp-python has no wheel (it compiles llama.cpp), so it is an optional extra and
`llama_cpp_problem()` says how to get it instead of failing on import.

llama.cpp's high-level `Llama` holds one sequence (one KV cache): an engine answers one request
at a time, on its one worker thread, and other requests queue behind it (FIFO). That worker is
also what keeps generation off the event loop. Because requests run one after another on one KV
cache, `Llama.generate` keeps the prefix a new prompt shares with the previous one (a system
prompt, an earlier turn) and evaluates only the rest: prompt caching costs nothing here.

Weights load without llama.cpp's "extra buffer types" (weight repacking): on an AMX CPU it
repacks Q4_1/Q8_0 weights for AMX, and the first decode then segfaults (llama-cpp-python 0.3.36,
measured here), which would take the replica down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from ...errors import EngineError, ModelLoadError
from .text import AnswerText

EXTRA_MISSING = ("engine: llama-cpp needs the llama-cpp extra: pip install 'llmops-engine[llama-cpp]' "
                 "(builds llama.cpp from source, ~13 min on 2 cores)")

FINISHED = object()  # the worker returned: no event follows


def llama_cpp_problem() -> str | None:
    """Why `engine: llama-cpp` cannot run here, or None. Import-light: it only locates the package."""
    return None if importlib.util.find_spec("llama_cpp") is not None else EXTRA_MISSING


_LOADING = threading.Lock()


@contextlib.contextmanager
def no_weight_repacking():
    """While inside, `llama_cpp.Llama(...)` loads its weights without extra buffer types (see the
    module docstring). `Llama` takes no such argument: its model-params factory is swapped, under a
    lock so two engines loading at once cannot see each other's swap."""
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _LOADING:
        native.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            native.llama_model_default_params = defaults


class LlamaCppEngine:
    """A GGUF in llama.cpp. One request at a time per engine (one KV cache): see the module docstring.

    `end_of_turn`: the chat template's end-of-turn text (e.g. "<|im_end|>"), when the GGUF's own
    end-of-generation tokens might not include it. `encode`: the model version's own tokenizer
    (text → ids), used instead of llama.cpp's: a GGUF written from an HF tokenizer names no
    pre-tokenizer llama.cpp knows, and would split prompts unlike training."""

    def __init__(self, gguf_path: str | Path, n_ctx: int, n_threads: int | None = None,
                 end_of_turn: str | None = None, encode: Callable[[str], list[int]] | None = None) -> None:
        if problem := llama_cpp_problem():
            raise ModelLoadError(problem)
        self.gguf_path = Path(gguf_path)
        self.encode = encode
        if not self.gguf_path.is_file():
            raise ModelLoadError(f"engine llama-cpp: no GGUF file at {self.gguf_path}")
        try:
            import llama_cpp

            # One thread budget for prompt and decode (llama.cpp's decode default: half the cores). Its
            # prompt default, every core, stalls on busy shared cores: its threads wait for each other.
            threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
            with no_weight_repacking():
                self.llama = llama_cpp.Llama(model_path=str(self.gguf_path), n_ctx=n_ctx, n_threads=threads,
                                             n_threads_batch=threads, verbose=False)
            vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
            self.bos = self.llama.token_bos()
            self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
            # llama.cpp's end-of-generation set: EOS, EOT and the chat end-of-turn tokens it knows.
            ends = {t for t in range(self.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
            ends.add(self.llama.token_eos())
            if end_of_turn:
                ends.update(self.llama.tokenize(end_of_turn.encode("utf-8"), add_bos=False, special=True)[:1])
        except (OSError, ValueError, RuntimeError) as exc:  # a missing libllama, an unreadable GGUF
            raise ModelLoadError(f"engine llama-cpp could not load {self.gguf_path}: {exc}") from exc
        self.end_ids = frozenset(ends)
        self.default_seed = llama_cpp.LLAMA_DEFAULT_SEED  # llama.cpp draws a random seed
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        self.closed = False
        self.requests = self.prompt_tokens_reused = 0

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return len(self._prompt_ids(text))

    def info(self) -> dict[str, Any]:
        return {"engine": "llama-cpp", "gguf": str(self.gguf_path), "n_ctx": self.llama.n_ctx(),
                "n_threads": self.llama.n_threads, "n_threads_batch": self.llama.n_threads_batch,
                "add_bos": self.add_bos, "end_token_ids": sorted(self.end_ids),
                "requests": self.requests, "prompt_tokens_reused": self.prompt_tokens_reused}

    def close(self) -> None:
        """Take no new request; the ones it has (running and queued) are answered, then the weights
        are let go, on the worker: the caller (the replica's event loop) never waits for them."""
        if not self.closed:
            self.closed = True
            self.worker.submit(self.llama.close)
            self.worker.shutdown(wait=False)

    def _check_open(self) -> None:
        if self.closed:  # its vocabulary may be freed already
            raise EngineError("engine llama-cpp is closed: its model version was swapped out")

    async def stream(self, prompt: str, params: dict[str, Any], stops: list[str]) -> AsyncIterator[dict[str, Any]]:
        self._check_open()
        ids = self._prompt_ids(prompt)
        if not ids:
            raise EngineError("engine llama-cpp: the prompt is empty")
        room = self.llama.n_ctx() - len(ids)
        if room < 1:
            raise EngineError(f"engine llama-cpp: the prompt has {len(ids)} tokens; the context holds "
                              f"{self.llama.n_ctx()}")
        loop = asyncio.get_running_loop()
        pending: deque = deque()  # events from the worker, not yet yielded (touched on the loop only)
        arrived = asyncio.Event()
        cancelled = threading.Event()

        def put(event: Any) -> None:
            pending.append(event)
            arrived.set()

        def emit(event: dict[str, Any]) -> None:
            if not cancelled.is_set():  # the stream was closed: nobody reads, the loop may be gone
                loop.call_soon_threadsafe(put, event)

        job = asyncio.wrap_future(self.worker.submit(
            self._generate, ids, min(params["max_new_tokens"], room), params, stops, cancelled, emit))
        job.add_done_callback(lambda _: put(FINISHED))
        try:
            while True:
                if not pending:
                    arrived.clear()
                    await arrived.wait()
                event = pending.popleft()
                if event is FINISHED:
                    break
                # Tokens that came while the reader was busy leave as one event: each event costs a
                # hop through Serve per replica, paid on the same CPUs that decode.
                while "text" in event and pending and pending[0] is not FINISHED and "text" in pending[0]:
                    event = {"text": event["text"] + pending.popleft()["text"]}
                yield event
            job.result()  # an EngineError from the worker
        finally:
            cancelled.set()  # closed early: generation stops at the next token

    def _prompt_ids(self, text: str) -> list[int]:
        # Special tokens parsed: the rendered chat prompt carries <|im_start|> etc. as text. A BOS is
        # added only when the model asks for one and the chat template did not write it already.
        try:
            ids = self.encode(text) if self.encode else self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        except RuntimeError as exc:
            raise EngineError(f"engine llama-cpp could not tokenize the prompt: {exc}") from exc
        return [self.bos, *ids] if self.add_bos and ids[:1] != [self.bos] else ids

    def _generate(self, ids: list[int], budget: int, params: dict[str, Any], stops: list[str],
                  cancelled: threading.Event, emit: Callable[[dict[str, Any]], None]) -> None:
        """The worker: decode until an end token, a stop string, `budget` tokens or cancellation."""
        if cancelled.is_set():  # the stream was closed while it queued behind another request
            return
        self.requests += 1
        self.prompt_tokens_reused += _shared_prefix(self.llama._input_ids.tolist(), ids)
        answer = AnswerText(self._decode, stops)
        reason, count = "length", 0
        try:
            seed = params.get("seed")
            self.llama.set_seed(self.default_seed if seed is None else int(seed))
            tokens = self.llama.generate(ids, **_sampling(params))
            try:
                for token in tokens:
                    if cancelled.is_set():
                        return
                    count += 1  # the end token counts, as on the transformers engine
                    if token in self.end_ids:
                        reason = "stop"
                        break
                    if text := answer.feed(token):
                        emit({"text": text})
                    if answer.stopped:  # a stop string: the answer's tokens are those of its text
                        reason, count = "stop", len(self.llama.tokenize(answer.text.encode("utf-8"), add_bos=False))
                        break
                    if count >= budget:
                        break
            finally:
                tokens.close()
        except (RuntimeError, ValueError, OSError) as exc:  # llama_decode failed, a full context
            self.llama.reset()  # the KV cache may hold half a batch: never reuse it as a prefix
            raise EngineError(f"engine llama-cpp failed while generating: {exc}") from exc
        if rest := answer.finish():
            emit({"text": rest})
        emit({"done": {"text": answer.text, "prompt_tokens": len(ids), "completion_tokens": count,
                       "finish_reason": reason}})

    def _decode(self, ids: list[int]) -> str:
        return self.llama.detokenize(ids).decode("utf-8", errors="replace")


def _sampling(params: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp sampler settings for the slot's params: greedy, or temperature + top_p only (its
    top_k/min_p/repeat-penalty defaults are turned off so an answer depends on the same knobs as
    on the transformers engine)."""
    neutral = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}
    temperature = float(params.get("temperature") or 0.0)
    if not params.get("do_sample") or temperature <= 0:
        return {**neutral, "temp": 0.0, "top_p": 1.0}
    return {**neutral, "temp": temperature, "top_p": float(params.get("top_p") or 1.0)}


def _shared_prefix(cached: list[int], ids: list[int]) -> int:
    shared = 0
    for a, b in zip(cached, ids):
        if a != b:
            break
        shared += 1
    return shared
