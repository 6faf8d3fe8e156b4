"""Read a knowledge base's files as plain-text documents.

The KnowledgeBase controller calls `read_documents` with the spec's glob. Files are matched
by `paths.match_files`, so a pattern cannot read outside the repository (a symlink escaping
it refuses the pattern), and in sorted order, so chunk ids are the same on every machine.

Markdown and text are read as UTF-8; HTML keeps its visible text, with headings turned into
Markdown headings so the chunker can keep them with their section; PDF is the text of its
pages; JSONL is one document per line, named `path#L<line>`. Every problem in every file is
collected and raised once. Each file is size-checked before it is read, and the source as a
whole is capped in files, bytes, JSONL rows and PDF pages, so memory and time stay bounded
whatever the repository holds. Files under the engine's own folders (state dir, local
artifact store) are never read: a `**/*.md` source must not ingest evaluation reports.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import KnowledgeBaseError
from ..paths import excluding, match_files
from .problems import Problems


# Caps on one source. A knowledge base is held in memory while it is chunked and embedded, so
# these bound that peak; each is well past a real corpus (the benchmarks use 10,000 chunks), and
# a source beyond them is nearly always a glob that caught a vendored or generated tree.
MAX_FILES = 10_000  # one open and stat each, before anything is read
MAX_TOTAL_BYTES = 1024 * 1024 * 1024  # 1 GiB of files is a few GiB as Python strings and chunks
MAX_JSONL_ROWS = 1_000_000  # each row is a document object; short rows cost more in objects than in bytes
MAX_PDF_PAGES = 2_000  # page objects and their text are parsed one by one; a longer PDF is a book to split
_NARROW = "narrow source.path (a more specific glob or folder)"


@dataclass(frozen=True)
class Document:
    source: str  # repository-relative POSIX path; "path#L<line>" for a JSONL row (1-based)
    text: str
    sha256: str  # of text


@dataclass
class _Reading:
    """What every file of one source shares while it is read."""

    text_field: str
    max_bytes: int
    problems: Problems
    jsonl_rows: int = 0  # so far, across the source's files


def make_document(source: str, text: str) -> Document:
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise KnowledgeBaseError("the document is empty")
    return Document(source, text, hashlib.sha256(text.encode()).hexdigest())


def read_documents(root: Path, pattern: str, text_field: str = "text", max_bytes: int = 50_000_000,
                   skip_dirs: Sequence[Path] = ()) -> list[Document]:
    """The documents of every file `pattern` names under `root`, except files under `skip_dirs`
    (the engine's own output); one error listing every bad file and line."""
    files = _source_files(root, pattern, skip_dirs)
    _check_volume(pattern, files)
    reading = _Reading(text_field, max_bytes, Problems("reading knowledge base documents"))
    documents: list[Document] = []
    for path in files:
        documents.extend(_read_file(path, path.relative_to(root).as_posix(), reading))
        if reading.jsonl_rows > MAX_JSONL_ROWS:
            break  # the cap is already one of the problems; reading on only costs time
    reading.problems.raise_if_any()
    return documents


def _source_files(root: Path, pattern: str, skip_dirs: Sequence[Path]) -> list[Path]:
    matches = match_files(root, pattern)
    if matches.problem:
        raise KnowledgeBaseError(matches.problem)
    files = excluding(matches.files, skip_dirs)
    if not files:
        engine_only = " (only files of the engine's own state, which are never read)" if matches.files else ""
        raise KnowledgeBaseError(f"'{pattern}' matches no file under {root}{engine_only}; check the knowledge "
                                 "base's path")
    return files


def _check_volume(pattern: str, files: list[Path]) -> None:
    """Refuse a source too large to hold in memory before reading any of it."""
    if len(files) > MAX_FILES:
        raise KnowledgeBaseError(f"'{pattern}' matches {len(files):,} files, over the limit of {MAX_FILES:,} "
                                 f"(MAX_FILES) for one knowledge base; {_NARROW}, or split it into several")
    total = sum(_size(path) for path in files)
    if total > MAX_TOTAL_BYTES:
        raise KnowledgeBaseError(f"'{pattern}' matches {total:,} bytes, over the limit of {MAX_TOTAL_BYTES:,} "
                                 f"(MAX_TOTAL_BYTES) for one knowledge base; {_NARROW}, or split it into several")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # reading it reports why
        return 0


def _read_file(path: Path, name: str, reading: _Reading) -> list[Document]:
    suffix = path.suffix.lower()
    try:
        if suffix not in _TYPES:
            raise KnowledgeBaseError(f"unsupported file type '{suffix or path.name}'; a knowledge base reads "
                                     f"{', '.join(_TYPES)}")
        size = path.stat().st_size
        if size > reading.max_bytes:
            raise KnowledgeBaseError(f"{size:,} bytes is over the {reading.max_bytes:,}-byte limit for one file; "
                                     "split it")
        if suffix == ".jsonl":
            return _jsonl_documents(path, name, reading)
        text = _pdf_text(path, reading.max_bytes) if suffix == ".pdf" else _EXTRACTORS[suffix](path)
        return [make_document(name, text)]
    except KnowledgeBaseError as exc:
        reading.problems.add(f"{name}: {exc}")
    except OSError as exc:  # unreadable (permissions) or gone since the glob ran
        reading.problems.add(f"{name}: cannot read it: {exc.strerror or exc}")
    return []


def decode_text(data: bytes) -> str:
    if b"\x00" in data:
        raise KnowledgeBaseError("not a text file (it contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnowledgeBaseError(f"not a text file: not UTF-8 (invalid byte at offset {exc.start})") from exc


def _plain_text(path: Path) -> str:
    return decode_text(path.read_bytes())


_HIDDEN = "//script|//style|//noscript|//template|//head"
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset({"p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "ul", "ol", "li",
                     "dl", "dt", "dd", "table", "tr", "blockquote", "pre", "br", "hr", "figure", "figcaption", "form",
                     *_HEADINGS})


def _html_text(path: Path) -> str:
    import lxml.etree
    import lxml.html

    text = decode_text(path.read_bytes())
    if not text.strip():
        return text
    try:
        tree = lxml.html.document_fromstring(text)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise KnowledgeBaseError(f"cannot parse HTML: {exc}") from exc
    for hidden in tree.xpath(_HIDDEN):
        hidden.drop_tree()  # keeps the tail, which is visible text after the element
    for element in tree.iter():
        _mark_layout(element)
    visible = re.sub(r" *\n *", "\n", tree.text_content())
    return re.sub(r"\n{3,}", "\n\n", visible)


def _mark_layout(element) -> None:
    """Collapse source whitespace, then put paragraph breaks around blocks and `#` before headings."""
    element.text = re.sub(r"\s+", " ", element.text) if element.text else element.text
    element.tail = re.sub(r"\s+", " ", element.tail) if element.tail else element.tail
    tag = element.tag if isinstance(element.tag, str) else ""
    if tag in _BLOCKS:
        heading = "#" * _HEADINGS[tag] + " " if tag in _HEADINGS else ""
        element.text = "\n\n" + heading + (element.text or "")
        element.tail = "\n\n" + (element.tail or "")


def _pdf_text(path: Path, max_bytes: int) -> str:
    """The pages' text; an error, as for any over-size file, past MAX_PDF_PAGES or `max_bytes` of text
    (a small PDF can inflate to far more text than its size, so the file's size check is not enough)."""
    from pypdf import PdfReader

    try:
        pages = PdfReader(path).pages
        if len(pages) > MAX_PDF_PAGES:
            raise KnowledgeBaseError(f"{len(pages):,} pages is over the {MAX_PDF_PAGES:,}-page limit (MAX_PDF_PAGES) "
                                     "for one PDF; split it")
        texts = _page_texts(pages, max_bytes)
    except KnowledgeBaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises its own errors and bare ValueError/KeyError on broken files
        raise KnowledgeBaseError(f"cannot read PDF: {type(exc).__name__}: {exc}") from exc
    text = "\n\n".join(texts)
    if not text:
        raise KnowledgeBaseError(f"no extractable text in {len(pages)} page(s) (a scanned PDF? run OCR on it first)")
    return text


def _page_texts(pages, max_bytes: int) -> list[str]:
    """Each non-blank page's text, stopping at the page that takes the total past `max_bytes`."""
    texts: list[str] = []
    total = 0
    for number, page in enumerate(pages, start=1):
        text = (page.extract_text() or "").strip()
        total += len(text.encode())
        if total > max_bytes:
            raise KnowledgeBaseError(f"its text is over the {max_bytes:,}-byte limit for one file by page {number}; "
                                     "split it")
        if text:
            texts.append(text)
    return texts


_EXTRACTORS = {".md": _plain_text, ".markdown": _plain_text, ".txt": _plain_text, ".html": _html_text,
               ".htm": _html_text}
_TYPES = (*_EXTRACTORS, ".pdf", ".jsonl")


def _jsonl_documents(path: Path, name: str, reading: _Reading) -> list[Document]:
    documents: list[Document] = []
    rows = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = decode_text(raw)
            except KnowledgeBaseError as exc:
                reading.problems.add(f"{name}:{number}: {exc}")
                return []  # a binary file is one problem, not one per line
            if not line.strip():
                continue
            rows += 1
            _count_row(reading, number)
            try:
                documents.append(make_document(f"{name}#L{number}", _row_text(line, reading.text_field)))
            except KnowledgeBaseError as exc:
                reading.problems.add(f"{name}:{number}: {exc}")
    if not rows:
        raise KnowledgeBaseError("the file has no rows")
    return documents


def _count_row(reading: _Reading, number: int) -> None:
    reading.jsonl_rows += 1
    if reading.jsonl_rows > MAX_JSONL_ROWS:
        raise KnowledgeBaseError(f"line {number} takes the source over {MAX_JSONL_ROWS:,} JSONL rows "
                                 f"(MAX_JSONL_ROWS) for one knowledge base; {_NARROW}, or split it into several")


def json_object(line: str) -> dict:
    """One JSONL line as an object, or a KnowledgeBaseError saying what is wrong with it."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as exc:  # ValueError also covers JSONDecodeError
        raise KnowledgeBaseError(f"not valid JSON ({_json_reason(exc)}); each line must be one object") from exc
    if not isinstance(row, dict):
        raise KnowledgeBaseError(f"expected a JSON object, got {type(row).__name__}")
    return row


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    # json.loads raises a bare ValueError for an integer past Python's digit limit (which keeps parsing linear)
    return f"a number longer than {sys.get_int_max_str_digits():,} digits"


def _row_text(line: str, text_field: str) -> str:
    row = json_object(line)
    text = row.get(text_field)
    if not isinstance(text, str):
        raise KnowledgeBaseError(f"no string field '{text_field}' (fields: {', '.join(sorted(row)[:10]) or 'none'})")
    return text
