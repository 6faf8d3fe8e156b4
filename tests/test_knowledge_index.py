"""A real index (wordllama + LanceDB + bm25s) over a small help center: what it finds, how it
rebuilds, how it fails, and that it opens straight from S3."""

import json
import shutil
import threading
import time

import numpy as np
import pytest

from llmops_engine.errors import KnowledgeBaseError
from llmops_engine.knowledge.chunking import chunk_document
from llmops_engine.knowledge.documents import read_documents
from llmops_engine.knowledge.embedders import load_embedder
from llmops_engine.knowledge.index import BM25_SETTINGS, INDEX_DIR, MAX_QUERY_CHARS, Hit, Index, build_index, tokenize

HELP_CENTER = {
    "kb/billing.md": "# Billing\n\nInvoices are emailed on the first day of every month. You can download past invoices "
                     "as PDF files from Settings, then Billing.\n\n## Payment methods\n\nWe accept Visa, Mastercard and "
                     "PayPal. Update the card we charge under Settings, then Billing.\n",
    "kb/passwords.md": '# Passwords\n\nTo reset your password, click "Forgot password" on the sign-in page and follow '
                       "the link we email you. The reset link expires after one hour.\n",
    "kb/shipping.md": "# Shipping\n\nOrders ship within two business days. International delivery takes 7 to 14 days, "
                      "and tracking numbers are sent by email.\n",
    "kb/export.html": "<html><body><h1>Exporting data</h1><p>You can export all your projects as a ZIP archive from "
                      "the Account page. Exports include attachments and comments.</p></body></html>",
    "kb/faq.jsonl": '{"text": "Our support team is available Monday to Friday, 9am to 5pm CET, by chat and email."}\n'
                    '{"text": "You can delete your account permanently from Account settings; all your data is erased '
                    'after 30 days."}\n',
}
WORDLLAMA = "builtin:wordllama-256"


def write_help_center(root, overrides=None):
    for name, text in {**HELP_CENTER, **(overrides or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def help_center_chunks(root):
    return [chunk for doc in read_documents(root, "kb/*") for chunk in chunk_document(doc, 400, 60)]


class CountingEmbedder:
    """The real embedder, recording which texts it was asked to embed."""

    def __init__(self, inner):
        self.inner, self.ref, self.dim, self.identity = inner, inner.ref, inner.dim, inner.identity
        self.texts = []

    def embed(self, texts):
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = write_help_center(tmp_path_factory.mktemp("repo"))
    out = tmp_path_factory.mktemp("index")
    stats = build_index(out, help_center_chunks(root), load_embedder(WORDLLAMA))
    return out, stats


@pytest.fixture(scope="module")
def index(built):
    return Index.open(built[0])


def test_build_writes_the_documented_layout(built):
    out, stats = built
    assert (stats.chunks, stats.embedded, stats.reused, stats.documents) == (6, 6, 0, 6)
    metadata = json.loads((out / "index.json").read_text())
    assert metadata == {"format": 1, "chunks": 6, "bm25": BM25_SETTINGS,
                        "embedder": {"ref": WORDLLAMA, "identity": load_embedder(WORDLLAMA).identity, "dim": 256}}
    assert (out / INDEX_DIR / "chunks.lance").is_dir() and (out / "bm25" / "params.index.json").is_file()


def test_open_reads_every_chunk(index):
    assert (index.embedder_ref, index.chunk_count) == (WORDLLAMA, 6)
    assert index.ids[0] == "kb/billing.md#0" and "kb/faq.jsonl#L2#0" in index.ids
    assert index.vectors.dtype == np.float32 and np.allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)


RETRIEVAL = [
    ("dense", "I can't remember my login, how do I get back in?", "kb/passwords.md"),
    ("dense", "when will my parcel arrive?", "kb/shipping.md"),
    ("dense", "where do I find my monthly bill?", "kb/billing.md"),
    ("dense", "what hours can I talk to a human?", "kb/faq.jsonl#L1"),
    ("dense", "which credit cards do you take?", "kb/billing.md"),
    ("bm25", "reset link expires", "kb/passwords.md"),
    ("bm25", "tracking numbers", "kb/shipping.md"),
    ("bm25", "ZIP archive", "kb/export.html"),
    ("bm25", "PayPal", "kb/billing.md"),
    ("bm25", "Monday to Friday", "kb/faq.jsonl#L1"),
    ("hybrid", "my password reset email never came", "kb/passwords.md"),
    ("hybrid", "how long does international delivery take", "kb/shipping.md"),
    ("hybrid", "change the card you charge every month", "kb/billing.md"),
    ("hybrid", "export my projects with their attachments", "kb/export.html"),
    ("hybrid", "is support open on weekends", "kb/faq.jsonl#L1"),
]


@pytest.mark.parametrize("mode,question,source", RETRIEVAL, ids=[f"{r[0]}: {r[1]}" for r in RETRIEVAL])
def test_finds_the_right_document(index, mode, question, source):
    hits = index.search(question, 2, mode)
    assert hits[0].source == source, hits


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_hits_are_whole_chunks_best_first(index, mode):
    hits = index.search("reset my password by email", 3, mode)
    assert 1 <= len(hits) <= 3 and all(isinstance(h, Hit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for hit in hits:
        assert index.texts[index.ids.index(hit.id)] == hit.text and hit.id.startswith(hit.source + "#")


def test_hybrid_fuses_dense_and_bm25_ranks(index):
    dense = [h.id for h in index.search("card PayPal", 20, "dense")]
    keyword = [h.id for h in index.search("card PayPal", 20, "bm25")]
    fused = {i: 1 / (60 + dense.index(i) + 1) + (1 / (60 + keyword.index(i) + 1) if i in keyword else 0) for i in dense}
    expected = sorted(fused, key=lambda i: (-fused[i], index.ids.index(i)))[:4]
    assert [h.id for h in index.search("card PayPal", 4, "hybrid")] == expected


@pytest.mark.parametrize("query", ["", "   \n\t"])
@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_an_empty_query_finds_nothing(index, query, mode):
    assert index.search(query, 4, mode) == []


def test_a_query_without_bm25_terms_falls_back_to_dense(index):
    for query in ("the and of", "zzqxv"):  # stopwords only; a word no chunk has
        assert index.search(query, 4, "bm25") == []
        assert [h.id for h in index.search(query, 4, "hybrid")] == [h.id for h in index.search(query, 4, "dense")]


def test_tokenize_is_lowercase_words_without_stopwords():
    assert tokenize("The Reset-link, for PayPal_2FA is  EXPIRED!") == ["reset", "link", "paypal", "2fa", "expired"]


def test_a_hostile_query_is_cut_and_stays_fast(index):
    huge = "password reset " * 100_000  # 1.5 MB
    started = time.perf_counter()
    hits = index.search(huge, 4, "hybrid")
    assert time.perf_counter() - started < 1
    assert [h.id for h in hits] == [h.id for h in index.search(huge[:MAX_QUERY_CHARS], 4, "hybrid")]


def test_top_k_larger_than_the_index_returns_everything(index):
    assert len(index.search("billing", 1_000_000, "dense")) == 6


@pytest.mark.parametrize("top_k,mode", [(0, "dense"), (4, "sparse")])
def test_bad_arguments_are_programming_errors(index, top_k, mode):
    with pytest.raises(ValueError):
        index.search("q", top_k, mode)


def test_search_from_many_threads_matches_sequential(index):
    questions = [q for _, q, _ in RETRIEVAL]
    expected = {(q, m): index.search(q, 3, m) for q in questions for m in ("dense", "bm25", "hybrid")}
    results, errors = {}, []

    def worker(offset):
        try:
            for n in range(60):
                key = list(expected)[(offset + n) % len(expected)]
                results.setdefault(key, []).append(index.search(key[0], 3, key[1]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i * 7,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(hits == expected[key] for key, runs in results.items() for hits in runs)


def test_a_changed_document_is_the_only_one_re_embedded(tmp_path, built):
    previous, _ = built
    root = write_help_center(tmp_path / "repo", {"kb/shipping.md": HELP_CENTER["kb/shipping.md"] + "\nWe ship to the EU.\n"})
    chunks = help_center_chunks(root)
    embedder = CountingEmbedder(load_embedder(WORDLLAMA))
    stats = build_index(tmp_path / "next", chunks, embedder, previous_dir=previous)
    changed = [c.text for c in chunks if c.source == "kb/shipping.md"]
    assert (stats.embedded, stats.reused, stats.chunks) == (len(changed), 6 - len(changed), 6)
    assert embedder.texts == changed
    rebuilt, old = Index.open(tmp_path / "next"), Index.open(previous)
    same = [i for i, chunk_id in enumerate(rebuilt.ids) if not chunk_id.startswith("kb/shipping.md")]
    assert np.array_equal(rebuilt.vectors[same], old.vectors[same])
    assert rebuilt.search("do you deliver to Europe?", 1, "dense")[0].source == "kb/shipping.md"


@pytest.mark.parametrize("spoil", ["other embedder", "unreadable table", "not an index"])
def test_an_unusable_previous_index_means_embedding_everything(tmp_path, built, spoil):
    previous = tmp_path / "previous"
    shutil.copytree(built[0], previous)
    if spoil == "other embedder":
        metadata = json.loads((previous / "index.json").read_text())
        metadata["embedder"]["identity"] = "builtin:wordllama-256@wordllama==0.0.1"
        (previous / "index.json").write_text(json.dumps(metadata))
    elif spoil == "unreadable table":
        shutil.rmtree(previous / INDEX_DIR)
        (previous / INDEX_DIR).write_text("garbage")
    else:
        (previous / "index.json").write_text("{not json")
    stats = build_index(tmp_path / "out", help_center_chunks(write_help_center(tmp_path / "repo")),
                        load_embedder(WORDLLAMA), previous_dir=previous)
    assert (stats.embedded, stats.reused) == (6, 0)


def test_zero_chunks_is_an_error(tmp_path):
    with pytest.raises(KnowledgeBaseError, match="the knowledge base has zero chunks"):
        build_index(tmp_path, [], load_embedder(WORDLLAMA))


def test_a_corpus_of_stopwords_still_builds(tmp_path, built):
    chunks = [chunk_document(doc, 100, 0)[0] for doc in read_documents(
        write_help_center(tmp_path, {"kb/faq.jsonl": '{"text": "the and of"}\n{"text": "to be or not"}\n'}), "kb/*.jsonl")]
    build_index(tmp_path / "out", chunks, load_embedder(WORDLLAMA))
    assert Index.open(tmp_path / "out").search("billing", 4, "bm25") == []


class BrokenEmbedder:
    ref, dim, identity = "fake:broken", 4, "fake:broken@1"

    def embed(self, texts):
        return np.full((len(texts), self.dim), np.nan, dtype=np.float32)


def test_an_embedder_returning_garbage_is_an_error(tmp_path, built):
    chunks = help_center_chunks(write_help_center(tmp_path / "repo"))
    with pytest.raises(KnowledgeBaseError, match=r"fake:broken returned vectors of shape \(6, 4\) \(or non-finite"):
        build_index(tmp_path / "out", chunks, BrokenEmbedder())


def spoil_metadata(path, **changes):
    metadata = json.loads((path / "index.json").read_text())
    for key, value in changes.items():
        if key == "identity":
            metadata["embedder"]["identity"] = value
        else:
            metadata[key] = value
    (path / "index.json").write_text(json.dumps(metadata))


def write_metadata(path, metadata):
    (path / "index.json").write_text(json.dumps(metadata))


OPEN_FAILURES = [
    ("missing directory", lambda p: shutil.rmtree(p), r"opening the index at .* failed: FileNotFoundError"),
    ("newer format", lambda p: spoil_metadata(p, format=2), "index.json says format 2; this engine reads format 1"),
    ("other embedder version", lambda p: spoil_metadata(p, identity="builtin:wordllama-256@wordllama==9"),
     "was built with builtin:wordllama-256@wordllama==9 but this process has builtin:wordllama-256@wordllama=="),
    ("chunk count disagrees", lambda p: spoil_metadata(p, chunks=7), "is inconsistent: index.json says 7 chunks"),
    ("table gone", lambda p: shutil.rmtree(p / INDEX_DIR), "opening the index at .* failed: "),
    ("bm25 gone", lambda p: shutil.rmtree(p / "bm25"), "bm25/ is missing or empty"),
    ("metadata not an object", lambda p: (p / "index.json").write_text("[1]"), "index.json is not a JSON object"),
    ("metadata not JSON", lambda p: (p / "index.json").write_text("{"), "opening the index at .* failed: JSONDecodeError"),
    ("embedder missing", lambda p: write_metadata(p, {"format": 1, "chunks": 6}),
     r"index.json is corrupt: embedder.dim is None, not a positive integer; rebuild"),
    ("embedder not an object", lambda p: spoil_metadata(p, embedder="builtin:wordllama-256"),
     r"index.json is corrupt: embedder.dim is None, not a positive integer"),
    ("chunks a string", lambda p: spoil_metadata(p, chunks="6"), r"index.json is corrupt: chunks is '6', not a positive"),
    ("chunks a boolean", lambda p: spoil_metadata(p, chunks=True), r"index.json is corrupt: chunks is True, not a positive"),
    ("dim zero", lambda p: spoil_metadata(p, embedder={"ref": "r", "identity": "i", "dim": 0}),
     r"index.json is corrupt: embedder.dim is 0, not a positive integer"),
    ("ref a number", lambda p: spoil_metadata(p, embedder={"ref": 3, "identity": "i", "dim": 256}),
     r"index.json is corrupt: embedder.ref is 3, not a string"),
    ("identity a list", lambda p: spoil_metadata(p, embedder={"ref": "r", "identity": ["x" * 100], "dim": 256}),
     r"index.json is corrupt: embedder.identity is \['x{38}, not a string"),  # the value is cut at 40 characters
]


@pytest.mark.parametrize("spoil,message", [f[1:] for f in OPEN_FAILURES], ids=[f[0] for f in OPEN_FAILURES])
def test_open_failures_are_knowledge_base_errors(tmp_path, built, spoil, message):
    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    spoil(copy)
    with pytest.raises(KnowledgeBaseError, match=message):
        Index.open(copy)


def test_opens_directly_from_s3(s3_store, built, index):
    import fsspec

    url = f"{s3_store}/objects/0123abcd"
    fsspec.filesystem("s3").put(str(built[0]), url, recursive=True)
    remote = Index.open(url)
    assert remote.chunk_count == 6
    for mode, question, source in RETRIEVAL:
        assert remote.search(question, 3, mode) == index.search(question, 3, mode)


def test_a_missing_s3_index_is_a_knowledge_base_error(s3_store):
    with pytest.raises(KnowledgeBaseError, match="opening the index at s3://"):
        Index.open(f"{s3_store}/objects/nothing-here")
