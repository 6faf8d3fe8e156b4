"""Retrieval quality of a knowledge base on a question set: did search find the right document?

Evaluation reads the spec's question file with `read_queries` (checked against the knowledge
base's documents; every bad line reported at once) and scores the sources the index returned
for each question with `retrieval_metrics`. The metrics count documents, not chunks: several
chunks of one document count once, and an expected source `kb/faq.jsonl` is found by a hit
on any of its rows (`kb/faq.jsonl#L<n>`). `retrieval_metrics` is pure.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Collection, Sequence

from ..errors import KnowledgeBaseError
from ..paths import one_file
from .documents import decode_text, json_object
from .problems import Problems

RETRIEVAL_METRICS = ("hit_at_k", "mrr", "recall_at_k")
MAX_QUERY_FILE_BYTES = 50_000_000
# The gate searches the index once per question at every apply: 10,000 is far past what a
# stable metric needs (a few hundred) and keeps a hostile question file from stalling apply.
MAX_QUERIES = 10_000
_ROW_SUFFIX = re.compile(r"#L\d+$")


def source_matches(hit_source: str, expected: str) -> bool:
    """Whether a hit from document `hit_source` is the expected document, or a row of the expected file."""
    return hit_source == expected or _ROW_SUFFIX.sub("", hit_source) == expected


def retrieval_metrics(ranked_sources: Sequence[Sequence[str]], expected: Sequence[Collection[str]],
                      k: int) -> dict[str, float]:
    """hit@k, MRR and recall@k over queries; `ranked_sources[i]` are query i's hits' sources, best first."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not expected or len(ranked_sources) != len(expected):
        raise ValueError(f"need one ranking per query and at least one query, got {len(ranked_sources)} rankings "
                         f"for {len(expected)} queries")
    hits = reciprocal_ranks = recalls = 0.0
    for ranked, wanted in zip(ranked_sources, expected):
        if not wanted:
            raise ValueError("every query needs at least one expected source")
        top = list(dict.fromkeys(ranked))[:k]  # one document's several chunks count once
        ranks = [rank for rank, source in enumerate(top, start=1) if any(source_matches(source, w) for w in wanted)]
        hits += bool(ranks)
        reciprocal_ranks += 1 / ranks[0] if ranks else 0.0
        recalls += sum(any(source_matches(s, w) for s in top) for w in wanted) / len(wanted)
    count = len(expected)
    return {"hit_at_k": hits / count, "mrr": reciprocal_ranks / count, "recall_at_k": recalls / count}


def read_queries(root: Path, path: str, known_sources: set[str]) -> list[dict]:
    """The questions of a JSONL file: [{"question": str, "sources": sorted list[str], "line": int}, ...].

    Each line is {"question": str, "source": str | [str, ...]}; a source must be a document of the
    knowledge base, or a JSONL file whose rows are. Every problem is collected, then raised once.
    """
    file = _query_file(root, path)
    files = {_ROW_SUFFIX.sub("", source) for source in known_sources}  # did-you-mean candidates: one per file
    documents = set(known_sources) | files
    problems = Problems(f"in the question file {path}")
    queries = []
    for number, raw in enumerate(file.read_bytes().splitlines(), start=1):
        try:
            line = decode_text(raw)
            if line.strip():
                queries.append({**_query(line, documents, () if problems.full else files), "line": number})
        except KnowledgeBaseError as exc:
            problems.add(f"{path}:{number}: {exc}")
        if len(queries) > MAX_QUERIES:  # bad lines cost no search, and their list is bounded already
            raise KnowledgeBaseError(f"{path}:{number}: over {MAX_QUERIES:,} questions (MAX_QUERIES); the gate "
                                     "searches once per question at every apply: keep a sample of at most that many")
    if not queries and not problems.messages:
        problems.add(f"{path}: no questions; write one JSON object per line, "
                     '{"question": "...", "source": "<document path>"}')
    problems.raise_if_any()
    return queries


def _query_file(root: Path, path: str) -> Path:
    try:
        return one_file(root, path, "question file", "JSONL", MAX_QUERY_FILE_BYTES)
    except ValueError as exc:
        raise KnowledgeBaseError(str(exc)) from None


def _query(line: str, documents: set[str], suggestions: Collection[str]) -> dict:
    """One line's question and expected sources; an unknown source's did-you-mean is among `suggestions`
    (empty once the problem list is full: nobody will read it)."""
    row = json_object(line)
    question, source = row.get("question"), row.get("source")
    if not isinstance(question, str) or not question.strip():
        raise KnowledgeBaseError("'question' must be a non-empty string")
    sources = [source] if isinstance(source, str) else source
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise KnowledgeBaseError("'source' must be a document path or a non-empty list of them")
    unknown = [s for s in sources if s not in documents]
    if unknown:
        raise KnowledgeBaseError("; ".join(_unknown_source(s, suggestions) for s in unknown))
    return {"question": question, "sources": sorted(set(sources))}


def _unknown_source(source: str, suggestions: Collection[str]) -> str:
    message = f"source '{source}' is not a document of this knowledge base"
    close = difflib.get_close_matches(source, suggestions, n=1)
    return message + (f"; did you mean '{close[0]}'?" if close else "")
