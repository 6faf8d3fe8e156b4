"""Evaluation controller paths that need no model: fail closed on an empty split, the
failed report kept outside objects/, and which model is the live champion."""

import json

import pytest

from llmops_engine.controllers.evaluation import EvaluationController
from llmops_engine.errors import EvaluationError, GateFailed
from llmops_engine.evaluation.contenders import baselines, candidate, live_champion
from llmops_engine.state.records import ResourceRecord
from tests.eval_helpers import DATASET, PROMPT, make_context, publish_dataset, resource


def gate(**overrides):
    spec = dict(
        model="base:builtin:tiny-llama", prompt="p", dataset="d",
        thresholds=[{"metric": "rouge_l", "min": 0.1}],
    )
    return resource("Evaluation", "gate", **{**spec, **overrides})


def test_empty_eval_split_fails_the_gate_and_keeps_the_report(tmp_path):
    evaluation = gate()
    ctx = make_context(tmp_path, [resource("Prompt", "p", **PROMPT), resource("Dataset", "d", **DATASET), evaluation])
    publish_dataset(ctx, "d", eval_rows=[])
    staging = tmp_path / "staging"
    staging.mkdir()

    with pytest.raises(GateFailed) as caught:
        EvaluationController().apply(evaluation, ctx, staging)

    error = caught.value
    assert error.exit_code == 3
    assert "the eval split is empty" in str(error) and "| rouge_l | - |" in error.table
    report_dir = ctx.store.root / "reports" / ctx.fingerprint(evaluation.key)
    assert error.report_dir == report_dir
    assert "gate FAILED" in (report_dir / "report.md").read_text()
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert metrics["passed"] is False and metrics["examples"] == 0
    assert not ctx.store.has(ctx.fingerprint(evaluation.key))  # nothing published under objects/


def deployment_record(gate_name, fingerprint, status="ready", applied_at=1.0):
    return ResourceRecord(
        kind="Deployment", name=f"api-{applied_at}", fingerprint="f" * 64, spec={"gate": gate_name},
        outputs={"model_fingerprint": fingerprint, "model_version": fingerprint[:12]},
        status=status, applied_at=applied_at,
    )


def trained_dir(ctx, fingerprint):
    directory = ctx.store.local_path(fingerprint)
    directory.mkdir(parents=True)
    (directory / "template.json").write_text(json.dumps({**PROMPT, "system": None, "template_no_input": None, "template_hash": "h"}))
    (directory / "model.json").write_text(json.dumps({"base_model": "builtin:tiny-llama", "method": "full"}))
    return directory


def test_champion_is_the_model_served_by_the_newest_ready_deployment_of_this_gate(tmp_path):
    records = {
        "old": deployment_record("gate", "a" * 64, applied_at=1.0),
        "new": deployment_record("gate", "b" * 64, applied_at=2.0),
        "down": deployment_record("gate", "c" * 64, status="failed", applied_at=3.0),
        "other": deployment_record("another-gate", "d" * 64, applied_at=4.0),
    }
    ctx = make_context(tmp_path, [gate()], {k: r for k, r in zip(["Deployment/1", "Deployment/2", "Deployment/3", "Deployment/4"], records.values())})
    trained_dir(ctx, "b" * 64)
    champion = live_champion("gate", ctx)
    assert champion.label == "b" * 64 and champion.model_dir == str(ctx.store.local_path("b" * 64))


def test_champion_with_missing_artifacts_is_an_error_not_a_silent_skip(tmp_path):
    ctx = make_context(tmp_path, [gate()], {"Deployment/api": deployment_record("gate", "e" * 64)})
    with pytest.raises(EvaluationError, match="not in the store"):
        live_champion("gate", ctx)


def test_no_champion_is_skipped_with_a_note_and_base_uses_the_candidate_template(tmp_path):
    evaluation = gate(compare_to=["base", "champion"], prompt=None, model="tuned")
    tuning = resource("TuningJob", "tuned", base_model="builtin:tiny-llama", dataset="d", prompt="p", method="full")
    ctx = make_context(tmp_path, [tuning, evaluation])
    trained_dir(ctx, ctx.fingerprint(tuning.key))
    cand = candidate(evaluation, ctx)
    found, skipped = baselines(evaluation, ctx, cand)
    assert [c.role for c in found] == ["base"] and found[0].base_ref == "builtin:tiny-llama"
    assert found[0].template == cand.template
    assert skipped == {"champion": "no live deployment uses this gate yet"}


def test_relative_threshold_needs_a_baseline_at_validate_time():
    with pytest.raises(Exception, match="compare_to has no"):
        gate(compare_to="none", thresholds=[{"metric": "rouge_l", "min_delta_vs_baseline": 0.1}])


def test_report_files_compare_candidate_and_baseline_and_list_the_worst_examples(tmp_path):
    from llmops_engine.evaluation.contenders import Contender
    from llmops_engine.evaluation.metrics import ModelRun
    from llmops_engine.evaluation.outcome import assess
    from llmops_engine.evaluation.report import write_results

    spec = gate(compare_to="base", thresholds=[{"metric": "exact_match", "min_delta_vs_baseline": 0.5}]).spec
    examples = [{"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(3)]
    runs = {
        "candidate": [ModelRun(["answer 0", "answer 1", "wrong"], [2, 2, 1], [5.0, 5.0, 5.0], [0.1, 0.2, 0.3])],
        "base": [ModelRun(["x", "y", "z"], [9, 9, 9], [4.0, 4.0, 4.0], [5.0, 5.0, 5.0])],
    }
    contenders = [Contender("candidate", "abc123", {}, "h"), Contender("base", "base:builtin:tiny-llama", {}, "h")]
    outcome = assess(spec, contenders, {}, examples, runs)
    info = {"evaluation": "gate", "fingerprint": "f" * 64, "dataset": {"name": "d"}, "seed": 0, "batch_size": 16,
            "template_hash": "h" * 64, "generation": spec.generation.model_dump(), "repeats": 1, "aggregate": "mean"}
    write_results(tmp_path, outcome, info)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["candidate"]["metrics"]["exact_match"] == pytest.approx(2 / 3)
    assert metrics["baselines"]["base"]["metrics"]["exact_match"] == 0.0
    assert metrics["thresholds"][0]["status"] == "pass" and metrics["passed"] is True
    rows = [json.loads(line) for line in (tmp_path / "examples.jsonl").read_text().splitlines()]
    assert rows[2] == {
        "index": 2, "instruction": "q2", "input": "", "expected": "answer 2",
        "candidate": {"output": "wrong", "scores": {"exact_match": 0.0}},
        "base": {"output": "z", "scores": {"exact_match": 0.0}},
    }
    report = (tmp_path / "report.md").read_text()
    assert "| exact_match | 0.6667 | 0 | higher |" in report
    worst = report.split("## Worst 3 examples by exact_match")[1]
    assert worst.index("### Example 2") < worst.index("### Example 0")  # the miss comes first


@pytest.mark.parametrize(
    "how, exact_match, latency_p50_ms, passed",
    [
        ("mean", 0.5, 20.0, True),  # the average repeat clears exact_match >= 0.4
        ("min", 0.0, 30.0, False),  # the worst repeat: the lower match, the HIGHER latency
    ],
)
def test_repeats_are_combined_as_the_spec_says_and_the_gate_judges_the_combination(how, exact_match, latency_p50_ms, passed):
    from llmops_engine.evaluation.contenders import Contender
    from llmops_engine.evaluation.metrics import ModelRun
    from llmops_engine.evaluation.outcome import assess

    spec = gate(
        compare_to="none", repeats=2, aggregate=how, generation={"do_sample": True},
        metrics=["exact_match", "latency_p50_ms"], thresholds=[{"metric": "exact_match", "min": 0.4}],
    ).spec
    examples = [{"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(2)]
    runs = {"candidate": [
        ModelRun(["answer 0", "answer 1"], [2, 2], [10.0, 10.0]),  # every answer right, fast
        ModelRun(["wrong", "also wrong"], [2, 2], [30.0, 30.0]),  # every answer wrong, slow
    ]}
    outcome = assess(spec, [Contender("candidate", "abc123", {}, "h")], {}, examples, runs)
    values = outcome.scores["candidate"].values
    assert values["exact_match"] == pytest.approx(exact_match)
    assert values["latency_p50_ms"] == pytest.approx(latency_p50_ms)
    assert outcome.verdict.passed is passed


def test_variants_sit_beside_the_candidate_in_every_result_file_and_gate_only_where_named(tmp_path):
    from llmops_engine.evaluation.contenders import Contender
    from llmops_engine.evaluation.metrics import ModelRun
    from llmops_engine.evaluation.outcome import assess
    from llmops_engine.evaluation.report import comparison_table, write_results

    thresholds = [{"metric": "exact_match", "min": 0.5}, {"metric": "exact_match", "min_delta_vs_baseline": 0.0,
                                                           "baseline": "base+rag"}]
    spec = gate(compare_to="base", thresholds=thresholds,
                variants=[{"name": "base+rag", "model": "base", "prompt": "p"}]).spec
    examples = [{"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(2)]
    runs = {
        "candidate": [ModelRun(["answer 0", "answer 1"], [2, 2], [5.0, 5.0])],
        "base": [ModelRun(["x", "y"], [9, 9], [4.0, 4.0])],
        "base+rag": [ModelRun(["answer 0", "no"], [2, 1], [6.0, 6.0], sources=[["kb/a.md#0"], ["kb/b.md#1"]])],
    }
    rag = Contender("base+rag", "base:builtin:tiny-llama", {}, "r", knowledge={"name": "docs"})
    contenders = [Contender("candidate", "abc123", {}, "h"), Contender("base", "base:builtin:tiny-llama", {}, "h")]
    outcome = assess(spec, contenders, {}, examples, runs, variants=[rag])
    assert [(c.baseline, c.status) for c in outcome.verdict.checks] == [("base", "pass"), ("base+rag", "pass")]
    info = {"evaluation": "gate", "fingerprint": "f" * 64, "dataset": {"name": "d"}, "seed": 0, "batch_size": 16,
            "template_hash": "h" * 64, "generation": spec.generation.model_dump(), "repeats": 1, "aggregate": "mean"}
    write_results(tmp_path, outcome, info)

    assert comparison_table(outcome).splitlines()[2:] == [
        "| candidate | 1 |", "| base | 0 |", "| base+rag | 0.5 |"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["variants"]["base+rag"]["metrics"]["exact_match"] == 0.5
    assert metrics["variants"]["base+rag"]["knowledge_base"] == "docs" and "base+rag" not in metrics["baselines"]
    rows = [json.loads(line) for line in (tmp_path / "examples.jsonl").read_text().splitlines()]
    assert rows[1]["base+rag"] == {"output": "no", "scores": {"exact_match": 0.0}, "sources": ["kb/b.md#1"]}
    report = (tmp_path / "report.md").read_text()
    assert "## Side by side" in report and "- variant base+rag:" in report and "knowledge base docs" in report
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_a_variant_on_another_model_keeps_the_prompt_but_not_the_candidates_chat_template(tmp_path):
    """A tuned chat model's template carries the chat template it was tuned through; another
    model asked with that prompt must render through its own (or loading it would fail)."""
    from llmops_engine.evaluation import contenders as pick

    chat_prompt = {"format": "chat", "template": "{instruction}"}
    evaluation = resource("Evaluation", "ev", model="base:builtin:tiny-llama", prompt="chat", dataset="d",
                          thresholds=[{"metric": "rouge_l", "min": 0.1}],
                          variants=[{"name": "other", "model": "hf:org/other"},
                                    {"name": "other-chat", "model": "hf:org/other", "prompt": "chat"},
                                    {"name": "untuned", "model": "base"}])
    ctx = make_context(tmp_path, [resource("Prompt", "chat", **chat_prompt), evaluation])
    candidate = pick.Contender("candidate", "abc", {"format": "chat", "template": "{instruction}",
                                                     "chat_template": "{{ tuned through this }}"}, "h",
                               base_ref="builtin:tiny-llama")

    other, other_chat, base = pick.variants(evaluation, ctx, candidate)

    assert other.template["chat_template"] is None and other.template["template"] == "{instruction}"
    assert other_chat.template["chat_template"] is None
    assert base.template["chat_template"] == "{{ tuned through this }}"  # the same family keeps it


@pytest.mark.parametrize("scenario, thresholds, metrics, regression, reports", [
    ("quality only", [{"metric": "rouge_l", "min": 0.1}], [], None, False),
    ("a latency threshold", [{"metric": "latency_p95_ms", "max": 1000}], [], None, True),
    ("latency reported, not gated", [{"metric": "rouge_l", "min": 0.1}], ["latency_p50_ms"], None, True),
    ("latency on the regression set", [{"metric": "rouge_l", "min": 0.1}], [],
     {"dataset": "g", "metrics": ["latency_p95_ms"]}, True),
])
def test_an_evaluation_that_reports_latency_decodes_everything_itself(scenario, thresholds, metrics, regression, reports):
    from llmops_engine.controllers.evaluation import _reports_latency

    spec = {"model": "t", "dataset": "d", "thresholds": thresholds, "metrics": metrics}
    if regression:
        spec["regression"] = regression
    assert _reports_latency(resource("Evaluation", "ev", **spec).spec) is reports, scenario
