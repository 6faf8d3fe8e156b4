"""The retrieval tax: one grounded request against the same request without a knowledge base.

Deploys the same base model twice behind the project's gateway — `rag-bench-plain` (a chat prompt
without {context}) and `rag-bench-grounded` (the same prompt with the help-center chunks the demo's
knowledge base retrieves, hybrid top-k) — then sends the demo's retrieval questions one at a time,
alternating between the two, and prints p50/p95 latency of each, the difference, and what it is
made of: the retrieval itself (Index.search in-process, p50) and the longer prompt (mean prompt tokens).

    python bench/rag_bench.py [--model builtin:smollm2-135m-instruct] [--requests 40] [--max-tokens 16] [--top-k 2]

Starts (or reuses) the project's local Ray head; both applications use `auth: none` and are deleted
at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from llmops_engine.knowledge.chunking import chunk_document
from llmops_engine.knowledge.documents import read_documents
from llmops_engine.knowledge.embedders import load_embedder
from llmops_engine.knowledge.index import Index, build_index
from llmops_engine.project import Project, ServeSettings, load_project
from llmops_engine.serving.config import ModelRef
from llmops_engine.serving.deploy import deploy, endpoint, undeploy
from llmops_engine.specs.deployment import DeploymentSpec
from llmops_engine.specs.prompt import PromptSpec

SYSTEM = "You are the support assistant for Nimbus Notes, Nimbus Drive and Nimbus Chat. Answer in one sentence."
PLAIN = PromptSpec(format="chat", system=SYSTEM, template="{instruction}")
GROUNDED = PromptSpec(format="chat", system=SYSTEM, template="Help-center excerpts:\n{context}\n\n{instruction}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def build_demo_index(root: Path, out: Path, top_k: int) -> tuple[dict, list[str], list[float]]:
    """The demo knowledge base's index in `out`, its questions, and in-process search latencies (s)."""
    documents = read_documents(root, "kb/*.md")
    chunks = [c for d in documents for c in chunk_document(d, 600, 80)]
    build_index(out, chunks, load_embedder("builtin:wordllama-256"))
    questions = [json.loads(line)["question"] for line in (root / "kb" / "queries.jsonl").read_text().splitlines()]
    index = Index.open(out)
    searches = []
    for question in questions * 5:
        started = time.perf_counter()
        index.search(question, top_k, "hybrid")
        searches.append(time.perf_counter() - started)
    knowledge = {"name": "bench", "fingerprint": "bench", "path": str(out), "mode": "hybrid", "top_k": top_k}
    return knowledge, questions, searches


def ask(client: httpx.Client, url: str, app: str, question: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.post(f"{url}/chat/completions", json={
        "model": app, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0})
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["usage"]["prompt_tokens"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=40, help="per deployment")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: the project's)")
    args = parser.parse_args()

    project = load_project()
    if args.port:
        project = Project(project.root, project.settings.model_copy(update={"serve": ServeSettings(port=args.port)}))
    work = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    knowledge, questions, searches = build_demo_index(project.root, work / "index", args.top_k)
    spec = DeploymentSpec.model_validate({"model": args.model, "prompt": "bench", "gate": None, "auth": "none",
                                          "limits": {"max_new_tokens": args.max_tokens},
                                          "rollout": {"strategy": "rolling"}}).model_dump(mode="json")
    apps = {
        "rag-bench-plain": ModelRef(version="plain", base=args.model, store_root=str(work), prompt=PLAIN.saved()),
        "rag-bench-grounded": ModelRef(version="grounded", base=args.model, store_root=str(work),
                                       prompt=GROUNDED.saved(), knowledge=knowledge),
    }
    try:
        for app, target in apps.items():
            deploy(project, app, spec, target, report=lambda line: None)
        url = endpoint(project)
        results: dict[str, list[tuple[float, int]]] = {app: [] for app in apps}
        with httpx.Client(timeout=300) as client:
            for app in apps:
                ask(client, url, app, questions[0], args.max_tokens)  # warm up each replica
            for i in range(args.requests):
                for app in apps:  # alternating, so both see the same machine state
                    results[app].append(ask(client, url, app, questions[i % len(questions)], args.max_tokens))
        print(f"model {args.model}, {args.requests} sequential requests each, max {args.max_tokens} new tokens, "
              f"hybrid top-{args.top_k} over the demo help center")
        p50 = {}
        for app, rows in results.items():
            latencies = [r[0] for r in rows]
            p50[app] = percentile(latencies, 0.5) * 1000
            print(f"{app:<20} p50 {p50[app]:7.1f} ms   p95 {percentile(latencies, 0.95) * 1000:7.1f} ms   "
                  f"prompt tokens {sum(r[1] for r in rows) / len(rows):6.1f}")
        tax = p50["rag-bench-grounded"] - p50["rag-bench-plain"]
        print(f"retrieval tax (p50 grounded - plain): {tax:+.1f} ms ({p50['rag-bench-grounded'] / p50['rag-bench-plain']:.2f}x); "
              f"of which retrieval itself: p50 {percentile(searches, 0.5) * 1000:.2f} ms, "
              f"p95 {percentile(searches, 0.95) * 1000:.2f} ms (in-process); the rest is the longer prompt")
    finally:
        for app in apps:
            undeploy(project, app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
