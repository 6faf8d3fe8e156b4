"""Knowledge-base benchmark: build, search and rebuild an index of synthetic help-center chunks.

For each embedder, in the same run and on the same chunks and questions:
  build     - llmops_engine.knowledge.index.build_index: embed every chunk, write the LanceDB
              table and the BM25 index (chunks/s);
  search    - Index.search top-k latency p50/p95 in dense, bm25 and hybrid modes (query
              embedding included), one query at a time;
  exact     - recall@k of the index's dense search against brute-force numpy search over a
              fresh embedding of the same chunks (the index searches exactly: target 1.0);
  lancedb   - LanceDB's own flat cosine search over the same table, next to the numpy
              product the index uses instead (search only, query vectors precomputed);
  rebuild   - an incremental build after editing 1% of the chunks, against the full build.
Chunks and questions come from a seeded generator over word lists: no download.

    python bench/kb_bench.py [--chunks 10000] [--queries 200] [--top-k 4]
                             [--embedders builtin:wordllama-256,builtin:minilm-l6]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from llmops_engine.knowledge.chunking import Chunk
from llmops_engine.knowledge.embedders import load_embedder
from llmops_engine.knowledge.index import INDEX_DIR, TABLE, Index, build_index

PRODUCTS = ["the mobile app", "the desktop app", "the web dashboard", "the API", "the browser extension", "Team plan",
            "Business plan", "the admin console", "the billing portal", "the reporting module"]
OBJECTS = ["password", "invoice", "payment card", "project", "workspace", "export", "API key", "user seat", "webhook",
           "notification", "calendar sync", "two-factor code", "backup", "custom domain", "audit log", "data import",
           "subscription", "refund", "shared folder", "integration"]
ACTIONS = ["reset", "download", "update", "delete", "create", "rename", "transfer", "restore", "disable", "renew",
           "share", "verify", "cancel", "upgrade", "move"]
PLACES = ["Settings", "Account", "Billing", "Security", "Admin", "Integrations", "Profile", "Workspace settings"]
PROBLEMS = ["the page keeps loading", "an error 500 appears", "the button is greyed out", "the email never arrives",
            "the change is not saved", "the sync stops halfway", "the file is empty", "the link has expired"]
TIMES = ["a few minutes", "one hour", "24 hours", "two business days", "7 days", "30 days"]


def make_chunks(count: int, seed: int = 7) -> list[Chunk]:
    rng = random.Random(seed)
    chunks = []
    for n in range(count):
        product, thing, action = rng.choice(PRODUCTS), rng.choice(OBJECTS), rng.choice(ACTIONS)
        sentences = [
            f"To {action} a {thing} in {product}, open {rng.choice(PLACES)} and select {thing.title()}.",
            f"Changes to a {thing} take effect within {rng.choice(TIMES)}.",
            f"If {rng.choice(PROBLEMS)}, sign out, clear the cache and try to {action} it again.",
            f"Only owners and admins can {rng.choice(ACTIONS)} a {rng.choice(OBJECTS)} on the {rng.choice(PRODUCTS)[4:]}.",
            f"Article {n}: contact support with the {thing} ID if the problem continues after {rng.choice(TIMES)}.",
        ]
        rng.shuffle(sentences)
        text = " ".join(sentences[:rng.randint(3, 5)])
        source = f"kb/{thing.replace(' ', '-')}/article-{n // 4:05d}.md"
        chunks.append(Chunk(f"{source}#{n % 4}", source, text, hashlib.sha256(text.encode()).hexdigest()))
    return chunks


def make_questions(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    forms = ["how do I {a} my {o} in {p}?", "{o} {a} not working, {pr}", "can an admin {a} a {o}?",
             "why can't I {a} the {o}", "where is the option to {a} {o} on {p}"]
    return [rng.choice(forms).format(a=rng.choice(ACTIONS), o=rng.choice(OBJECTS), p=rng.choice(PRODUCTS),
                                     pr=rng.choice(PROBLEMS)) for _ in range(count)]


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000  # noqa: E731
    return pick(0.5), pick(0.95)


def timed(call, items) -> list[float]:
    for item in items[:5]:
        call(item)  # warm up caches and lazy imports
    latencies = []
    for item in items:
        started = time.perf_counter()
        call(item)
        latencies.append(time.perf_counter() - started)
    return latencies


def bench_embedder(ref: str, chunks: list[Chunk], questions: list[str], top_k: int, work: Path) -> dict:
    started = time.perf_counter()
    embedder = load_embedder(ref)
    load_s = time.perf_counter() - started
    full = work / f"{ref.replace(':', '_')}-full"
    started = time.perf_counter()
    build_index(full, chunks, embedder)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    index = Index.open(full)
    open_s = time.perf_counter() - started
    row = {"ref": ref, "load_s": load_s, "build_s": build_s, "chunks_per_s": len(chunks) / build_s, "open_s": open_s}
    for mode in ("dense", "bm25", "hybrid"):
        row[mode] = percentiles(timed(lambda q: index.search(q, top_k, mode), questions))
    row["recall"], row["lancedb"], row["numpy"] = exact_search(index, embedder, chunks, questions, top_k, full)
    row.update(rebuild(chunks, embedder, full, work / f"{ref.replace(':', '_')}-next"))
    return row


def exact_search(index, embedder, chunks, questions, top_k, built: Path):
    """recall@k of Index dense search vs numpy brute force; LanceDB flat vs numpy search-only latency."""
    import lancedb

    fresh = embedder.embed([chunk.text for chunk in chunks])
    queries = embedder.embed(questions)
    row_of = {chunk.id: row for row, chunk in enumerate(chunks)}
    found = 0
    for question, vector in zip(questions, queries):
        brute = set(np.argsort(-(fresh @ vector), kind="stable")[:top_k].tolist())
        found += len(brute & {row_of[hit.id] for hit in index.search(question, top_k, "dense")})
    table = lancedb.connect(str(built / INDEX_DIR)).open_table(TABLE)
    lance = timed(lambda v: table.search(v).metric("cosine").limit(top_k).to_arrow(), list(queries))
    matrix = index.vectors  # scored as Index._dense does
    numpy_only = timed(lambda v: np.argpartition(-np.einsum("ij,j->i", matrix, v), top_k)[:top_k], list(queries))
    return found / (len(questions) * top_k), percentiles(lance), percentiles(numpy_only)


def rebuild(chunks: list[Chunk], embedder, previous: Path, out: Path) -> dict:
    edited = list(chunks)
    for row in range(0, len(chunks), 100):  # 1%
        text = chunks[row].text + " Updated for the new release."
        edited[row] = Chunk(chunks[row].id, chunks[row].source, text, hashlib.sha256(text.encode()).hexdigest())
    started = time.perf_counter()
    stats = build_index(out, edited, embedder, previous_dir=previous)
    return {"rebuild_s": time.perf_counter() - started, "rebuild_embedded": stats.embedded, "rebuild_reused": stats.reused}


def report(rows: list[dict], chunks: int, questions: int, top_k: int) -> None:
    print(f"\n{chunks:,} chunks, {questions} questions, top-{top_k}, {os.cpu_count()} CPUs; latencies in ms (p50/p95)")
    header = (f"{'embedder':<24}{'load s':>7}{'build s':>9}{'chunks/s':>10}{'open s':>8}{'dense':>14}{'bm25':>14}"
              f"{'hybrid':>14}{'recall@k':>10}")
    print(header)
    for r in rows:
        print(f"{r['ref']:<24}{r['load_s']:7.2f}{r['build_s']:9.1f}{r['chunks_per_s']:10,.0f}{r['open_s']:8.2f}"
              + "".join(f"{r[m][0]:8.2f}/{r[m][1]:<5.1f}" for m in ("dense", "bm25", "hybrid")) + f"{r['recall']:10.3f}")
    print("\nsearch only (query vector given), p50/p95 ms; LanceDB flat cosine vs the in-memory numpy product:")
    for r in rows:
        ratio = r["lancedb"][0] / r["numpy"][0]
        print(f"{r['ref']:<24} lancedb {r['lancedb'][0]:6.2f}/{r['lancedb'][1]:<6.2f} numpy {r['numpy'][0]:6.3f}/"
              f"{r['numpy'][1]:<6.3f} lancedb x{ratio:,.0f} slower")
    print("\nincremental rebuild after editing 1% of the chunks:")
    for r in rows:
        print(f"{r['ref']:<24} {r['rebuild_s']:6.2f} s ({r['rebuild_embedded']} embedded, {r['rebuild_reused']} reused) "
              f"vs full build {r['build_s']:.2f} s: x{r['build_s'] / r['rebuild_s']:.1f} faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--embedders", default="builtin:wordllama-256,builtin:minilm-l6")
    args = parser.parse_args()
    chunks, questions = make_chunks(args.chunks), make_questions(args.queries)
    for library in ("lancedb", "bm25s"):
        importlib.import_module(library)  # once per process (~1 s for lancedb): not part of the first build
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmops-kb-bench-") as work:
        for ref in args.embedders.split(","):
            print(f"{ref}: building and searching {len(chunks):,} chunks ...", flush=True)
            rows.append(bench_embedder(ref, chunks, questions, args.top_k, Path(work)))
    report(rows, len(chunks), len(questions), args.top_k)


if __name__ == "__main__":
    main()
