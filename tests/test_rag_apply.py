"""A KnowledgeBase through the real engine: `plan` names changed documents, a rebuild embeds only
what changed, the retrieval gate fails closed and a broken document never replaces a good index;
the published index is read straight from an S3 store. Real wordllama and LanceDB, no Ray."""

import json

import pytest

from llmops_engine.engine import Engine
from llmops_engine.errors import GateFailed, KnowledgeBaseError
from llmops_engine.knowledge.index import Index
from llmops_engine.project import load_project

pytestmark = pytest.mark.slow  # loads the embedder (about a second) and builds LanceDB tables

DOCS = {
    "billing.md": "# Billing\n\nInvoices are under Billing > History. Refunds are possible within 14 days "
                  "of a payment: write to support with your invoice number.\n",
    "passwords.md": "# Passwords\n\nTo reset your password open Settings > Security and click Reset password. "
                    "Then sign in again on every device.\n",
    "storage.md": "# Storage\n\nThe Free plan includes 5 GB of storage, Plus 100 GB and Team 1 TB. Files in the "
                  "trash count toward the quota until you empty it.\n",
}
QUERIES = [
    {"question": "where can I find my invoices", "source": "kb/billing.md"},
    {"question": "I forgot my password", "source": "kb/passwords.md"},
    {"question": "how much space does the Team plan have", "source": "kb/storage.md"},
]
KB_SPEC = """\
apiVersion: llmops/v1
kind: KnowledgeBase
metadata: {{name: docs}}
spec:
  source: {{path: "kb/*.md"}}
  chunking: {{max_chars: 120, overlap: 20}}
  retrieval: {{mode: hybrid, top_k: 2}}
  evaluation:
    queries: {{path: kb/queries.jsonl}}
    thresholds:
      - {{metric: hit_at_k, min: {hit_min}}}
      - {{metric: mrr, min: 0.5}}
"""


def write_kb(root, hit_min: float = 0.9, queries=QUERIES) -> None:
    (root / "kb").mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (root / "kb" / name).write_text(text)
    (root / "kb" / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "specs").mkdir(exist_ok=True)
    (root / "specs" / "kb.yaml").write_text(KB_SPEC.format(hit_min=hit_min))
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")


def engine(root) -> tuple[Engine, list[str]]:
    lines: list[str] = []
    return Engine(load_project(root), report=lines.append), lines


def outputs(root) -> dict:
    return engine(root)[0].records()["KnowledgeBase/docs"].outputs


def test_incremental_rebuild_gate_and_failure_keep_the_good_index(tmp_path):
    write_kb(tmp_path)
    eng, lines = engine(tmp_path)
    assert eng.apply().exit_code() == 0
    first = outputs(tmp_path)
    assert first["documents"] == 3 and first["embedded"] == first["chunks"] and first["reused"] == 0
    assert first["retrieval_metrics"]["hit_at_k"] == 1.0
    assert any("retrieval gate passed on 3 queries" in line for line in lines)
    first_fp = eng.records()["KnowledgeBase/docs"].fingerprint
    hits = Index.open(eng.store.local_path(first_fp)).search("reset my password", 2, "hybrid")
    assert hits[0].source == "kb/passwords.md" and hits[0].id.startswith("kb/passwords.md#")
    assert not engine(tmp_path)[0].plan().plan.has_changes()

    # One document changes: the plan names it, and only its chunks are embedded again.
    storage = tmp_path / "kb" / "storage.md"
    storage.write_text(storage.read_text().replace("1 TB", "2 TB"))
    change = engine(tmp_path)[0].plan().plan.changes
    assert [(a.key, a.reasons) for a in change] == [("KnowledgeBase/docs", ("data changed: kb/storage.md",))]
    assert engine(tmp_path)[0].apply().exit_code() == 0
    second = outputs(tmp_path)
    manifest = json.loads((engine(tmp_path)[0].store.local_path(
        engine(tmp_path)[0].records()["KnowledgeBase/docs"].fingerprint) / "documents.json").read_text())
    assert second["embedded"] == manifest["kb/storage.md"]["chunks"] < second["chunks"]
    assert second["reused"] == second["chunks"] - second["embedded"]

    # A document that cannot be read fails the rebuild and names the file; the last good index stays.
    good = engine(tmp_path)[0].records()["KnowledgeBase/docs"]
    (tmp_path / "kb" / "empty.md").write_text("  \n")
    result = engine(tmp_path)[0].apply()
    assert result.exit_code() != 0
    error = result.steps[0].error
    assert isinstance(error, KnowledgeBaseError) and "kb/empty.md" in str(error)
    after = engine(tmp_path)[0].records()["KnowledgeBase/docs"]
    assert after.fingerprint == good.fingerprint and after.outputs == good.outputs
    (tmp_path / "kb" / "empty.md").unlink()


def test_a_failing_retrieval_gate_publishes_nothing_and_keeps_its_report(tmp_path):
    misleading = QUERIES + [{"question": "where can I find my invoices", "source": "kb/storage.md"}]
    write_kb(tmp_path, hit_min=1.0, queries=misleading)
    eng, _ = engine(tmp_path)
    result = eng.apply()
    assert result.exit_code() == GateFailed.exit_code
    error = result.steps[0].error
    assert isinstance(error, GateFailed) and "hit_at_k 0.75 < 1" in str(error)
    assert "KnowledgeBase/docs" not in eng.records()
    report = (error.report_dir / "retrieval.md").read_text()
    assert "kb/storage.md" in report and "## Missed (1)" in report


def test_a_query_naming_an_unknown_source_is_a_clear_error(tmp_path):
    write_kb(tmp_path, queries=QUERIES + [{"question": "refunds?", "source": "kb/billing.mdx"}])
    result = engine(tmp_path)[0].apply()
    error = result.steps[0].error
    assert isinstance(error, KnowledgeBaseError)
    assert "kb/queries.jsonl:4" in str(error) and "kb/billing.mdx" in str(error)


def test_the_published_index_is_read_straight_from_an_s3_store(tmp_path, s3_store, monkeypatch):
    write_kb(tmp_path)
    monkeypatch.setenv("LLMOPS_ARTIFACT_STORE", s3_store)
    eng, _ = engine(tmp_path)
    assert eng.apply().exit_code() == 0
    fingerprint = eng.records()["KnowledgeBase/docs"].fingerprint
    index = Index.open(f"{s3_store}/objects/{fingerprint}")  # LanceDB over the S3 API, no local copy
    assert [hit.source for hit in index.search("how much space does the Team plan have", 1, "dense")] == ["kb/storage.md"]
    assert [hit.source for hit in index.search("reset password", 1, "bm25")] == ["kb/passwords.md"]
