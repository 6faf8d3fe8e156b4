"""A Dataset whose source is a real PostgreSQL database: plan queries it (refresh: on_apply) or
reuses the last extract (manual), the extract's hash is the fingerprint's input, DVC builds
from the extract, and credentials reach nothing the engine writes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from llmops_engine.controllers import Registry
from llmops_engine.engine import Engine
from llmops_engine.errors import DataError
from llmops_engine.project import load_project
from tests.test_data_dvc import RecordingTuning

URL_ENV = "LLMOPS_TEST_WAREHOUSE_URL"

DATASET = """
apiVersion: llmops/v1
kind: Dataset
metadata: {{name: tickets}}
spec:
  source:
    database_url_env: {env}
    query: "SELECT question, answer FROM {table} ORDER BY id"{refresh}
  columns: {{instruction: question, output: answer}}
  transforms: [{{sql: "SELECT * FROM rows WHERE output <> ''"}}]
  split: {{eval_fraction: 0.3, seed: 1}}
  validation:
    - {{expect: column_values_to_not_be_null, column: output}}
"""


TUNING = """
apiVersion: llmops/v1
kind: TuningJob
metadata: {name: t}
spec: {base_model: "builtin:tiny-llama", dataset: tickets, prompt: p, method: lora}
"""
PROMPT = """
apiVersion: llmops/v1
kind: Prompt
metadata: {name: p}
spec: {template: "Q: {instruction}\\nA:"}
"""


@pytest.fixture
def table(postgres):
    name = f"tickets_{uuid.uuid4().hex[:8]}"
    with postgres.connect() as db:
        db.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, question text, answer text)")
        db.execute(f"INSERT INTO {name} (question, answer) SELECT 'question ' || i, 'answer ' || i "
                   "FROM generate_series(1, 60) AS i")
    return name


@pytest.fixture
def warehouse(make_project, table, postgres_url, monkeypatch):
    monkeypatch.setenv(URL_ENV, postgres_url)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    tuning = RecordingTuning()

    def factory(refresh: str = "") -> tuple[Path, Engine, RecordingTuning]:
        spec = DATASET.format(env=URL_ENV, table=table, refresh=f"\n    refresh: {refresh}" if refresh else "")
        root = make_project({"dataset.yaml": spec, "prompt.yaml": PROMPT, "tuning.yaml": TUNING})
        registry = Registry({"TuningJob": tuning})
        return root, Engine(load_project(root), registry=registry, report=lambda _: None), tuning
    return factory


def actions(engine: Engine) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return {a.key: (a.action, a.reasons, a.notes) for a in engine.plan().plan.actions}


def insert(postgres, table: str, question: str, answer: str) -> None:
    with postgres.connect() as db:
        db.execute(f"INSERT INTO {table} (question, answer) VALUES (%s, %s)", (question, answer))


@pytest.mark.slow  # real PostgreSQL + DVC: ~12 s each
def test_on_apply_queries_at_every_plan_and_retrains_only_when_the_rows_changed(warehouse, postgres, table):
    root, engine, tuning = warehouse()
    first = actions(engine)
    assert first["Dataset/tickets"][0] == "create"
    assert "refresh: on_apply; queried $LLMOPS_TEST_WAREHOUSE_URL now: 60 rows" in first["Dataset/tickets"][2][0]
    assert not engine.apply().failed
    processed = root / "data/processed/tickets"
    assert sum(1 for name in ("train.jsonl", "eval.jsonl") for _ in (processed / name).open()) == 60
    assert len(tuning.applied) == 1

    assert {key: a[0] for key, a in actions(engine).items()} == {  # same rows: nothing to do
        "Dataset/tickets": "no-op", "Prompt/p": "no-op", "TuningJob/t": "no-op"}

    insert(postgres, table, "new question", "new answer")
    changed = actions(engine)
    assert changed["Dataset/tickets"][:2] == ("update", ("database extract changed: $LLMOPS_TEST_WAREHOUSE_URL",))
    assert changed["TuningJob/t"][0] == "update"
    assert not engine.apply().failed
    assert len(tuning.applied) == 2 and tuning.applied[-1]["raw_rows"] == 61
    extracts = list((root / ".llmops/extracts/tickets").glob("*.parquet"))  # older ones pruned
    assert [p.stem for p in extracts] == [tuning.applied[-1]["extract"]]
    assert "new question" in (processed / "train.jsonl").read_text() + (processed / "eval.jsonl").read_text()


@pytest.mark.slow
def test_manual_reuses_the_last_extract_until_refreshed(warehouse, postgres, table):
    from typer.testing import CliRunner

    from llmops_engine.data.cli import app

    root, engine, _ = warehouse(refresh="manual")
    assert not engine.apply().failed
    insert(postgres, table, "later", "later answer")
    dataset = actions(engine)["Dataset/tickets"]
    assert dataset[0] == "no-op" and "refresh: manual" in dataset[2][0] and "not queried" in dataset[2][0]
    done = CliRunner().invoke(app, ["refresh", "tickets", "--project", str(root)])
    assert done.exit_code == 0 and "61 rows" in done.output, done.output
    assert actions(engine)["Dataset/tickets"][0] == "update"


@pytest.mark.slow
def test_a_database_that_is_down_or_unset_is_a_clear_error_and_keeps_the_last_good_data(
        warehouse, monkeypatch, postgres_url, postgres):
    root, engine, _ = warehouse()
    assert not engine.apply().failed
    processed = root / "data/processed/tickets/train.jsonl"
    before = processed.read_bytes()
    records_before = {key: (r.fingerprint, r.status, r.outputs) for key, r in engine.records().items()}
    assert set(records_before) == {"Dataset/tickets", "Prompt/p", "TuningJob/t"}

    down = postgres_url.replace(f":{postgres.port}/", ":1/")  # nothing listens on port 1
    monkeypatch.setenv(URL_ENV, down)
    assert "Dataset/tickets" in engine.load().by_key  # status and report never query
    with pytest.raises(DataError) as caught:
        engine.plan()
    assert "127.0.0.1:1" in str(caught.value) and postgres.password not in str(caught.value)
    monkeypatch.delenv(URL_ENV)
    with pytest.raises(DataError, match=f"environment variable {URL_ENV} is not set"):
        engine.apply()
    assert processed.read_bytes() == before
    assert {key: (r.fingerprint, r.status, r.outputs) for key, r in engine.records().items()} == records_before


@pytest.mark.slow
def test_the_password_reaches_no_file_the_engine_writes(warehouse, postgres):
    root, engine, _ = warehouse()
    plan = engine.plan().plan
    assert not engine.apply().failed
    written = [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts and p.suffix != ".parquet"]
    assert written and not [p for p in written if postgres.password.encode() in p.read_bytes()]
    assert postgres.password not in json.dumps(plan.to_json())
    assert "LLMOPS_TEST_WAREHOUSE_URL" in (root / "specs/dataset.yaml").read_text()
