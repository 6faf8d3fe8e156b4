"""Great Expectations validation of datasets (real GX 1.x, in process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from llmops_engine.data.pipeline import build
from llmops_engine.data.validation import ChunkValidator, value_digests
from llmops_engine.errors import ValidationFailed
from llmops_engine.specs.dataset import DatasetSpec, ValidationRule
from llmops_engine.specs.loader import load_resources

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "data"


def bad_project(tmp_path: Path) -> Path:
    (tmp_path / "specs").mkdir()
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "bad-tickets.yaml", tmp_path / "specs" / "bad-tickets.yaml")
    shutil.copy(FIXTURES / "bad_tickets.jsonl", tmp_path / "data" / "bad_tickets.jsonl")
    return tmp_path


def test_demo_dataset_passes_and_reports_are_offline(tmp_path, monkeypatch):
    from llmops_engine.data.demo import write_demo

    monkeypatch.chdir(tmp_path)  # GX must not create a project context (gx/) anywhere
    (resource,) = [r for r in load_resources(REPO, ["specs"]) if r.name == "support-tickets"]
    # A fresh clone has no raw tickets yet (they are DVC-tracked): generate them as bootstrap
    # would; the replayed general questions are in git.
    root = tmp_path / "repo"
    write_demo(root / "data/support_tickets.jsonl")
    shutil.copy(REPO / "data/general_chat.jsonl", root / "data/general_chat.jsonl")
    out = tmp_path / "out"
    result = build(resource.name, resource.spec, root, out, tmp_path / "failed")
    assert result.report["success"] and len(result.report["rules"]) >= 5
    assert result.train_rows + result.eval_rows == 578  # 500 tickets + 78 replayed general questions
    assert json.loads((out / "validation.json").read_text())["rows"] == {"raw": 578, "train": result.train_rows,
                                                                        "eval": result.eval_rows}
    markdown = (out / "validation.md").read_text()
    assert "PASSED" in markdown and "http" not in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "repo"]


def test_failed_validation_names_each_rule_and_keeps_previous_data(tmp_path):
    root = bad_project(tmp_path)
    (resource,) = load_resources(root, ["specs"])
    out = root / "data/processed/bad-tickets"
    out.mkdir(parents=True)
    for name in ("train.jsonl", "eval.jsonl", "validation.json", "validation.md"):
        (out / name).write_text(f"previous good {name}\n")

    with pytest.raises(ValidationFailed) as caught:
        build(resource.name, resource.spec, root, out, root / "failed")

    message = str(caught.value)
    assert "failed 5 of 6 validation rules" in message
    assert "column_values_to_not_be_null(column='output'): 1 unexpected (10.00%)" in message
    assert "column_values_to_not_match_regex" in message and "Lorem ipsum dolor sit amet." in message
    assert "column_value_lengths_to_be_between" in message and '"ok"' in message
    assert "compound_columns_to_be_unique" in message and "2 unexpected" in message
    assert message.count("\"instruction\": \"How do I reset my password?\"") == 2  # values, not digests
    assert "table_row_count_to_be_between(min_value=200): observed 10" in message
    assert caught.value.exit_code == 5
    for name in ("train.jsonl", "eval.jsonl", "validation.json", "validation.md"):
        assert (out / name).read_text() == f"previous good {name}\n"
    report = json.loads((root / "failed/validation.json").read_text())
    assert report["success"] is False and [r["success"] for r in report["rules"]] == [False] * 5 + [True]
    assert [p.name for p in out.parent.iterdir()] == ["bad-tickets"]  # no temp dirs left behind


def rule(expect: str, **kwargs) -> ValidationRule:
    return ValidationRule.model_validate({"expect": expect, **kwargs})


def test_chunked_results_equal_one_chunk_and_mostly_is_on_the_whole_data():
    rules = [
        rule("column_values_to_not_be_null", column="output"),
        rule("column_value_lengths_to_be_between", column="output", min_value=3, mostly=0.8),
        rule("column_values_to_match_regex", column="output", regex="^a"),
        rule("column_values_to_be_unique", column="instruction"),
        rule("table_row_count_to_be_between", min_value=10, max_value=10),
    ]
    # chunk 1 has 3 of 5 short outputs (fails mostly=0.8 alone); overall 3 of 9 non-null are short.
    outputs = ["a", "b", "c", "abcd", "abcd", "abcd", "abcd", None, "abcd", "abcd"]
    data = [{"instruction": f"q{i % 9}", "input": "", "output": o} for i, o in enumerate(outputs)]

    def results(chunk_rows: int):
        validator = ChunkValidator(rules, "processed", chunk_rows=chunk_rows)
        for start in range(0, len(data), 5):  # pieces as the pipeline passes them; chunks are their sum
            piece = pd.DataFrame(data[start:start + 5])
            validator.add(piece, value_digests(pa.RecordBatch.from_pandas(piece), ["instruction"]))
        return [(r.success, r.element_count, r.unexpected_count, r.examples[:1], r.observed_value) for r in validator.finish()]

    whole, chunked = results(1000), results(5)
    assert chunked == whole
    not_null, lengths, regex, unique, count = whole
    assert not_null[:3] == (False, 10, 1)
    assert lengths[:3] == (False, 10, 3)  # 6/9 = 0.67 < 0.8
    assert regex[:3] == (False, 10, 2)  # nulls are skipped by column-map rules (GX semantics)
    assert unique[0] is False and count[0] is True and count[4] == 10


def test_raw_validation_sees_source_columns(tmp_path):
    root = bad_project(tmp_path)
    spec = DatasetSpec.model_validate({
        "source": {"path": "data/bad_tickets.jsonl"},
        "columns": {"instruction": "question", "output": "answer"},
        "validate": "raw",
        "validation": [{"expect": "column_values_to_not_be_null", "column": "answer"}],
    })
    with pytest.raises(ValidationFailed, match=r"\[raw\] rule 1: column_values_to_not_be_null\(column='answer'\)"):
        build("raw", spec, root, root / "out", root / "failed")


def test_a_rule_on_a_missing_column_fails_with_the_gx_error(tmp_path):
    root = bad_project(tmp_path)
    spec = DatasetSpec.model_validate({
        "source": {"path": "data/bad_tickets.jsonl"},
        "columns": {"instruction": "question", "output": "answer"},
        "validation": [{"expect": "column_values_to_not_be_null", "column": "answer"}],
    })
    with pytest.raises(ValidationFailed, match="could not run: .*answer"):
        build("missing", spec, root, root / "out", root / "failed")


def test_cli_build_exits_with_the_validation_code(tmp_path):
    from typer.testing import CliRunner

    from llmops_engine.data.cli import app

    root = bad_project(tmp_path)
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    result = CliRunner().invoke(app, ["build", "bad-tickets", "--project", str(root)])
    assert result.exit_code == 5
    assert "Dataset bad-tickets failed 5 of 6 validation rules" in result.output
    assert (root / ".llmops/data/bad-tickets/failed/validation.md").is_file()
    assert not (root / "data/processed/bad-tickets/train.jsonl").exists()
    unknown = CliRunner().invoke(app, ["build", "nope", "--project", str(root)])
    assert unknown.exit_code == 1 and "no Dataset named 'nope' in the specs (known: bad-tickets)" in unknown.output
