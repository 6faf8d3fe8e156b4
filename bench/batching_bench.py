"""Continuous (iteration-level) against request-level batching, on CPU, at mixed answer lengths.

Both run the same model in-process with the same threads, fed by the same closed-loop clients
(each sends its next request when its answer is complete); answers are 8 to 128 tokens, drawn
from one seeded list, so every mode gets the same work.

    request-level   the batching llmops had: the requests that arrived while the last batch ran
                    (up to --max-batch-size) are one `generate` call, which runs until its
                    longest answer is done; each row is cut to its own length afterwards (the
                    best case for it: one call per batch, whatever the lengths)
    continuous      TransformersEngine (llmops_engine/serving/engines/decoding.py): requests join
                    between decode steps and leave when done

Prints completion tokens/s, time to first token p50/p95 (request-level: the whole answer) and
latency p50/p95 per client count, and the ratio continuous / request-level.

    python bench/batching_bench.py [--model builtin:smollm2-135m-instruct] [--requests 48] [--clients 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import threading
import time
from pathlib import Path

from serve_bench import percentile  # the same percentile as the other serving benches

QUESTIONS = [
    "How do I reset my password?", "Write a short poem about invoices.", "Why was my card declined?",
    "Explain how refunds work for annual plans, step by step.", "What is a student discount?",
    "Tell me a long story about a lighthouse keeper.", "How do I export my data?", "Say hello.",
]


def workload(requests: int, seed: int = 7) -> list[tuple[str, int]]:
    draw = random.Random(seed)
    return [(QUESTIONS[i % len(QUESTIONS)], draw.choice([8, 16, 32, 64, 128])) for i in range(requests)]


class RequestLevel:
    """Whole-batch generation, as a `@serve.batch` replica did it."""

    def __init__(self, model, max_batch_size: int, wait_s: float) -> None:
        self.model, self.max_batch_size, self.wait_s = model, max_batch_size, wait_s
        self.queue: list[tuple[str, int, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    async def answer(self, prompt: str, max_tokens: int) -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.cond:
            self.queue.append((prompt, max_tokens, future, loop))
            self.cond.notify()
        return await future

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                deadline = time.monotonic() + self.wait_s
                while len(self.queue) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)
                batch, self.queue = self.queue[:self.max_batch_size], self.queue[self.max_batch_size:]
            outs = self.model.generate([p for p, _, _, _ in batch], max(n for _, n, _, _ in batch))
            done = time.perf_counter()
            for (_, max_tokens, future, loop), out in zip(batch, outs):
                tokens = min(out.completion_tokens, max_tokens)
                loop.call_soon_threadsafe(future.set_result, (done, tokens))


async def run_clients(ask, work: list[tuple[str, int]], clients: int) -> dict[str, float]:
    """Closed loop: `clients` workers take the next request when their last one is answered.
    `ask(prompt, max_tokens)` returns (first token time, completion tokens, end time)."""
    todo = list(work)
    ttfts, latencies, tokens = [], [], 0

    async def client() -> None:
        nonlocal tokens
        while todo:
            prompt, max_tokens = todo.pop()
            sent = time.perf_counter()
            first, count, end = await ask(prompt, max_tokens)
            ttfts.append(first - sent)
            latencies.append(end - sent)
            tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {"tokens_per_s": tokens / wall, "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95),
            "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from llmops_engine.models import load_base
    from llmops_engine.serving.engines.decoding import TransformersEngine

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as store:
        model = load_base(args.model, Path(store))
    prompts = {q: model.render(q) if model.template else q for q in QUESTIONS}
    engine = TransformersEngine(model, args.max_batch_size, 0.02)
    request_level = RequestLevel(model, args.max_batch_size, 0.02)

    async def continuous(prompt: str, max_tokens: int):
        params = {"max_new_tokens": max_tokens, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}
        first = None
        async for event in engine.stream(prompts[prompt], params, []):
            first = first or time.perf_counter()
            if "done" in event:
                return first, event["done"]["completion_tokens"], time.perf_counter()

    async def whole(prompt: str, max_tokens: int):
        end, tokens = await request_level.answer(prompts[prompt], max_tokens)
        return end, tokens, end

    print(f"{args.model}, {args.requests} requests of 8-128 tokens, max batch {args.max_batch_size}, "
          f"{args.threads} threads", flush=True)
    print(f"{'clients':>7} {'mode':<14} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'p50':>7} {'p95':>7}")
    for clients in args.clients:
        work = workload(args.requests)
        rows = {"request-level": asyncio.run(run_clients(whole, work, clients)),
                "continuous": asyncio.run(run_clients(continuous, work, clients))}
        for mode, row in rows.items():
            print(f"{clients:>7} {mode:<14} {row['tokens_per_s']:7.1f} {row['ttft_p50'] * 1000:7.0f}ms "
                  f"{row['ttft_p95'] * 1000:7.0f}ms {row['p50']:6.2f}s {row['p95']:6.2f}s", flush=True)
        ratio = rows["continuous"]["tokens_per_s"] / rows["request-level"]["tokens_per_s"]
        print(f"{clients:>7} continuous / request-level: tokens/s x{ratio:.2f}, TTFT p50 "
              f"x{rows['continuous']['ttft_p50'] / rows['request-level']['ttft_p50']:.2f}", flush=True)


if __name__ == "__main__":
    main()
