"""The apply summary's curl and SDK examples are the project's own: its deployment name, its
prompt's fields and a row of its own eval split — and they survive shell quoting."""

import json
import shlex

from llmops_engine.engine import Engine
from llmops_engine.project import Project, ProjectSettings
from llmops_engine.report import usage_lines
from llmops_engine.state.records import ResourceRecord

ROW = {"instruction": "Which river flows through Lyon's old town?", "input": "Region: Auvergne-Rhône-Alpes",
       "output": "The Saône."}


def record(kind, name, spec, fingerprint="f" * 64, outputs=None):
    return ResourceRecord(kind=kind, name=name, fingerprint=fingerprint, spec=spec, outputs=outputs or {})


def project_with_records(tmp_path, template, rows=(ROW, {"instruction": "second"})):
    engine = Engine(Project(tmp_path, ProjectSettings()), report=lambda _: None)
    staging = engine.store.staging_dir("d" * 64)
    (staging / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine.store.publish("d" * 64, staging)
    deployment = record("Deployment", "geo-api", {"model": "geo-tuned", "prompt": "geo", "auth": {"api_keys_env": "GEO_KEYS"}},
                        outputs={"endpoint": "http://127.0.0.1:8000/v1", "model_id": "geo-api"})
    records = {
        "Prompt/geo": record("Prompt", "geo", {"template": template}),
        "Dataset/places": record("Dataset", "places", {}, fingerprint="d" * 64),
        "TuningJob/geo-tuned": record("TuningJob", "geo-tuned", {"dataset": "places"}),
        "Deployment/geo-api": deployment,
    }
    return engine, records, deployment


def curl_body(lines):
    curl = next(line for line in lines if line.startswith("curl "))
    return json.loads(shlex.split(curl)[-1])


def test_examples_ask_the_first_eval_row_shaped_by_the_prompt(tmp_path):
    engine, records, deployment = project_with_records(tmp_path, "Context: {input}\nQ: {instruction}\nA:")
    lines = usage_lines(engine, records, deployment)
    body = curl_body(lines)
    assert body["model"] == "geo-api"
    assert body["messages"] == [{"role": "system", "content": ROW["input"]}, {"role": "user", "content": ROW["instruction"]}]
    assert "Nimbus" not in "\n".join(lines)
    assert '"Authorization: Bearer $GEO_KEYS"' in lines[-2]
    code = shlex.split(lines[-1])[-1]
    compile(code, "<snippet>", "exec")  # the SDK snippet is valid Python after shell unquoting
    assert "Lyon's old town" in code


def test_a_prompt_with_input_shows_a_row_that_has_one(tmp_path):
    rows = ({"instruction": "What is 10 minus 4?", "input": ""}, ROW)
    engine, records, deployment = project_with_records(tmp_path, "Context: {input}\nQ: {instruction}\nA:", rows)
    assert curl_body(usage_lines(engine, records, deployment))["messages"] == [
        {"role": "system", "content": ROW["input"]}, {"role": "user", "content": ROW["instruction"]}]


def test_a_prompt_without_input_sends_only_the_question(tmp_path):
    engine, records, deployment = project_with_records(tmp_path, "Q: {instruction}\nA:")
    assert curl_body(usage_lines(engine, records, deployment))["messages"] == [{"role": "user", "content": ROW["instruction"]}]


def test_without_an_eval_split_the_example_is_generic(tmp_path):
    engine, records, deployment = project_with_records(tmp_path, "Q: {instruction}\nA:")
    del records["TuningJob/geo-tuned"]
    messages = curl_body(usage_lines(engine, records, deployment))["messages"]
    assert messages == [{"role": "user", "content": "Hello! What can you help me with?"}]
