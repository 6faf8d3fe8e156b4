"""KnowledgeBase controller: build the index, score retrieval, publish only an index that passes.

Recipe: read the documents → chunk them → embed what changed since the published index (the
rest is reused by chunk hash) → write the LanceDB index under staging → run the retrieval gate
(when the spec has one) → outputs. A failure anywhere publishes nothing, so deployments keep
serving the previous index; a failed gate's report is kept under <store>/reports/<fingerprint>/.
The index is built in the apply process: embedding with the default static embedder is fast
enough on a CPU (BENCHMARKS.md, "Knowledge bases").
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GateFailed, KnowledgeBaseError
from ..evaluation.gates import fmt
from ..specs.resource import Resource
from .base import ApplyContext, BaseController, Outputs


class KnowledgeBaseController(BaseController):
    kind = "KnowledgeBase"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        from ..knowledge.chunking import chunk_document
        from ..knowledge.documents import read_documents
        from ..knowledge.embedders import load_embedder
        from ..knowledge.index import Index, build_index

        spec = resource.spec
        documents = read_documents(ctx.root, spec.source.path, spec.source.text_field, spec.source.max_bytes,
                                   skip_dirs=ctx.project.engine_dirs())
        chunks = [c for d in documents for c in chunk_document(d, spec.chunking.max_chars, spec.chunking.overlap)]
        embedder = load_embedder(spec.embedder)
        stats = build_index(staging, chunks, embedder, _previous_index(resource, ctx))
        ctx.report(f"{resource.key}: {stats.documents} documents, {stats.chunks} chunks "
                   f"(embedded {stats.embedded}, reused {stats.reused}) with {spec.embedder}")
        _write_manifest(staging, documents, chunks)
        outputs: Outputs = {
            "documents": stats.documents, "chunks": stats.chunks, "embedded": stats.embedded, "reused": stats.reused,
            "embedder": embedder.identity, "retrieval": spec.retrieval.model_dump(), "manifest": "documents.json",
        }
        if spec.evaluation is not None:
            outputs["retrieval_metrics"] = _retrieval_gate(resource, ctx, staging, Index.open(staging), documents)
        return outputs


def published_index(name: str, ctx: ApplyContext) -> dict:
    """Where a Deployment's slots or an evaluation find a knowledge base's published index, and
    how to query it (the form `ModelRef.knowledge` and `Contender.knowledge` carry)."""
    key = f"KnowledgeBase/{name}"
    index_dir = ctx.artifact_dir(key)
    if not index_dir.is_dir():
        raise KnowledgeBaseError(f"the index of {key} ({ctx.fingerprint(key)[:12]}) is missing; apply it first")
    retrieval = ctx.resources[key].spec.retrieval
    return {"name": name, "fingerprint": ctx.fingerprint(key), "path": str(index_dir), "store_url": ctx.store.url,
            "mode": retrieval.mode, "top_k": retrieval.top_k}


def _previous_index(resource: Resource, ctx: ApplyContext) -> Path | None:
    """The index this resource published last, whose unchanged chunks need no embedding again."""
    record = ctx.records.get(resource.key)
    if record is None or record.status != "ready" or not ctx.store.has(record.fingerprint):
        return None
    return ctx.store.local_path(record.fingerprint)


def _write_manifest(staging: Path, documents, chunks) -> None:
    per_source: dict[str, int] = {}
    for chunk in chunks:
        per_source[chunk.source] = per_source.get(chunk.source, 0) + 1
    manifest = {d.source: {"sha256": d.sha256, "chunks": per_source.get(d.source, 0)} for d in documents}
    (staging / "documents.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _retrieval_gate(resource: Resource, ctx: ApplyContext, staging: Path, index, documents) -> dict[str, float]:
    """Score the index on the spec's queries; raise GateFailed (report kept) when a threshold fails."""
    from ..knowledge.metrics import read_queries, retrieval_metrics

    spec = resource.spec
    k = spec.gate_k()
    queries = read_queries(ctx.root, spec.evaluation.queries.path, {d.source for d in documents})
    ranked = [[hit.source for hit in index.search(q["question"], k, spec.retrieval.mode)] for q in queries]
    expected = [set(q["sources"]) for q in queries]
    metrics = retrieval_metrics(ranked, expected, k)
    checks = [(t.metric, t.min, metrics[t.metric], metrics[t.metric] >= t.min) for t in spec.evaluation.thresholds]
    _write_retrieval_report(staging, resource, k, metrics, checks, queries, ranked)
    summary = ", ".join(f"{name} {fmt(value)}" for name, value in metrics.items())
    if all(ok for *_, ok in checks):
        ctx.report(f"{resource.key}: retrieval gate passed on {len(queries)} queries ({summary})")
        return metrics
    fingerprint = ctx.fingerprint(resource.key)
    report_dir = ctx.store.keep_report(fingerprint, staging)
    shared = ctx.store.report_url(fingerprint)
    failed = [f"{metric} {fmt(value)} < {fmt(limit)}" for metric, limit, value, ok in checks if not ok]
    message = (f"{resource.key}: retrieval gate failed ({'; '.join(failed)}) on {len(queries)} queries: the index "
               f"is not published; deployments keep the previous one.\nReport: {report_dir / 'retrieval.md'}"
               + (f" (shared copy: {shared})" if shared else ""))
    raise GateFailed(message, table=_gate_table(checks), report_dir=report_dir)


def _gate_table(checks: list[tuple]) -> str:
    lines = ["| metric | value | threshold | result |", "|---|---|---|---|"]
    lines += [f"| {m} | {fmt(v)} | >= {fmt(limit)} | {'PASS' if ok else 'FAIL'} |" for m, limit, v, ok in checks]
    return "\n".join(lines)


def _write_retrieval_report(staging: Path, resource: Resource, k: int, metrics: dict, checks: list[tuple],
                            queries: list[dict], ranked: list[list[str]]) -> None:
    from ..knowledge.metrics import source_matches

    rows = [{"question": q["question"], "line": q["line"], "expected": q["sources"], "retrieved": r,
             "rank": next((rank for rank, hit in enumerate(dict.fromkeys(r), start=1)
                           if any(source_matches(hit, wanted) for wanted in q["sources"])), None)}
            for q, r in zip(queries, ranked)]
    (staging / "retrieval.json").write_text(json.dumps({"k": k, "metrics": metrics, "queries": rows}, indent=2))
    missed = [row for row in rows if row["rank"] is None]
    lines = [f"# Retrieval gate: {resource.key}", "",
             f"{len(rows)} queries, top {k}, mode {resource.spec.retrieval.mode}, embedder {resource.spec.embedder}.",
             "", _gate_table(checks), "", f"## Missed ({len(missed)})", ""]
    lines += [f"- {row['question']!r}: expected {', '.join(row['expected'])}; got {', '.join(row['retrieved']) or 'nothing'}"
              for row in missed] or ["(none)"]
    (staging / "retrieval.md").write_text("\n".join(lines) + "\n")
