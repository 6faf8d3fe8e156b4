"""Serving engines side by side (issue 17): SmolLM2-135M at 1, 4 and 16 concurrent clients,
completion tokens/s and time to first token (p50/p95), for

    plain          a plain llama-cpp-python server (`python -m llama_cpp.server`), the outside reference
    llama-cpp      our `engine: llama-cpp` deployment (the same GGUF), through the gateway on Ray Serve
    transformers   our `engine: transformers` deployment (the same weights, dequantized), likewise

plus, in-process, our LlamaCppEngine against the plain `Llama` API on the same prompts (what the
engine itself costs, without HTTP). Every row gets the same rendered chat prompts as streaming
`/v1/completions` requests at temperature 0 with the same `max_tokens`; TTFT is the time to the
first chunk with text; tokens are counted by re-tokenizing each answer with the GGUF's vocabulary,
so every row counts alike. Prints a table and the ratios ours / plain.

    python bench/engines_bench.py [--only plain|in-process|ours ...] [--engine llama-cpp|transformers ...]
                                  [--requests 32] [--max-tokens 64] [--threads 1]

Needs the llama-cpp extra and the server's Python packages (uvicorn, fastapi, sse-starlette,
starlette-context, pydantic-settings). The `ours` rows start (or reuse) the project's local Ray head,
deploy applications named `engines-bench-<engine>` with `auth: none`, and delete them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

MODEL = "builtin:smollm2-135m-instruct"
SYSTEM = "You are Nimbus support. Answer in one sentence."
QUESTIONS = [
    "How do I reset my password?", "Where can I download my invoice?", "Why was my card declined?",
    "How do I change the email on my account?", "Can I get a refund for an annual plan?",
    "The app crashes when I open settings.", "How do I export my data?", "Is there a student discount?",
]
LEVELS = (1, 4, 16)


def chat_prompt(question: str) -> str:
    """SmolLM2's chat template (ChatML), as the slot renders it for a chat request."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


PROMPTS = [chat_prompt(q) for q in QUESTIONS]
# `python -m llama_cpp.server`, loading its weights as our engine does: without weight repacking,
# whose AMX path segfaults on the first decode (see serving/engines/llama_cpp.py).
PLAIN_SERVER = """
import runpy, sys
from llmops_engine.serving.engines.llama_cpp import no_weight_repacking
sys.argv[0] = "llama_cpp.server"
with no_weight_repacking():
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TokenCounter:
    """Answer lengths in the GGUF's tokens, the same way for every row."""

    def __init__(self, gguf: Path) -> None:
        from llama_cpp import Llama

        self.vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)

    def __call__(self, text: str) -> int:
        return len(self.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0


def streamed(url: str, model: str, clients: int, requests: int, max_tokens: int, count: TokenCounter,
             extra: dict) -> dict:
    """`requests` streaming completions, `clients` at a time: tokens/s and TTFT p50/p95."""
    def one(i: int, client: httpx.Client) -> tuple[float, int]:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0,
                "stream": True, **extra}
        started, first, text = time.perf_counter(), None, []
        with client.stream("POST", f"{url}/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                piece = (chunk.get("choices") or [{}])[0].get("text") or ""
                if piece and first is None:
                    first = time.perf_counter() - started
                text.append(piece)
        return (first if first is not None else time.perf_counter() - started), count("".join(text))

    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        one(0, client)  # warm the connection and the model
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda i: one(i, client), range(requests)))
    wall = time.perf_counter() - started
    ttfts = [r[0] for r in results]
    return {"tokens_per_s": sum(r[1] for r in results) / wall, "ttft_p50_ms": percentile(ttfts, 0.5) * 1000,
            "ttft_p95_ms": percentile(ttfts, 0.95) * 1000, "tokens": sum(r[1] for r in results), "wall_s": wall}


def plain_server_rows(gguf: Path, args, count: TokenCounter) -> dict[int, dict]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-cpp-server-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [sys.executable, "-c", PLAIN_SERVER, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
         "--interrupt_requests", "False"],  # its default drops a streaming request when the next one comes
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the llama-cpp-python server exited ({server.returncode}); see {log.name}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the llama-cpp-python server did not come up in 120 s; see {log.name}")
            time.sleep(0.5)
        # Its sampler defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) turned off: greedy like ours.
        neutral = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
        return {clients: streamed(url, "plain", clients, args.requests, args.max_tokens, count, neutral)
                for clients in LEVELS}
    finally:
        server.terminate()
        server.wait(timeout=30)


def ours_rows(engine: str, args, count: TokenCounter) -> dict[int, dict] | str:
    """Our deployment with `engine:`; a string saying why when the spec does not take it (yet)."""
    from pydantic import ValidationError

    from llmops_engine.project import Project, ServeSettings, load_project
    from llmops_engine.serving.config import ModelRef
    from llmops_engine.serving.deploy import deploy, endpoint, undeploy
    from llmops_engine.specs.deployment import DeploymentSpec

    try:
        spec = DeploymentSpec.model_validate({
            "model": "bench", "prompt": "bench", "gate": None, "auth": "none", "engine": engine,
            "limits": {"max_new_tokens": args.max_tokens},
            "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05},
        }).model_dump(mode="json")
    except ValidationError as exc:
        return f"the Deployment spec does not take engine: {engine} ({exc.errors()[0]['msg']})"
    project = load_project()
    if args.port:
        project = Project(project.root, project.settings.model_copy(update={"serve": ServeSettings(port=args.port)}))
    app = f"engines-bench-{engine}"
    target = ModelRef(version="builtin", base=MODEL, store_root=str(args.store), engine=engine)
    deploy(project, app, spec, target, report=lambda line: None)
    try:
        return {clients: streamed(endpoint(project), app, clients, args.requests, args.max_tokens, count, {})
                for clients in LEVELS}
    finally:
        undeploy(project, app)


def in_process(gguf: Path, args, count: TokenCounter) -> dict[str, float]:
    """Sequential greedy answers: the plain `Llama` API's streaming completion against our engine,
    interleaved prompt by prompt so both see the same machine load."""
    import asyncio

    from llama_cpp import Llama

    from llmops_engine.serving.engines.llama_cpp import LlamaCppEngine, no_weight_repacking

    with no_weight_repacking():
        plain = Llama(model_path=str(gguf), n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                      verbose=False)
    ours = LlamaCppEngine(gguf, n_ctx=args.n_ctx, n_threads=args.threads)
    params = {"max_new_tokens": args.max_tokens, "do_sample": False, "temperature": 0.0, "top_p": 1.0, "seed": None}

    def plain_answer(prompt: str) -> str:
        chunks = plain.create_completion(prompt, max_tokens=args.max_tokens, temperature=0.0, top_k=0, min_p=0.0,
                                         repeat_penalty=1.0, stream=True)
        return "".join(chunk["choices"][0]["text"] for chunk in chunks)

    async def our_answer(prompt: str) -> str:
        return [event async for event in ours.stream(prompt, params, [])][-1]["done"]["text"]

    seconds = {"plain": 0.0, "ours": 0.0}
    tokens = {"plain": 0, "ours": 0}
    same = 0
    plain_answer(PROMPTS[0]), asyncio.run(our_answer(PROMPTS[0]))  # warm both
    for i in range(args.requests):
        prompt = PROMPTS[i % len(PROMPTS)]
        started = time.perf_counter()
        plain_text = plain_answer(prompt)
        seconds["plain"] += time.perf_counter() - started
        started = time.perf_counter()
        our_text = asyncio.run(our_answer(prompt))
        seconds["ours"] += time.perf_counter() - started
        tokens["plain"] += count(plain_text)
        tokens["ours"] += count(our_text)
        same += plain_text == our_text
    ours.close()
    plain.close()
    return {"plain": tokens["plain"] / seconds["plain"], "ours": tokens["ours"] / seconds["ours"],
            "same_answers": same, "answers": args.requests}


def print_table(rows: dict[str, dict[int, dict] | str]) -> None:
    print(f"\n{'row':<14} {'clients':>7} {'tok/s':>8} {'TTFT p50':>10} {'TTFT p95':>10}   ours / plain", flush=True)
    plain = rows.get("plain")
    for name, levels in rows.items():
        if isinstance(levels, str):
            print(f"{name:<14} skipped: {levels}")
            continue
        for clients, row in levels.items():
            ratio = ""
            if name != "plain" and isinstance(plain, dict):
                base = plain[clients]
                ratio = (f"tok/s x{row['tokens_per_s'] / base['tokens_per_s']:.2f}, "
                         f"TTFT p50 x{row['ttft_p50_ms'] / base['ttft_p50_ms']:.2f}")
            print(f"{name:<14} {clients:>7} {row['tokens_per_s']:8.1f} {row['ttft_p50_ms']:8.0f} ms "
                  f"{row['ttft_p95_ms']:8.0f} ms   {ratio}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=["plain", "in-process", "ours"],
                        help="run only these parts (repeatable; default: all)")
    parser.add_argument("--engine", action="append", choices=["llama-cpp", "transformers"],
                        help="our rows for these engines only (repeatable; default: both)")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (plain and in-process)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port for our rows (default: the project's)")
    args = parser.parse_args()
    parts = args.only or ["in-process", "plain", "ours"]
    args.store = Path(tempfile.mkdtemp(prefix="engines-bench-"))

    from llmops_engine.models.builtin import packaged_gguf_path
    from llmops_engine.serving.engines.llama_cpp import llama_cpp_problem

    if problem := llama_cpp_problem():
        raise SystemExit(problem)
    gguf, package = packaged_gguf_path(MODEL.removeprefix("builtin:"))
    count = TokenCounter(gguf)
    print(f"{MODEL} ({package}, {gguf.name}); {args.requests} streaming requests x {args.max_tokens} max tokens "
          f"per level; llama.cpp threads {args.threads}", flush=True)
    if "in-process" in parts:
        result = in_process(gguf, args, count)
        print(f"in-process, sequential: plain Llama {result['plain']:.1f} tok/s, our LlamaCppEngine "
              f"{result['ours']:.1f} tok/s (x{result['ours'] / result['plain']:.3f}); "
              f"{result['same_answers']}/{result['answers']} answers identical", flush=True)
    rows: dict[str, dict[int, dict] | str] = {}
    if "plain" in parts:
        rows["plain"] = plain_server_rows(gguf, args, count)
    if "ours" in parts:
        for engine in args.engine or ("llama-cpp", "transformers"):
            rows[engine] = ours_rows(engine, args, count)
    if rows:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
