"""SQL in Datasets: `source: {sql}` and `- sql:` transforms, run by DuckDB, checked at validate,
confined to the repository, with the files the SQL reads as the stage's inputs."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import yaml

from llmops_engine.controllers import Registry
from llmops_engine.data import dvc_stage
from llmops_engine.data.pipeline import SourceData, build
from llmops_engine.data.split import eval_mask, is_eval
from llmops_engine.data.transforms import PYTHON_WHITESPACE
from llmops_engine.engine import Engine
from llmops_engine.errors import DataError, SpecError
from llmops_engine.project import load_project
from llmops_engine.specs.dataset import DatasetSpec, Split, Transform
from llmops_engine.specs.loader import load_resources
from tests.test_data_pipeline import transform_rows

DATASET = """
apiVersion: llmops/v1
kind: Dataset
metadata: {{name: tickets}}
spec:
  source:
    sql: {sql}
  columns: {{instruction: question, input: context, output: answer}}
  transforms: {transforms}
  split: {{eval_fraction: 0.25, seed: 1}}
"""
GOOD_SQL = json.dumps("SELECT question, answer, context FROM read_json_auto('data/*.jsonl') WHERE answer <> 'skip'")


def rows(start: int, n: int) -> list[dict]:
    return [{"question": f" q{i} ", "answer": "skip" if i % 10 == 0 else f"answer {i}", "context": f"c{i % 2}"}
            for i in range(start, start + n)]


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


@pytest.fixture
def sql_project(make_project):
    def factory(sql: str = GOOD_SQL, transforms: str = "[]") -> Path:
        root = make_project({"dataset.yaml": DATASET.format(sql=sql, transforms=transforms)})
        write_jsonl(root / "data" / "a.jsonl", rows(0, 40))
        write_jsonl(root / "data" / "b.jsonl", rows(40, 20))
        return root
    return factory


def built(root: Path) -> list[dict]:
    resource = next(r for r in load_resources(root, ["specs"]) if r.kind == "Dataset")
    out = root / "out"
    build("tickets", resource.spec, root, out, root / "failed", SourceData(resource.spec.sql_patterns()))
    return [json.loads(line) for name in ("train.jsonl", "eval.jsonl") for line in (out / name).read_text().splitlines()]


# --- the source and transforms ---------------------------------------------------------


def test_an_sql_source_reads_the_files_its_sql_names(sql_project):
    examples = built(sql_project())
    assert len(examples) == 54  # 60 rows, 6 answered "skip"
    assert {e["instruction"] for e in examples} == {f" q{i} " for i in range(60) if i % 10}
    assert all(set(e) == {"instruction", "input", "output"} for e in examples)


def test_sql_and_declarative_transforms_run_in_spec_order(tmp_path):
    transforms = [Transform.model_validate(t) for t in (
        {"strip_whitespace": {}},
        {"dedupe": ["instruction"]},
        {"sql": "SELECT * FROM rows WHERE input = 'c1' ORDER BY instruction DESC"},
        {"dedupe": ["input", "output"]},  # the first row of each key in the sql step's order
        {"max_chars": {"instruction": 2}},
    )]
    items = [{"instruction": f" q{i} ", "input": f"c{i % 2}", "output": f"a{i % 4}"} for i in range(12)]
    items.append(dict(items[1]))  # a duplicate, dropped before the sql step sees it
    rows = transform_rows(items, transforms, tmp_path)
    assert [(r["instruction"], r["input"], r["output"], r["history"]) for r in rows] == [
        ("q9", "c1", "a1", None), ("q7", "c1", "a3", None)]  # `rows` has history (null) after an sql step


def test_an_sql_transform_may_drop_input_and_must_return_instruction_and_output(sql_project):
    no_input = json.dumps([{"sql": "SELECT instruction, upper(output) AS output FROM rows"}])
    examples = built(sql_project(transforms=no_input))
    assert all(e["input"] == "" and e["output"].startswith("ANSWER") for e in examples)
    root = sql_project(transforms=json.dumps([{"sql": "SELECT instruction FROM rows"}]))
    with pytest.raises(SpecError, match=r"transforms\.0\.sql: an sql transform must return instruction and output"):
        load_resources(root, ["specs"])


def test_rows_that_survive_every_step_keep_their_text_exactly(make_project):
    tricky = ["quote \" and back\\slash", "tab\tnew\nline", "unicode é 中文 🙂", "control \x01 char", "  padded  "]
    root = make_project({"dataset.yaml": DATASET.format(
        sql=json.dumps("SELECT * FROM read_json_auto('data/t.jsonl')"), transforms="[{min_chars: {output: 1}}]")})
    write_jsonl(root / "data" / "t.jsonl", [{"question": t, "answer": t, "context": t} for t in tricky])
    assert sorted(e["output"] for e in built(root)) == sorted(tricky)


def test_a_query_without_rows_or_columns_is_a_clear_error(sql_project):
    empty = json.dumps("SELECT question, answer, context FROM read_json_auto('data/*.jsonl') WHERE false")
    with pytest.raises(DataError, match="the source has no rows"):
        built(sql_project(sql=empty))
    unmapped = json.dumps("SELECT question FROM read_json_auto('data/*.jsonl')")
    with pytest.raises(DataError, match=r"source has no column answer \(it has: question\)"):
        built(sql_project(sql=unmapped))


def test_strip_whitespace_strips_what_python_strips():
    assert set(PYTHON_WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def test_the_vectorized_split_equals_the_row_split():
    import pyarrow as pa

    rng = random.Random(7)
    alphabet = "ab é中🙂\"\\\n\t"
    examples = [{f: (None if rng.random() < 0.05 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
                 for f in ("instruction", "input", "output")} for _ in range(2000)]
    batch = pa.RecordBatch.from_pylist(examples)
    for split in (Split(eval_fraction=0.3, seed=5), Split(eval_fraction=1.0)):
        assert eval_mask(batch, split) == [is_eval(e, split) for e in examples]


# --- validate: the SQL is checked where DuckDB can check it without running it ---------


@pytest.mark.parametrize("sql, message", [
    ("SELEC question FROM read_json_auto('data/a.jsonl')", 'syntax error at or near "SELEC"'),
    ("SELECT * FROM read_json_auto('/etc/passwd')", "is absolute"),
    ("SELECT * FROM read_json_auto('../outside.jsonl')", "contains '..'"),
    ("SELECT * FROM read_json_auto('http://example.invalid/x.jsonl')", "repository"),
    ("SELECT * FROM read_text('data/a.jsonl')", "read_text"),
    ("SELECT * FROM read_json_auto('data/missing-*.jsonl')", "matches no file"),
    ("ATTACH 'x.db'; SELECT 1", "SELECT"),
])
def test_bad_source_sql_is_a_validate_error_at_its_line(sql_project, sql, message):
    root = sql_project(sql=json.dumps(sql))
    with pytest.raises(SpecError) as caught:
        load_resources(root, ["specs"])
    assert any(issue.line == 6 and "source.sql" in issue.path and message in issue.message
               for issue in caught.value.issues), [str(i) for i in caught.value.issues]


def test_a_transform_naming_a_source_column_is_a_validate_error(sql_project):
    root = sql_project(transforms=json.dumps([{"sql": "SELECT * FROM rows WHERE length(answer) < 2000"}]))
    with pytest.raises(SpecError, match=r'transforms\.0\.sql: the SQL does not run on rows .*"answer" not found'):
        load_resources(root, ["specs"])


def test_a_multi_line_sql_problem_names_its_line_in_the_sql(make_project):
    sql = "|\n      SELECT question,\n        answer\n      FROM read_json_auto('/etc/passwd')"
    root = make_project({"dataset.yaml": DATASET.format(sql=sql, transforms="[]")})
    with pytest.raises(SpecError, match=r"is absolute.*\(SQL line 3, column 6\)"):
        load_resources(root, ["specs"])


def test_validate_does_not_import_duckdb(sql_project):
    import subprocess

    root = sql_project()
    code = ("import sys; from llmops_engine.specs.loader import load_resources; "
            f"load_resources(__import__('pathlib').Path({str(root)!r}), ['specs']); "
            "print('duckdb' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


# --- the files the SQL reads are the stage's inputs ----------------------------------------


def test_files_the_sql_reads_are_fingerprint_inputs_and_dvc_deps(sql_project, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    root = sql_project()
    engine = Engine(load_project(root), registry=Registry(), report=lambda _: None)
    assert not engine.apply().failed
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["dataset-tickets"]
    assert stage["deps"] == ["data/a.jsonl", "data/b.jsonl", "specs/dataset.yaml"]
    assert [a.action for a in engine.plan().plan.actions] == ["no-op"]
    write_jsonl(root / "data" / "b.jsonl", rows(40, 22))
    action = engine.plan().plan.actions[0]
    assert action.action == "update" and "data changed: data/b.jsonl" in action.reasons
    assert not engine.apply().failed
    assert dvc_stage.stage_status(root, "tickets") == []
    assert json.loads((root / "data/processed/tickets/validation.json").read_text())["rows"]["raw"] == 55  # the rows the SQL returns


def test_a_glob_match_pointing_outside_the_repository_is_refused(sql_project, tmp_path):
    outside = tmp_path / "secret.jsonl"
    write_jsonl(outside, [{"question": "leak", "answer": "leak", "context": ""}])
    root = sql_project()
    spec = next(r for r in load_resources(root, ["specs"]) if r.kind == "Dataset").spec
    os.symlink(outside, root / "data" / "c.jsonl")
    with pytest.raises(SpecError, match="'data/c.jsonl', which resolves outside the repository"):
        load_resources(root, ["specs"])
    with pytest.raises(DataError, match="resolves outside the repository"):  # and at build, whatever validate said
        build("tickets", spec, root, root / "out", root / "failed", SourceData(spec.sql_patterns()))


def test_the_dvc_stage_gets_no_secret_a_spec_names(monkeypatch):
    monkeypatch.setenv("WAREHOUSE_URL", "postgresql://user:pw@db.internal/warehouse")
    env = dvc_stage.dvc_env(["WAREHOUSE_URL"])
    assert "WAREHOUSE_URL" not in env and env["DVC_NO_ANALYTICS"] == "1" and env["PATH"]


def test_a_column_that_first_appears_late_in_a_file_is_read_or_refused_never_lost(make_project):
    root = make_project({"dataset.yaml": DATASET.format(
        sql=json.dumps("SELECT * FROM read_json_auto('data/late.jsonl')"), transforms="[]")})
    late = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30_000)]
    late += [{"question": f"late {i}", "answer": "a", "context": "CONTEXT"} for i in range(50)]
    write_jsonl(root / "data" / "late.jsonl", late)
    with pytest.raises(DataError, match='unknown key "context"'):  # the user's own read: DuckDB samples
        built(root)
    path_spec = DatasetSpec.model_validate({"source": {"path": "data/late.jsonl"}, "split": {"eval_fraction": 0.5},
                                           "columns": {"instruction": "question", "input": "context",
                                                       "output": "answer"}})
    build("late", path_spec, root, root / "out2", root / "failed")
    written = (root / "out2" / "train.jsonl").read_text() + (root / "out2" / "eval.jsonl").read_text()
    assert written.count('"input": "CONTEXT"') == 50


def test_sql_steps_are_named_by_their_place_in_the_spec_and_keep_history_a_list(sql_project):
    root = sql_project()
    spec = next(r for r in load_resources(root, ["specs"]) if r.kind == "Dataset").spec
    broken = spec.model_copy(update={"transforms": [
        Transform.model_validate({"sql": "SELECT instruction FROM rows"}),
        Transform.model_validate({"sql": "SELECT * FROM rows"})]})
    with pytest.raises(DataError, match=r"sql transform \(spec.transforms\[0\]\) returned no column output"):
        build("tickets", broken, root, root / "out", root / "failed", SourceData(spec.sql_patterns()))
    bad_history = spec.model_copy(update={"transforms": [
        Transform.model_validate({"sql": "SELECT * REPLACE ('not json' AS history) FROM rows"})]})
    with pytest.raises(DataError, match=r"spec.transforms\[0\]\): history must be null or a JSON list"):
        build("tickets", bad_history, root, root / "out", root / "failed", SourceData(spec.sql_patterns()))
