"""Chunking is pure: each scenario is (text, max_chars, overlap) → the chunks a reader would quote."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_engine.knowledge.chunking import Chunk, chunk_document
from llmops_engine.knowledge.documents import make_document

SCENARIOS = [
    ("a short document is one chunk", "Refunds take 14 days.", 100, 10, ["Refunds take 14 days."]),
    ("paragraphs first", "First paragraph here.\n\nSecond paragraph here.", 30, 0,
     ["First paragraph here.", "Second paragraph here."]),
    ("then lines", "line one\nline two\nline three", 20, 0, ["line one\nline two", "line three"]),
    ("then sentences", "One two. Three four. Five six.", 20, 0, ["One two. Three four.", "Five six."]),
    ("then words", "alpha beta gamma delta epsilon zeta", 12, 0, ["alpha beta", "gamma delta", "epsilon zeta"]),
    ("only a word longer than max_chars is cut", "x" * 25, 10, 0, ["x" * 10, "x" * 10, "x" * 5]),
    ("overlap starts at a word of the previous chunk", "The cat sat. The dog ran far away. Birds sing at dawn. Fish swim.",
     40, 15, ["The cat sat. The dog ran far away.", "ran far away. Birds sing at dawn.", "sing at dawn. Fish swim."]),
    ("overlap prefers a sentence start to a longer tail", "Aa bb cc. Dd ee. Ff gg.", 20, 12,
     ["Aa bb cc. Dd ee.", "Dd ee. Ff gg."]),
    ("overlap shrinks so the next piece still fits", "Aa bb. Cc dd ee. Ff gg hh ii jj kk.", 24, 12,
     ["Aa bb. Cc dd ee.", "ee. Ff gg hh ii jj kk."]),
    ("a heading moves to the chunk of its section, with no overlap before it",
     "Intro text is here.\n\n## Refunds\n\nRefunds take fourteen days.", 45, 10,
     ["Intro text is here.", "## Refunds\n\nRefunds take fourteen days."]),
    ("a heading takes the start of a section too long for one chunk",
     "## Refunds\n\nRefunds take fourteen days. Contact support first. Keep the receipt.", 50, 0,
     ["## Refunds\n\nRefunds take fourteen days.", "Contact support first. Keep the receipt."]),
    ("a heading with its text on the next line stays with it", "Intro.\n# Billing\nInvoices monthly.", 30, 0,
     ["Intro.", "# Billing\nInvoices monthly."]),
    ("a heading and section that fit stay in the current chunk", "Intro.\n\n## A\n\nShort.", 100, 10,
     ["Intro.\n\n## A\n\nShort."]),
]


@pytest.mark.parametrize("text,max_chars,overlap,expected", [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_chunk_boundaries(text, max_chars, overlap, expected):
    assert [c.text for c in chunk_document(make_document("kb/a.md", text), max_chars, overlap)] == expected


def test_chunks_are_numbered_and_hashed():
    chunks = chunk_document(make_document("kb/faq.jsonl#L3", "One. Two. Three."), 6, 0)
    assert [c.id for c in chunks] == ["kb/faq.jsonl#L3#0", "kb/faq.jsonl#L3#1", "kb/faq.jsonl#L3#2"]
    assert all(isinstance(c, Chunk) and c.source == "kb/faq.jsonl#L3" and len(c.sha256) == 64 for c in chunks)
    assert chunks[0].sha256 != chunks[1].sha256


@pytest.mark.parametrize("max_chars,overlap", [(10, 10), (10, 11), (0, 0), (10, -1)])
def test_overlap_must_be_below_max_chars(max_chars, overlap):
    with pytest.raises(ValueError, match="overlap < max_chars"):
        chunk_document(make_document("a", "text"), max_chars, overlap)


TEXT = st.lists(st.sampled_from(["alpha", "beta", "gamma.", "Delta!", "x" * 40, " ", "\n", "\n\n", "# Head\n", "## Sub "]),
                min_size=1, max_size=80).map(" ".join).filter(str.strip)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, max_chars=st.integers(1, 120), overlap_share=st.floats(0, 0.9))
def test_chunks_fit_are_never_empty_and_cover_the_text(text, max_chars, overlap_share):
    overlap = int(max_chars * overlap_share)
    doc = make_document("d", text)
    chunks = chunk_document(doc, max_chars, overlap)
    assert chunks == chunk_document(doc, max_chars, overlap)  # deterministic
    assert all(c.text and c.text == c.text.strip() and len(c.text) <= max_chars for c in chunks)
    squashed = re.sub(r"\s", "", doc.text)
    if overlap == 0:
        assert "".join(re.sub(r"\s", "", c.text) for c in chunks) == squashed
    else:
        assert all(re.sub(r"\s", "", c.text) in squashed for c in chunks)
