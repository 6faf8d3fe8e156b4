"""Retrieval metrics on hand-computed rankings, and the question file's validation."""

import pytest

from llmops_engine.errors import KnowledgeBaseError
from llmops_engine.knowledge import metrics
from llmops_engine.knowledge.metrics import RETRIEVAL_METRICS, read_queries, retrieval_metrics, source_matches

SCENARIOS = [
    (
        "documents are deduplicated before the cut; hit, rank and recall per query",
        [["a.md", "a.md", "b.md", "c.md"],  # b at document rank 2 (chunk rank 3)
         ["x.md", "y.md", "z.md", "b.md"],  # b only at rank 4: missed at k=3
         ["faq.jsonl#L3", "a.md"],  # a row of the expected file, and a
         ["a.md", "b.md"]],  # one of two expected
        [{"b.md"}, {"b.md"}, {"faq.jsonl", "a.md"}, {"b.md", "c.md"}],
        3,
        {"hit_at_k": 3 / 4, "mrr": (1 / 2 + 0 + 1 + 1 / 2) / 4, "recall_at_k": (1 + 0 + 1 + 1 / 2) / 4},
    ),
    ("k=1 looks at the first document only", [["a.md", "b.md"], ["b.md"]], [{"b.md"}, {"b.md"}], 1,
     {"hit_at_k": 0.5, "mrr": 0.5, "recall_at_k": 0.5}),
    ("an empty ranking scores zero", [[]], [{"a.md"}], 4, {"hit_at_k": 0.0, "mrr": 0.0, "recall_at_k": 0.0}),
    ("an exact row source matches only that row", [["faq.jsonl#L30", "faq.jsonl#L3"]], [{"faq.jsonl#L3"}], 4,
     {"hit_at_k": 1.0, "mrr": 0.5, "recall_at_k": 1.0}),
]


@pytest.mark.parametrize("ranked,expected,k,result", [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_retrieval_metrics(ranked, expected, k, result):
    assert retrieval_metrics(ranked, expected, k) == pytest.approx(result)
    assert tuple(result) == RETRIEVAL_METRICS


@pytest.mark.parametrize("hit,expected,matches", [
    ("kb/a.md", "kb/a.md", True),
    ("kb/faq.jsonl#L12", "kb/faq.jsonl", True),
    ("kb/a.md.bak", "kb/a.md", False),
    ("kb/a.md", "kb/a", False),
    ("kb/faq.jsonl#L1", "kb/faq.jsonl#L12", False),
])
def test_source_matches(hit, expected, matches):
    assert source_matches(hit, expected) is matches


@pytest.mark.parametrize("ranked,expected,k", [([["a"]], [{"a"}], 0), ([], [], 3), ([["a"]], [{"a"}, {"b"}], 3),
                                                ([["a"]], [set()], 3)])
def test_retrieval_metrics_refuses_malformed_input(ranked, expected, k):
    with pytest.raises(ValueError):
        retrieval_metrics(ranked, expected, k)


KNOWN = {"kb/billing.md", "kb/passwords.md", "kb/faq.jsonl#L1", "kb/faq.jsonl#L2"}


def write(tmp_path, text, name="eval/questions.jsonl"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return tmp_path


def test_reads_questions_with_one_or_several_sources(tmp_path):
    root = write(tmp_path, '{"question": "How do I pay?", "source": "kb/billing.md"}\n\n'
                           '{"question": "Reset?", "source": ["kb/passwords.md", "kb/faq.jsonl"], "note": 1}\n'
                           '{"question": "Row?", "source": "kb/faq.jsonl#L2"}\n')
    assert read_queries(root, "eval/questions.jsonl", KNOWN) == [
        {"question": "How do I pay?", "sources": ["kb/billing.md"], "line": 1},
        {"question": "Reset?", "sources": ["kb/faq.jsonl", "kb/passwords.md"], "line": 3},
        {"question": "Row?", "sources": ["kb/faq.jsonl#L2"], "line": 4},
    ]


BAD_LINES = [
    ("not JSON", "{question", "eval/questions.jsonl:1: not valid JSON ("),
    ("not an object", '"a question"', "eval/questions.jsonl:1: expected a JSON object, got str"),
    ("no question", '{"source": "kb/billing.md"}', "eval/questions.jsonl:1: 'question' must be a non-empty string"),
    ("empty question", '{"question": " ", "source": "kb/billing.md"}', "eval/questions.jsonl:1: 'question' must be"),
    ("no source", '{"question": "q"}', "eval/questions.jsonl:1: 'source' must be a document path or a non-empty list"),
    ("empty source list", '{"question": "q", "source": []}', "eval/questions.jsonl:1: 'source' must be"),
    ("source not a string", '{"question": "q", "source": [3]}', "eval/questions.jsonl:1: 'source' must be"),
    ("unknown source, with the closest", '{"question": "q", "source": "kb/biling.md"}',
     "eval/questions.jsonl:1: source 'kb/biling.md' is not a document of this knowledge base; did you mean 'kb/billing.md'?"),
    ("integer past the digit limit", '{"question": "q", "source": ' + "7" * 5001 + "}",
     "eval/questions.jsonl:1: not valid JSON (a number longer than 4,300 digits); each line must be one object"),
    ("a row-level source suggests its file", '{"question": "q", "source": "kb/faq.jsonl#L9"}',
     "eval/questions.jsonl:1: source 'kb/faq.jsonl#L9' is not a document of this knowledge base; did you mean "
     "'kb/faq.jsonl'?"),
    ("unknown source, nothing close", '{"question": "q", "source": "zzzz"}',
     "eval/questions.jsonl:1: source 'zzzz' is not a document of this knowledge base"),
]


@pytest.mark.parametrize("line,message", [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_each_bad_line_is_located(tmp_path, line, message):
    with pytest.raises(KnowledgeBaseError) as raised:
        read_queries(write(tmp_path, line + "\n"), "eval/questions.jsonl", KNOWN)
    lines = str(raised.value).splitlines()
    assert lines[0] == "1 problem in the question file eval/questions.jsonl:"
    assert len(lines) == 2 and lines[1].startswith(message), lines


def test_every_bad_line_is_raised_at_once(tmp_path):
    root = write(tmp_path, '{"question": "ok", "source": "kb/billing.md"}\nnope\n'
                           '{"question": "q", "source": ["kb/billing.md", "kb/pasword.md"]}\n')
    with pytest.raises(KnowledgeBaseError) as raised:
        read_queries(root, "eval/questions.jsonl", KNOWN)
    assert str(raised.value).splitlines()[1:] == [
        "eval/questions.jsonl:2: not valid JSON (Expecting value); each line must be one object",
        "eval/questions.jsonl:3: source 'kb/pasword.md' is not a document of this knowledge base; "
        "did you mean 'kb/passwords.md'?",
    ]


@pytest.mark.parametrize("setup,path,message", [
    ("\n\n", "eval/questions.jsonl", "eval/questions.jsonl: no questions"),
    (None, "eval/missing.jsonl", "question file 'eval/missing.jsonl' does not exist"),
    (None, "eval/*.jsonl", "is a glob; name one JSONL file"),
    (None, "../questions.jsonl", "contains '..'"),
])
def test_file_level_problems(tmp_path, setup, path, message):
    write(tmp_path, setup or '{"question": "q", "source": "kb/billing.md"}\n')
    with pytest.raises(KnowledgeBaseError, match=message.replace(".", r"\.").replace("*", r"\*")):
        read_queries(tmp_path, path, KNOWN)


def test_a_symlinked_question_file_out_of_the_repository_is_refused(tmp_path):
    (tmp_path / "outside.jsonl").write_text('{"question": "q", "source": "kb/billing.md"}\n')
    root = tmp_path / "repo"
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "questions.jsonl").symlink_to(tmp_path / "outside.jsonl")
    with pytest.raises(KnowledgeBaseError, match="resolves outside the repository"):
        read_queries(root, "eval/questions.jsonl", KNOWN)


@pytest.mark.parametrize("questions, accepted", [(3, True), (4, False)])
def test_the_number_of_questions_is_capped(tmp_path, monkeypatch, questions, accepted):
    monkeypatch.setattr(metrics, "MAX_QUERIES", 3)
    root = write(tmp_path, '{"question": "q", "source": "kb/billing.md"}\n\nnope\n' * questions)
    if accepted:
        with pytest.raises(KnowledgeBaseError, match=f"^{questions} problems"):  # the bad lines, not the cap
            read_queries(root, "eval/questions.jsonl", KNOWN)
        return
    with pytest.raises(KnowledgeBaseError, match=r"^eval/questions\.jsonl:10: over 3 questions \(MAX_QUERIES\); "
                                                 "the gate searches once per question"):
        read_queries(root, "eval/questions.jsonl", KNOWN)


def test_did_you_mean_looks_only_at_file_names_not_rows(tmp_path, monkeypatch):
    rows = {f"kb/faq.jsonl#L{n}" for n in range(1, 5001)}
    candidates = []
    real = metrics.difflib.get_close_matches

    def get_close_matches(word, possibilities, n):
        candidates.append(len(possibilities))
        return real(word, possibilities, n)

    monkeypatch.setattr(metrics.difflib, "get_close_matches", get_close_matches)
    root = write(tmp_path, '{"question": "q", "source": "kb/fac.jsonl"}\n')
    with pytest.raises(KnowledgeBaseError, match="did you mean 'kb/faq.jsonl'"):
        read_queries(root, "eval/questions.jsonl", rows | {"kb/billing.md"})
    assert candidates == [2]
