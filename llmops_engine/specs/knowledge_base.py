"""KnowledgeBase: documents → chunks → embeddings → a versioned index that grounds answers (RAG).

A Deployment or an Evaluation variant names it (`knowledge_base:`); the Prompt's `{context}`
receives the top-k chunks retrieved for each question. An optional retrieval gate scores the
index on questions with known source documents at apply, and a failing index is never published.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from .base import FieldError, KindSpec, PathInput, StrictModel

EMBEDDER_REF = r"^(builtin:(wordllama-256|minilm-l6)|hf:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)$"
RetrievalMetric = Literal["hit_at_k", "mrr", "recall_at_k"]
DOCUMENT_TYPES = ".md .markdown .txt .html .htm .pdf .jsonl"
# One document is held in memory whole, with its extracted text and chunks beside it; 256 MiB of
# text is far past any single manual or export a knowledge base needs, and bounds that peak.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024


class Source(StrictModel):
    path: str = Field(description=f"Repository-relative file or glob of documents ({DOCUMENT_TYPES}).")
    text_field: str = Field(default="text", min_length=1, description="For .jsonl documents: the field holding each row's text.")
    max_bytes: PositiveInt = Field(
        default=50_000_000, le=MAX_DOCUMENT_BYTES,
        description="A larger document (or PDF text) is an error: it is not read. At most 256 MiB.",
    )


class Chunking(StrictModel):
    max_chars: int = Field(default=800, ge=50, le=20_000)
    overlap: int = Field(default=100, ge=0, description="Characters shared by consecutive chunks of a document.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "Chunking":
        if self.overlap >= self.max_chars:
            raise FieldError(("overlap", f"overlap ({self.overlap}) must be smaller than max_chars ({self.max_chars})"))
        return self


class Index(StrictModel):
    backend: Literal["lancedb"] = Field(default="lancedb", description="An embedded LanceDB table in the artifact store.")


class Retrieval(StrictModel):
    mode: Literal["dense", "bm25", "hybrid"] = Field(
        default="hybrid", description="hybrid: reciprocal-rank fusion of dense and BM25 results."
    )
    top_k: int = Field(default=4, ge=1, le=50)


class Queries(StrictModel):
    path: str = Field(description='JSONL lines {"question": "...", "source": "kb/file.md" | [..]}.')


class RetrievalThreshold(StrictModel):
    metric: RetrievalMetric
    min: float = Field(ge=0, le=1)


class RetrievalGate(StrictModel):
    queries: Queries
    thresholds: list[RetrievalThreshold] = Field(min_length=1)
    k: PositiveInt | None = Field(default=None, description="Cut-off for the @k metrics (default: retrieval.top_k).")


class KnowledgeBaseSpec(KindSpec):
    kind: ClassVar[str] = "KnowledgeBase"

    source: Source
    chunking: Chunking = Field(default_factory=Chunking)
    embedder: str = Field(default="builtin:wordllama-256", pattern=EMBEDDER_REF,
                          description="builtin:wordllama-256 | builtin:minilm-l6 | hf:org/name (from the HF cache)")
    index: Index = Field(default_factory=Index)
    retrieval: Retrieval = Field(default_factory=Retrieval)
    evaluation: RetrievalGate | None = Field(default=None, description="A retrieval gate run at apply.")

    @field_validator("embedder")
    @classmethod
    def _no_relative_segments(cls, value: str) -> str:
        # '.' and '..' fit the name pattern but name no Hugging Face repo: refuse them here, not as a
        # misleading cache miss at apply.
        if value.startswith("hf:") and {".", ".."} & set(value[3:].split("/")):
            raise ValueError(f"'{value}' has a '.' or '..' segment; write hf:<org>/<name> of a Hugging Face repo")
        return value

    def path_inputs(self) -> list[PathInput]:
        paths = [PathInput(self.source.path, ("source", "path"), must_exist=True)]
        if self.evaluation is not None:
            paths.append(PathInput(self.evaluation.queries.path, ("evaluation", "queries", "path"), must_exist=True))
        return paths

    def gate_k(self) -> int:
        return self.evaluation.k if self.evaluation and self.evaluation.k else self.retrieval.top_k
