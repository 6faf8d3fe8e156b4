"""The gate against forgetting, without a model: a regression set's checks join the gate
(scenario table), its reports label them, the spec reference is checked like any other
(file:line), and an eval-only Dataset keeps every row and cannot be tuned on."""

import json

import pytest
from pydantic import ValidationError

from llmops_engine.controllers.evaluation import EvaluationController
from llmops_engine.data.pipeline import build
from llmops_engine.data.split import is_eval
from llmops_engine.errors import DataError, GateFailed, SpecError
from llmops_engine.evaluation.contenders import Contender
from llmops_engine.evaluation.metrics import ModelRun
from llmops_engine.evaluation.outcome import assess
from llmops_engine.evaluation.report import write_results
from llmops_engine.fingerprint import ContentHasher, fingerprint_all
from llmops_engine.graph import topological_order
from llmops_engine.specs.dataset import DatasetSpec, Split
from llmops_engine.specs.loader import load_resources
from tests.eval_helpers import DATASET, PROMPT, make_context, publish_dataset, resource

CANDIDATE = Contender("candidate", "abc123", {}, "h")
BASE = Contender("base", "base:builtin:tiny-llama", {}, "h")
MAIN_EXAMPLES = [{"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(4)]
GENERAL = [{"instruction": f"capital of {c}?", "input": "", "output": city}
           for c, city in (("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Peru", "Lima"))]
KNOWS = [e["output"] for e in GENERAL]


def run_of(outputs):
    return [ModelRun(list(outputs), [1] * len(outputs), [1.0] * len(outputs), [0.5] * len(outputs))]


def answers(right: int, examples) -> list[str]:
    """`right` correct answers, then wrong ones."""
    return [e["output"] if i < right else "no idea" for i, e in enumerate(examples)]


def evaluation_spec(regression_thresholds, main_thresholds=({"metric": "exact_match", "min": 0.5},), **extra):
    return resource(
        "Evaluation", "gate", model="base:builtin:tiny-llama", prompt="p", dataset="d", compare_to="none",
        thresholds=list(main_thresholds),
        regression={"dataset": "general", "thresholds": list(regression_thresholds), **extra},
    ).spec


FORGET_AT_MOST_5_POINTS = {"metric": "exact_match", "min_delta_vs_baseline": -0.05}

# (scenario, main right answers of 4, regression: candidate right, base right, threshold, statuses of
#  [main check, regression checks...], why the failing regression check fails)
SCENARIOS = [
    ("both pass", 4, 4, 4, FORGET_AT_MOST_5_POINTS, ["pass", "pass"], None),
    ("main passes, regression forgets: fail", 4, 2, 4, FORGET_AT_MOST_5_POINTS, ["pass", "fail"], ""),
    ("regression passes, main fails: fail", 1, 4, 4, FORGET_AT_MOST_5_POINTS, ["fail", "pass"], None),
    ("a looser bound lets the same forgetting through", 4, 2, 4,
     {"metric": "exact_match", "min_delta_vs_baseline": -0.5}, ["pass", "pass"], None),
    ("absolute regression bound", 4, 1, 4, {"metric": "exact_match", "min": 0.5}, ["pass", "fail"], ""),
    ("candidate better than base passes", 4, 4, 1, FORGET_AT_MOST_5_POINTS, ["pass", "pass"], None),
]


@pytest.mark.parametrize("scenario, main_right, cand_right, base_right, threshold, statuses, why", SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_the_gate_is_main_and_regression(scenario, main_right, cand_right, base_right, threshold, statuses, why):
    spec = evaluation_spec([threshold])
    outcome = assess(
        spec, [CANDIDATE], {}, MAIN_EXAMPLES, {"candidate": run_of(answers(main_right, MAIN_EXAMPLES))},
        GENERAL, {"candidate": run_of(answers(cand_right, GENERAL)), "base": run_of(answers(base_right, GENERAL))},
    )
    assert [c.status for c in outcome.verdict.checks] == statuses
    assert outcome.verdict.passed == ("fail" not in statuses)
    assert [c.metric for c in outcome.verdict.checks] == ["exact_match", "regression.exact_match"]
    regression_check = outcome.verdict.checks[1]
    if threshold.get("min_delta_vs_baseline") is not None:
        assert regression_check.baseline == "base"
        assert regression_check.observed == pytest.approx((cand_right - base_right) / 4)


@pytest.mark.parametrize(
    "scenario, regression_runs, examples, note",
    [
        ("candidate metric missing", {"base": run_of(KNOWS)}, GENERAL, "no examples to score"),
        ("base metric missing", {"candidate": run_of(KNOWS)}, GENERAL, "base metric missing"),
        ("regression set empty", {}, [], "the regression set (general's eval split) is empty"),
    ],
)
def test_regression_fails_closed(scenario, regression_runs, examples, note):
    spec = evaluation_spec([FORGET_AT_MOST_5_POINTS, {"metric": "rouge_l", "min": 0.0}])
    outcome = assess(spec, [CANDIDATE], {}, MAIN_EXAMPLES, {"candidate": run_of(answers(4, MAIN_EXAMPLES))},
                     examples, regression_runs)
    main, relative, absolute = outcome.verdict.checks
    assert main.status == "pass" and not outcome.verdict.passed
    assert relative.status == "fail" and note in relative.note
    # an absolute bound needs only the candidate: it fails unless the candidate was scored
    assert absolute.status == ("pass" if scenario == "base metric missing" else "fail")


def test_regression_thresholds_compare_with_the_base_only():
    with pytest.raises(ValidationError, match="regression thresholds compare with the base model"):
        evaluation_spec([{**FORGET_AT_MOST_5_POINTS, "baseline": "champion"}])


def test_a_regression_set_may_be_reported_without_gating_but_not_be_empty_handed():
    reported = evaluation_spec([], metrics=["contains"])
    outcome = assess(reported, [CANDIDATE], {}, MAIN_EXAMPLES, {"candidate": run_of(answers(4, MAIN_EXAMPLES))},
                     GENERAL, {"candidate": run_of(answers(2, GENERAL)), "base": run_of(KNOWS)})
    assert not any(c.metric.startswith("regression.") for c in outcome.verdict.checks)
    assert outcome.regression.scores["candidate"].values["contains"] is not None
    with pytest.raises(ValidationError, match="give thresholds to gate on the regression set, or metrics to report"):
        evaluation_spec([])


def test_report_files_label_the_regression_rows(tmp_path):
    spec = evaluation_spec([FORGET_AT_MOST_5_POINTS], metrics=["rouge_l"])
    outcome = assess(spec, [CANDIDATE], {}, MAIN_EXAMPLES, {"candidate": run_of(answers(4, MAIN_EXAMPLES))},
                     GENERAL, {"candidate": run_of(answers(2, GENERAL)), "base": run_of(KNOWS)})
    info = {"evaluation": "gate", "fingerprint": "f" * 64, "dataset": {"name": "d"}, "seed": 0, "batch_size": 16,
            "template_hash": "h" * 64, "generation": spec.generation.model_dump(), "repeats": 1, "aggregate": "mean",
            "regression_dataset": {"name": "general", "base_model": BASE.label}}
    write_results(tmp_path, outcome, info)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["passed"] is False
    assert metrics["regression"]["dataset"] == "general" and metrics["regression"]["examples"] == 4
    assert metrics["regression"]["candidate"]["metrics"] == {"exact_match": 0.5, "rouge_l": 0.5}
    assert metrics["regression"]["base"]["metrics"]["exact_match"] == 1.0
    failed = [t for t in metrics["thresholds"] if t["status"] == "fail"]
    assert [t["metric"] for t in failed] == ["regression.exact_match"]
    report = (tmp_path / "report.md").read_text()
    assert "## Regression set: general" in report and "`base:builtin:tiny-llama`" in report
    assert "| regression.exact_match | 0.5 | 1 (base) | improvement >= -0.05 vs base (got -0.5) | FAIL |" in report
    assert "| exact_match | 0.5 | 1 | higher |" in report  # the regression metrics table, candidate | base
    assert "### Regression example 2 (exact_match 0)" in report
    rows = [json.loads(line) for line in (tmp_path / "regression_examples.jsonl").read_text().splitlines()]
    assert rows[3]["expected"] == "Lima" and rows[3]["candidate"]["output"] == "no idea"
    assert rows[3]["base"] == {"output": "Lima", "scores": {"exact_match": 1.0, "rouge_l": 1.0}}


def test_a_failed_regression_check_fails_the_apply_with_exit_3_naming_it(tmp_path, monkeypatch):
    """The controller reads the regression set, adds the base (compare_to: none) for it only,
    and a forgetting candidate raises GateFailed naming the regression check."""
    from llmops_engine.evaluation import runner

    evaluation = resource(
        "Evaluation", "gate", model="base:builtin:tiny-llama", prompt="p", dataset="d", compare_to="none",
        thresholds=[{"metric": "exact_match", "min": 0.5}],
        regression={"dataset": "general", "thresholds": [FORGET_AT_MOST_5_POINTS]},
    )
    general = resource("Dataset", "general", **{**DATASET, "split": {"eval_fraction": 1.0}})
    ctx = make_context(tmp_path, [resource("Prompt", "p", **PROMPT), resource("Dataset", "d", **DATASET),
                                  general, evaluation])
    publish_dataset(ctx, "d", eval_rows=MAIN_EXAMPLES)
    publish_dataset(ctx, "general", eval_rows=GENERAL)
    asked = {}

    def scripted(project, store_root, contenders, suites, *args, **kwargs):
        # pure stand-in for the Ray task (test_eval_e2e runs the real one): right on the main
        # set, forgetting half the regression set that the base knows
        asked.update(roles=[c.role for c in contenders], suites={s.name: s.roles for s in suites})
        return {"main": {"candidate": run_of(answers(4, MAIN_EXAMPLES))},
                "regression": {"candidate": run_of(answers(2, GENERAL)), "base": run_of(KNOWS)}}

    monkeypatch.setattr(runner, "run_on_cluster", scripted)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(GateFailed) as caught:
        EvaluationController().apply(evaluation, ctx, staging)

    assert asked["roles"] == ["candidate", "base"]  # compare_to: none, yet the base is loaded for regression
    assert asked["suites"] == {"main": ["candidate"], "regression": ["candidate", "base"]}
    error = caught.value
    assert error.exit_code == 3
    assert "gate failed (1 of 2 checks, 1 on the regression set general)" in str(error)
    assert "| regression.exact_match | 0.5 | 1 (base) |" in error.table and "FAIL" in error.table
    metrics = json.loads((error.report_dir / "metrics.json").read_text())
    assert metrics["regression_dataset"]["name"] == "general"
    assert metrics["regression_dataset"]["base_model"] == "base:builtin:tiny-llama"


# --- the regression dataset is a reference: ordered, fingerprinted, validated ----------------
PROMPT_YAML = "apiVersion: llmops/v1\nkind: Prompt\nmetadata: {name: p}\nspec:\n  template: 'Q: {instruction}'\n"
DATASET_YAML = """\
apiVersion: llmops/v1
kind: Dataset
metadata: {{name: {name}}}
spec:
  source: {{path: data/x.jsonl}}
  columns: {{instruction: q, output: a}}
  split: {{eval_fraction: {fraction}}}
"""
EVALUATION_YAML = """\
apiVersion: llmops/v1
kind: Evaluation
metadata: {{name: ev}}
spec:
  model: base:builtin:tiny-llama
  prompt: p
  dataset: d
  thresholds:
    - {{metric: exact_match, min: 0.1}}
  regression:
    dataset: {regression}
    thresholds: [{{metric: exact_match, min_delta_vs_baseline: -0.05}}]
"""
TUNING_YAML = """\
apiVersion: llmops/v1
kind: TuningJob
metadata: {{name: t}}
spec:
  base_model: builtin:tiny-llama
  dataset: {dataset}
  prompt: p
"""


def project(make_project, *, regression="general", general_fraction="1.0", tuning_dataset=None):
    specs = {
        "base.yaml": PROMPT_YAML + "---\n" + DATASET_YAML.format(name="d", fraction="0.1") + "---\n"
        + DATASET_YAML.format(name="general", fraction=general_fraction),
        "broken.yaml": EVALUATION_YAML.format(regression=regression)
        + (("---\n" + TUNING_YAML.format(dataset=tuning_dataset)) if tuning_dataset else ""),
    }
    root = make_project(specs)
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    return root


@pytest.mark.parametrize(
    "case, options, line, path, fragment",
    [
        ("regression dataset missing", {"regression": "general-qa"}, 11, "spec.regression.dataset",
         "no Dataset named 'general-qa'; did you mean 'general'?"),
        ("regression dataset of the wrong kind", {"regression": "p"}, 11, "spec.regression.dataset",
         "'p' is a Prompt, but spec.regression.dataset needs a Dataset"),
        ("tuning on an eval-only dataset", {"tuning_dataset": "general"}, 19, "spec.dataset",
         "Dataset 'general' is eval-only (split.eval_fraction: 1.0), so it has no train rows"),
    ],
)
def test_validate_locates_regression_and_eval_only_problems(make_project, case, options, line, path, fragment):
    root = project(make_project, **options)
    with pytest.raises(SpecError) as info:
        load_resources(root, ["specs"])
    matching = [i for i in info.value.issues if fragment in i.message]
    assert matching, str(info.value)
    assert (matching[0].file, matching[0].line, matching[0].path) == ("specs/broken.yaml", line, path)


def test_validate_cli_names_the_file_and_line(make_project):
    from typer.testing import CliRunner

    from llmops_engine.cli import app

    root = project(make_project, regression="general-qa")
    result = CliRunner().invoke(app, ["validate", "-C", str(root)])
    assert result.exit_code != 0
    assert "specs/broken.yaml:11" in result.output and "no Dataset named 'general-qa'" in result.output


def test_tuning_on_a_dataset_with_a_train_split_is_fine(make_project):
    root = project(make_project, general_fraction="0.5", tuning_dataset="general")
    assert {r.key for r in load_resources(root, ["specs"])} >= {"TuningJob/t", "Evaluation/ev"}


def test_the_regression_dataset_is_ordered_before_and_feeds_the_evaluation(make_project):
    def fingerprints(root):
        by_key = {r.key: r for r in load_resources(root, ["specs"])}
        order = topological_order(by_key)
        return order, fingerprint_all(by_key, order, ContentHasher(root))[0]

    root = project(make_project)
    order, before = fingerprints(root)
    assert order.index("Dataset/general") < order.index("Evaluation/ev")

    base = root / "specs" / "base.yaml"
    general = DATASET_YAML.format(name="general", fraction="1.0")
    base.write_text(base.read_text().replace(general, general.replace("output: a}", "input: q, output: a}")))
    _, after = fingerprints(root)
    assert before["Dataset/d"] == after["Dataset/d"] and before["Dataset/general"] != after["Dataset/general"]
    assert before["Evaluation/ev"] != after["Evaluation/ev"]


# --- eval-only Datasets ---------------------------------------------------------------------
@pytest.mark.parametrize("fraction, accepted", [(1.0, True), (0.999, True), (0.0, False), (1.01, False), (-0.1, False)])
def test_eval_fraction_bounds(fraction, accepted):
    if accepted:
        assert Split(eval_fraction=fraction).eval_fraction == fraction
    else:
        with pytest.raises(ValidationError, match="greater than 0|less than or equal to 1"):
            Split(eval_fraction=fraction)


def test_eval_fraction_one_keeps_every_row_even_at_the_top_of_the_hash_range(monkeypatch):
    from llmops_engine.data import split

    # A hash of 2**64 - 1 is 1.0 as a float: `< eval_fraction` alone would send the row to train.
    monkeypatch.setattr(split, "content_hash", lambda salt, example: 2**64 - 1)
    assert is_eval({"instruction": "x", "output": "y"}, Split(eval_fraction=1.0))
    assert not is_eval({"instruction": "x", "output": "y"}, Split(eval_fraction=0.99))


def test_an_eval_only_dataset_builds_with_every_row_in_eval(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(50)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec.model_validate({"source": {"path": "data/rows.jsonl"},
                                       "columns": {"instruction": "q", "output": "a"},
                                       "split": {"eval_fraction": 1.0}})
    result = build("general", spec, tmp_path, tmp_path / "out", tmp_path / "failed")
    assert (result.train_rows, result.eval_rows) == (0, 50)
    assert (tmp_path / "out" / "train.jsonl").read_text() == ""
    assert len((tmp_path / "out" / "eval.jsonl").read_text().splitlines()) == 50

    (tmp_path / "data" / "rows.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows to evaluate"):
        build("general", spec, tmp_path, tmp_path / "out2", tmp_path / "failed")
