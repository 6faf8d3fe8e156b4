"""Reading knowledge base files: every supported type, and every bad input as one clear error."""

import time
import zlib

import pytest

from llmops_engine.errors import KnowledgeBaseError
from llmops_engine.knowledge import documents as documents_module
from llmops_engine.knowledge.documents import Document, read_documents


def pdf_bytes(pages: list[str], compress: bool = False) -> bytes:
    """A minimal valid PDF, written by hand: one Helvetica text line per page (Flate-compressed
    content streams with `compress`, so the text can be far larger than the file)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [" + " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
               + f"] /Count {len(pages)} >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        stream, filter_ = (zlib.compress(stream), b" /Filter /FlateDecode") if compress else (stream, b"")
        objects.append("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>")
        objects.append(f"<< /Length {len(stream)}".encode() + filter_ + b" >>\nstream\n" + stream + b"\nendstream")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        body = body if isinstance(body, bytes) else body.encode()
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write(root, files: dict):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


HTML = """<html><head><title>Tab title</title><style>.x{color:red}</style><script>var secret = 1;</script></head>
<body><h1>Refund <a href="#">policy</a></h1><p>Refunds are   issued
within 14&nbsp;days.</p><div>Contact <b>support</b>.</div><noscript>enable js</noscript><!-- a comment -->
<ul><li>Annual plans</li><li>Monthly plans</li></ul></body></html>"""

READABLE = [
    ("markdown", {"kb/a.md": "# Title\n\nBody text.\n"}, [("kb/a.md", "# Title\n\nBody text.")]),
    (".markdown and .txt", {"kb/a.markdown": "one", "kb/b.txt": "two"}, [("kb/a.markdown", "one"), ("kb/b.txt", "two")]),
    ("CRLF and a BOM are normalized", {"kb/a.txt": b"\xef\xbb\xbfline one\r\nline two\r\n"},
     [("kb/a.txt", "line one\nline two")]),
    ("HTML keeps visible text, headings and paragraphs", {"kb/a.html": HTML},
     [("kb/a.html", "# Refund policy\n\nRefunds are issued within 14 days.\n\nContact support.\n\nAnnual plans\n\n"
                    "Monthly plans")]),
    ("PDF pages are joined", {"kb/a.pdf": pdf_bytes(["Refunds take 14 days.", "Call us anytime."])},
     [("kb/a.pdf", "Refunds take 14 days.\n\nCall us anytime.")]),
    ("JSONL: one document per row, named by line", {"kb/faq.jsonl": '{"text": "first"}\n\n{"text": "third", "x": 1}\n'},
     [("kb/faq.jsonl#L1", "first"), ("kb/faq.jsonl#L3", "third")]),
]


@pytest.mark.parametrize("files,expected", [r[1:] for r in READABLE], ids=[r[0] for r in READABLE])
def test_reads_each_supported_type(tmp_path, files, expected):
    documents = read_documents(write(tmp_path, files), "kb/*")
    assert [(d.source, d.text) for d in documents] == expected
    assert all(isinstance(d, Document) and len(d.sha256) == 64 for d in documents)


def test_glob_with_double_star_is_sorted_and_repo_relative(tmp_path):
    write(tmp_path, {"kb/z.md": "z", "kb/sub/deeper/a.md": "a", "kb/b.md": "b", "other/c.md": "c"})
    assert [d.source for d in read_documents(tmp_path, "kb/**/*.md")] == ["kb/b.md", "kb/sub/deeper/a.md", "kb/z.md"]


def test_jsonl_reads_the_named_text_field(tmp_path):
    write(tmp_path, {"kb/rows.jsonl": '{"body": "hello", "text": 3}\n'})
    assert read_documents(tmp_path, "kb/rows.jsonl", text_field="body")[0].text == "hello"


BAD = [
    ("empty file", {"kb/empty.md": ""}, "kb/empty.md: the document is empty"),
    ("whitespace only", {"kb/blank.txt": " \n\t\n"}, "kb/blank.txt: the document is empty"),
    ("NUL bytes", {"kb/bin.txt": b"abc\x00def"}, "kb/bin.txt: not a text file (it contains NUL bytes)"),
    ("not UTF-8", {"kb/latin1.md": b"caf\xe9 au lait"}, "kb/latin1.md: not a text file: not UTF-8 (invalid byte at offset 3)"),
    ("HTML with no visible text", {"kb/a.html": "<html><script>x()</script></html>"}, "kb/a.html: the document is empty"),
    ("truncated PDF", {"kb/cut.pdf": pdf_bytes(["x"])[:60]}, "kb/cut.pdf: cannot read PDF: "),
    ("garbage PDF", {"kb/junk.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 4}, "kb/junk.pdf: cannot read PDF: "),
    ("PDF without text", {"kb/scan.pdf": pdf_bytes([""])}, "kb/scan.pdf: no extractable text in 1 page(s)"),
    ("unsupported suffix", {"kb/logo.png": b"\x89PNG"}, "kb/logo.png: unsupported file type '.png'"),
    ("no suffix", {"kb/README": "x"}, "kb/README: unsupported file type 'README'"),
    ("JSONL bad JSON", {"kb/r.jsonl": '{"text": "ok"}\n{"text": \n'}, "kb/r.jsonl:2: not valid JSON ("),
    ("JSONL missing field", {"kb/r.jsonl": '{"body": "x"}\n'}, "kb/r.jsonl:1: no string field 'text' (fields: body)"),
    ("JSONL field not a string", {"kb/r.jsonl": '{"text": 3}\n'}, "kb/r.jsonl:1: no string field 'text'"),
    ("JSONL empty text", {"kb/r.jsonl": '{"text": "  "}\n'}, "kb/r.jsonl:1: the document is empty"),
    ("JSONL not an object", {"kb/r.jsonl": '["text"]\n'}, "kb/r.jsonl:1: expected a JSON object, got list"),
    ("JSONL integer past the digit limit", {"kb/r.jsonl": '{"text": ' + "7" * 5001 + "}\n"},
     "kb/r.jsonl:1: not valid JSON (a number longer than 4,300 digits); each line must be one object"),
    ("JSONL deeply nested", {"kb/r.jsonl": "[" * 100_000 + "]" * 100_000 + "\n"}, "kb/r.jsonl:1: not valid JSON"),
    ("JSONL binary line", {"kb/r.jsonl": b'{"text": "a"}\n\x00\x01\n'}, "kb/r.jsonl:2: not a text file"),
    ("JSONL with no rows", {"kb/r.jsonl": "\n\n"}, "kb/r.jsonl: the file has no rows"),
]


@pytest.mark.parametrize("files,message", [r[1:] for r in BAD], ids=[r[0] for r in BAD])
def test_each_bad_input_is_one_located_problem(tmp_path, files, message):
    with pytest.raises(KnowledgeBaseError) as raised:
        read_documents(write(tmp_path, files), "kb/*")
    header, *lines = str(raised.value).splitlines()
    assert header == "1 problem reading knowledge base documents:"
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_every_problem_in_every_file_is_raised_at_once(tmp_path):
    write(tmp_path, {"kb/a.md": "", "kb/b.md": "fine", "kb/c.png": b"x",
                     "kb/d.jsonl": '{"text": "ok"}\nnot json\n{"other": 1}\n'})
    with pytest.raises(KnowledgeBaseError) as raised:
        read_documents(tmp_path, "kb/*")
    assert str(raised.value).splitlines()[1:] == [
        "kb/a.md: the document is empty",
        "kb/c.png: unsupported file type '.png'; a knowledge base reads .md, .markdown, .txt, .html, .htm, .pdf, .jsonl",
        "kb/d.jsonl:2: not valid JSON (Expecting value); each line must be one object",
        "kb/d.jsonl:3: no string field 'text' (fields: other)",
    ]


def test_a_file_of_bad_lines_gives_a_bounded_message(tmp_path):
    write(tmp_path, {"kb/r.jsonl": "nope\n" * 10_000})
    with pytest.raises(KnowledgeBaseError) as raised:
        read_documents(tmp_path, "kb/r.jsonl")
    lines = str(raised.value).splitlines()
    assert lines[0] == "10000 problems reading knowledge base documents:"
    assert len(lines) == 52 and lines[-1] == "... and 9950 more"


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "kb" / "huge.txt"
    big.parent.mkdir()
    with big.open("wb") as handle:
        handle.truncate(200_000_000)  # sparse: 200 MB by size, nothing written
    started = time.perf_counter()
    with pytest.raises(KnowledgeBaseError, match=r"kb/huge.txt: 200,000,000 bytes is over the 50,000,000-byte limit"):
        read_documents(tmp_path, "kb/*")
    assert time.perf_counter() - started < 1


def test_max_bytes_is_the_callers_limit(tmp_path):
    write(tmp_path, {"kb/a.md": "x" * 11})
    with pytest.raises(KnowledgeBaseError, match="11 bytes is over the 10-byte limit"):
        read_documents(tmp_path, "kb/a.md", max_bytes=10)


def test_no_match_is_an_error(tmp_path):
    write(tmp_path, {"kb/a.md": "x"})
    with pytest.raises(KnowledgeBaseError, match=r"'docs/\*\*/\*.md' matches no file under"):
        read_documents(tmp_path, "docs/**/*.md")


@pytest.mark.parametrize("link", ["kb/escape.md", "kb/linked"], ids=["file", "directory"])
def test_a_symlink_out_of_the_repository_is_refused(tmp_path, link):
    outside = tmp_path / "outside"
    write(outside, {"secret.md": "password=hunter2"})
    root = write(tmp_path / "repo", {"kb/a.md": "fine"})
    (root / link).symlink_to(outside / "secret.md" if link.endswith(".md") else outside)
    pattern = "kb/*" if link.endswith(".md") else "kb/linked/*.md"
    with pytest.raises(KnowledgeBaseError, match="resolves outside the repository") as raised:
        read_documents(root, pattern)
    assert link in str(raised.value) and "hunter2" not in str(raised.value)


def test_a_pattern_leaving_the_repository_is_refused(tmp_path):
    with pytest.raises(KnowledgeBaseError, match=r"contains '\.\.'"):
        read_documents(tmp_path, "../*.md")


def test_an_unreadable_file_is_a_located_problem(tmp_path, monkeypatch):
    write(tmp_path, {"kb/a.md": "fine", "kb/b.md": "locked"})
    real_read = type(tmp_path).read_bytes

    def read_bytes(path):
        if path.name == "b.md":
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(type(tmp_path), "read_bytes", read_bytes)
    with pytest.raises(KnowledgeBaseError) as raised:
        read_documents(tmp_path, "kb/*.md")
    assert str(raised.value).splitlines()[1:] == ["kb/b.md: cannot read it: Permission denied"]


SOURCE_CAPS = [
    ("files", {"MAX_FILES": 2}, {"kb/a.md": "a", "kb/b.md": "b", "kb/c.md": "c"},
     "'kb/*' matches 3 files, over the limit of 2 (MAX_FILES) for one knowledge base; narrow source.path"),
    ("total bytes", {"MAX_TOTAL_BYTES": 10}, {"kb/a.md": "aaaaaa", "kb/b.md": "bbbbbb"},
     "'kb/*' matches 12 bytes, over the limit of 10 (MAX_TOTAL_BYTES) for one knowledge base; narrow source.path"),
    ("JSONL rows across files", {"MAX_JSONL_ROWS": 2},
     {"kb/a.jsonl": '{"text": "1"}\n{"text": "2"}\n', "kb/b.jsonl": '{"text": "3"}\n', "kb/c.jsonl": "junk\n"},
     "1 problem reading knowledge base documents:\nkb/b.jsonl: line 1 takes the source over 2 JSONL rows "
     "(MAX_JSONL_ROWS) for one knowledge base; narrow source.path"),
    ("PDF pages", {"MAX_PDF_PAGES": 1}, {"kb/a.pdf": pdf_bytes(["one", "two"])},
     "1 problem reading knowledge base documents:\nkb/a.pdf: 2 pages is over the 1-page limit (MAX_PDF_PAGES) "
     "for one PDF; split it"),
]


@pytest.mark.parametrize("caps,files,message", [c[1:] for c in SOURCE_CAPS], ids=[c[0] for c in SOURCE_CAPS])
def test_a_source_past_a_cap_is_refused_naming_the_cap(tmp_path, monkeypatch, caps, files, message):
    for name, value in caps.items():
        monkeypatch.setattr(documents_module, name, value)
    with pytest.raises(KnowledgeBaseError) as raised:
        read_documents(write(tmp_path, files), "kb/*")
    assert str(raised.value).startswith(message)  # the rows cap stops reading: kb/c.jsonl's junk is never reported


def test_the_caps_allow_a_source_exactly_at_them(tmp_path, monkeypatch):
    for name, value in {"MAX_FILES": 2, "MAX_TOTAL_BYTES": 30, "MAX_JSONL_ROWS": 2}.items():
        monkeypatch.setattr(documents_module, name, value)
    write(tmp_path, {"kb/a.jsonl": '{"text": "1"}\n{"text": "2"}\n', "kb/b.md": "b"})
    assert [d.source for d in read_documents(tmp_path, "kb/*")] == ["kb/a.jsonl#L1", "kb/a.jsonl#L2", "kb/b.md"]


def test_pdf_text_past_max_bytes_is_refused_though_the_file_is_small(tmp_path):
    write(tmp_path, {"kb/bomb.pdf": pdf_bytes(["A" * 3000] * 5, compress=True)})
    assert (tmp_path / "kb" / "bomb.pdf").stat().st_size < 2000
    with pytest.raises(KnowledgeBaseError) as raised:
        read_documents(tmp_path, "kb/*", max_bytes=5000)
    assert str(raised.value).splitlines()[1] == ("kb/bomb.pdf: its text is over the 5,000-byte limit for one file "
                                                 "by page 2; split it")


def test_compressed_pdf_text_up_to_max_bytes_is_read(tmp_path):
    write(tmp_path, {"kb/a.pdf": pdf_bytes(["A" * 3000] * 2, compress=True)})
    assert read_documents(tmp_path, "kb/*", max_bytes=6000)[0].text == "A" * 3000 + "\n\n" + "A" * 3000


def test_files_of_the_engines_own_state_are_never_read(tmp_path):
    write(tmp_path, {"kb/a.md": "docs", ".llmops/store/reports/f00/report.md": "# Evaluation report",
                     "store/objects/f00/retrieval.md": "# Retrieval gate"})
    skip = (tmp_path / ".llmops", tmp_path / "store")
    assert [d.source for d in read_documents(tmp_path, "**/*.md", skip_dirs=skip)] == ["kb/a.md"]
    with pytest.raises(KnowledgeBaseError, match=r"'\.llmops/\*\*/\*\.md' matches no file under .* \(only files of "
                                                 r"the engine's own state, which are never read\)"):
        read_documents(tmp_path, ".llmops/**/*.md", skip_dirs=skip)
