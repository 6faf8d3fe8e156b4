"""Split a document into overlapping chunks small enough to embed and to quote in a prompt.

A chunk should be a passage a reader would quote, so text is cut at the coarsest boundary
that makes the pieces fit: paragraphs (and before a Markdown heading), then lines, then
sentences, then words; only a single word longer than `max_chars` is cut mid-word. Pieces
are packed greedily into chunks of at most `max_chars`. Each chunk after the first starts
with about `overlap` characters of the one before (cut at a sentence or word start), so a
fact spanning the cut is whole in one of them — except at a heading: a heading starts a new
chunk unless it and the paragraph after it fit in the current one, so a section's title
stays with its text. Pure and deterministic: the same document always gives the same chunks.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from dataclasses import dataclass

from .documents import Document

# Coarsest first. Each keeps its separator at the end of the piece before it.
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*|\n(?=#{1,6}\s)"),  # paragraph break, or the line break before a heading
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?])\s+"),
    re.compile(r"\s+"),
)
_HEADING = re.compile(r"\s*#{1,6}\s")
_SENTENCE_GAP = re.compile(r"(?<=[.!?])\s+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    id: str  # f"{source}#{n}", n = 0-based chunk number within the document
    source: str
    text: str
    sha256: str  # of text


def chunk_document(doc: Document, max_chars: int, overlap: int) -> list[Chunk]:
    if max_chars < 1 or not 0 <= overlap < max_chars:
        raise ValueError(f"need max_chars >= 1 and 0 <= overlap < max_chars, got {max_chars=}, {overlap=}")
    texts = _pack(_pieces(doc.text, max_chars, 0), max_chars, overlap)
    return [Chunk(f"{doc.source}#{n}", doc.source, text, hashlib.sha256(text.encode()).hexdigest())
            for n, text in enumerate(texts)]


def _pieces(text: str, max_chars: int, level: int) -> list[str]:
    """`text` cut at boundaries of `level` and finer until every piece (less trailing space) fits."""
    if len(text.rstrip()) <= max_chars:
        return [text]
    if level == len(_BOUNDARIES):
        body, space = text.rstrip(), text[len(text.rstrip()):]
        cuts = [body[i:i + max_chars] for i in range(0, len(body), max_chars)]
        return cuts[:-1] + [cuts[-1] + space]
    return [small for piece in _split_after(text, _BOUNDARIES[level]) for small in _pieces(piece, max_chars, level + 1)]


def _split_after(text: str, boundary: re.Pattern) -> list[str]:
    pieces, start = [], 0
    for match in boundary.finditer(text):
        if match.end() > start:
            pieces.append(text[start:match.end()])
            start = match.end()
    return pieces + [text[start:]] if start < len(text) else pieces


def _pack(pieces: list[str], max_chars: int, overlap: int) -> list[str]:
    queue = deque(p for p in pieces if p.strip())
    chunks: list[str] = []
    current: list[str] = []
    length = 0  # of "".join(current)
    while queue:
        piece = queue.popleft()
        size = len(piece.rstrip())  # a piece's trailing space does not count if it ends the chunk
        if current and length + size > max_chars and all(_HEADING.match(p) for p in current):
            parts = _split_to_fit(piece, max_chars - length)
            if parts:  # a heading alone is no passage: take as much of its section as fits
                queue.extendleft(reversed(parts))
                continue
        is_heading = bool(_HEADING.match(piece))
        if current and (length + size > max_chars or is_heading and length + _with_next(piece, queue) > max_chars):
            text = "".join(current).strip()
            chunks.append(text)
            gap = current[-1][len(current[-1].rstrip()):] or " "  # what separated them in the document
            tail = "" if is_heading else _overlap_tail(text, min(overlap, max_chars - size - len(gap)))
            current = [tail + gap] if tail else []
            length = len(current[0]) if current else 0
        current.append(piece)
        length += len(piece)
    if current:
        chunks.append("".join(current).strip())
    return chunks


def _split_to_fit(piece: str, room: int) -> list[str] | None:
    """`piece` cut at its coarsest boundary finer than a paragraph whose first part fits in `room`."""
    for boundary in _BOUNDARIES[1:]:
        parts = _split_after(piece, boundary)
        if len(parts) > 1 and len(parts[0].rstrip()) <= room:
            return parts
    return None


def _with_next(heading: str, queue: deque[str]) -> int:
    """Characters a heading needs to stay with the start of its section."""
    return len(heading) + (len(queue[0].rstrip()) if queue else 0)


def _overlap_tail(text: str, budget: int) -> str:
    """The longest end of `text` of at most `budget` characters that starts a sentence, else a word."""
    if budget <= 0:
        return ""
    if budget >= len(text):
        return text
    start = len(text) - budget
    for boundary in (_SENTENCE_GAP, _SPACE):
        match = boundary.search(text, start - 1)
        if match and (boundary is _SPACE or len(text) - match.end() >= budget // 2):
            return text[match.end():]
    return ""
