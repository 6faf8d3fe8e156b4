"""Read a knowledge base's files as plain-text documents.

The KnowledgeBase controller calls `read_documents` with the spec's glob. Files are matched
by `paths.match_files`, so a pattern cannot read outside the repository (a symlink escaping
it refuses the pattern), and in sorted order, so chunk ids are the same on every machine.

Markdown and text are read as UTF-8; HTML keeps its visible text, with headings turned into
Markdown headings so the chunker can keep them with their section; PDF is the text of its
pages; JSONL is one document per line, named `path#L<line>`. Every problem in every file is
collected and raised once. Each file is size-checked before it is read, so memory and time
stay bounded whatever the repository holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import KnowledgeBaseError
from ..paths import match_files
from .problems import Problems


@dataclass(frozen=True)
class Document:
    source: str  # repository-relative POSIX path; "path#L<line>" for a JSONL row (1-based)
    text: str
    sha256: str  # of text


def make_document(source: str, text: str) -> Document:
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise KnowledgeBaseError("the document is empty")
    return Document(source, text, hashlib.sha256(text.encode()).hexdigest())


def read_documents(root: Path, pattern: str, text_field: str = "text", max_bytes: int = 50_000_000) -> list[Document]:
    """The documents of every file `pattern` names under `root`; one error listing every bad file and line."""
    matches = match_files(root, pattern)
    if matches.problem:
        raise KnowledgeBaseError(matches.problem)
    if not matches.files:
        raise KnowledgeBaseError(f"'{pattern}' matches no file under {root}; check the knowledge base's path")
    problems = Problems("reading knowledge base documents")
    documents: list[Document] = []
    for path in matches.files:
        documents.extend(_read_file(path, path.relative_to(root).as_posix(), text_field, max_bytes, problems))
    problems.raise_if_any()
    return documents


def _read_file(path: Path, name: str, text_field: str, max_bytes: int, problems: Problems) -> list[Document]:
    suffix = path.suffix.lower()
    try:
        if suffix != ".jsonl" and suffix not in _EXTRACTORS:
            raise KnowledgeBaseError(f"unsupported file type '{suffix or path.name}'; a knowledge base reads "
                                     f"{', '.join([*_EXTRACTORS, '.jsonl'])}")
        size = path.stat().st_size
        if size > max_bytes:
            raise KnowledgeBaseError(f"{size:,} bytes is over the {max_bytes:,}-byte limit for one file; split it")
        if suffix == ".jsonl":
            return _jsonl_documents(path, name, text_field, problems)
        return [make_document(name, _EXTRACTORS[suffix](path))]
    except KnowledgeBaseError as exc:
        problems.add(f"{name}: {exc}")
    except OSError as exc:  # unreadable (permissions) or gone since the glob ran
        problems.add(f"{name}: cannot read it: {exc.strerror or exc}")
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


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except Exception as exc:  # noqa: BLE001 - pypdf raises its own errors and bare ValueError/KeyError on broken files
        raise KnowledgeBaseError(f"cannot read PDF: {type(exc).__name__}: {exc}") from exc
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise KnowledgeBaseError(f"no extractable text in {len(pages)} page(s) (a scanned PDF? run OCR on it first)")
    return text


_EXTRACTORS = {".md": _plain_text, ".markdown": _plain_text, ".txt": _plain_text, ".html": _html_text,
               ".htm": _html_text, ".pdf": _pdf_text}


def _jsonl_documents(path: Path, name: str, text_field: str, problems: Problems) -> list[Document]:
    documents: list[Document] = []
    rows = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = decode_text(raw)
            except KnowledgeBaseError as exc:
                problems.add(f"{name}:{number}: {exc}")
                return []  # a binary file is one problem, not one per line
            if not line.strip():
                continue
            rows += 1
            try:
                documents.append(make_document(f"{name}#L{number}", _row_text(line, text_field)))
            except KnowledgeBaseError as exc:
                problems.add(f"{name}:{number}: {exc}")
    if not rows:
        raise KnowledgeBaseError("the file has no rows")
    return documents


def json_object(line: str) -> dict:
    """One JSONL line as an object, or a KnowledgeBaseError saying what is wrong with it."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise KnowledgeBaseError(f"not valid JSON ({reason}); each line must be one object") from exc
    if not isinstance(row, dict):
        raise KnowledgeBaseError(f"expected a JSON object, got {type(row).__name__}")
    return row


def _row_text(line: str, text_field: str) -> str:
    row = json_object(line)
    text = row.get(text_field)
    if not isinstance(text, str):
        raise KnowledgeBaseError(f"no string field '{text_field}' (fields: {', '.join(sorted(row)[:10]) or 'none'})")
    return text
