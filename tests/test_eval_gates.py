"""Threshold semantics as scenario tables: absolute, relative, fail closed, skipped champion."""

import pytest

from llmops_engine.evaluation.gates import judge, table
from llmops_engine.specs.evaluation import Threshold

NAN = float("nan")


def T(metric, **bounds):
    return Threshold(metric=metric, **bounds)


# (scenario, threshold, candidate metrics, baselines, expected statuses in check order)
SCENARIOS = [
    ("min met", T("rouge_l", min=0.4), {"rouge_l": 0.5}, {}, ["pass"]),
    ("min is inclusive", T("rouge_l", min=0.5), {"rouge_l": 0.5}, {}, ["pass"]),
    ("min missed", T("rouge_l", min=0.6), {"rouge_l": 0.5}, {}, ["fail"]),
    ("max met", T("latency_p95_ms", max=200), {"latency_p95_ms": 100.0}, {}, ["pass"]),
    ("max missed", T("latency_p95_ms", max=200), {"latency_p95_ms": 300.0}, {}, ["fail"]),
    ("min and max: both judged", T("exact_match", min=0.2, max=0.3), {"exact_match": 0.5}, {}, ["pass", "fail"]),
    ("delta up met", T("rouge_l", min_delta_vs_baseline=0.1), {"rouge_l": 0.5}, {"base": {"rouge_l": 0.25}}, ["pass"]),
    ("delta up missed", T("rouge_l", min_delta_vs_baseline=0.3), {"rouge_l": 0.5}, {"base": {"rouge_l": 0.25}}, ["fail"]),
    ("delta on a loss means lower", T("eval_loss", min_delta_vs_baseline=0.5), {"eval_loss": 1.0}, {"base": {"eval_loss": 2.0}}, ["pass"]),
    ("loss got worse", T("eval_loss", min_delta_vs_baseline=0.0), {"eval_loss": 2.0}, {"base": {"eval_loss": 1.0}}, ["fail"]),
    ("ratio met", T("rouge_l", min_ratio_vs_baseline=1.5), {"rouge_l": 0.6}, {"base": {"rouge_l": 0.3}}, ["pass"]),
    ("ratio on latency: baseline/candidate", T("latency_p95_ms", min_ratio_vs_baseline=0.9), {"latency_p95_ms": 120.0}, {"base": {"latency_p95_ms": 100.0}}, ["fail"]),
    ("ratio undefined fails", T("rouge_l", min_ratio_vs_baseline=1.0), {"rouge_l": 0.6}, {"base": {"rouge_l": 0.0}}, ["fail"]),
    ("missing metric fails", T("rouge_l", min=0.1), {}, {}, ["fail"]),
    ("NaN fails", T("rouge_l", min=0.1), {"rouge_l": NAN}, {}, ["fail"]),
    ("None (not computed) fails", T("rouge_l", min=0.1), {"rouge_l": None}, {}, ["fail"]),
    ("baseline lacks metric fails", T("rouge_l", min_delta_vs_baseline=0.0), {"rouge_l": 0.5}, {"base": {}}, ["fail"]),
    ("no champion yet: skipped", T("rouge_l", min_delta_vs_baseline=0.0), {"rouge_l": 0.5}, {"champion": None}, ["skipped"]),
    (
        "both baselines, no explicit one: one check each",
        T("rouge_l", min_delta_vs_baseline=0.1),
        {"rouge_l": 0.5},
        {"base": {"rouge_l": 0.1}, "champion": {"rouge_l": 0.45}},
        ["pass", "fail"],
    ),
    (
        "explicit baseline: only that one",
        T("rouge_l", min_delta_vs_baseline=0.1, baseline="base"),
        {"rouge_l": 0.5},
        {"base": {"rouge_l": 0.1}, "champion": {"rouge_l": 0.45}},
        ["pass"],
    ),
]


@pytest.mark.parametrize("scenario, threshold, candidate, baselines, statuses", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_threshold_scenarios(scenario, threshold, candidate, baselines, statuses):
    verdict = judge([threshold], candidate, baselines, examples=10)
    assert [c.status for c in verdict.checks] == statuses
    assert verdict.passed == ("fail" not in statuses)


def test_delta_and_ratio_are_reported_as_observed():
    verdict = judge([T("eval_loss", min_delta_vs_baseline=0.5, min_ratio_vs_baseline=1.5)],
                    {"eval_loss": 1.0}, {"base": {"eval_loss": 2.0}}, examples=3)
    delta, ratio = verdict.checks
    assert (delta.observed, ratio.observed) == (1.0, 2.0)  # 2.0 - 1.0 better; 2.0 / 1.0 as good
    assert delta.baseline_value == 2.0


@pytest.mark.parametrize(
    "examples, evaluation_error, why",
    [(0, None, "the eval split is empty"), (5, "model failed to load", "model failed to load")],
)
def test_empty_split_or_evaluation_error_fails_every_check(examples, evaluation_error, why):
    thresholds = [T("rouge_l", min=0.0), T("rouge_l", min_delta_vs_baseline=-1.0)]
    verdict = judge(thresholds, {"rouge_l": 1.0}, {"base": {"rouge_l": 0.0}},
                    examples=examples, evaluation_error=evaluation_error)
    assert not verdict.passed
    assert all(c.status == "fail" and why in c.note for c in verdict.checks)


def test_metric_error_is_named_in_the_failure():
    verdict = judge([T("regex_match", min=0.5)], {"regex_match": None}, {},
                    examples=4, errors={"regex_match": "example 2: bad pattern"})
    assert verdict.checks[0].note == "not computed: example 2: bad pattern"


def test_skipped_champion_passes_with_a_visible_note():
    verdict = judge([T("rouge_l", min=0.1), T("rouge_l", min_delta_vs_baseline=0.05, baseline="champion")],
                    {"rouge_l": 0.3}, {"base": {"rouge_l": 0.1}, "champion": None}, examples=4)
    assert verdict.passed
    assert verdict.notes == ["no champion model to compare with yet"]
    assert "skipped: no champion model to compare with yet" in table(verdict)


def test_table_has_the_promised_columns_and_values():
    verdict = judge([T("rouge_l", min=0.4, min_delta_vs_baseline=0.1)], {"rouge_l": 0.35},
                    {"base": {"rouge_l": 0.3}}, examples=4)
    lines = table(verdict).splitlines()
    assert lines[0] == "| metric | candidate | baseline | threshold | result |"
    assert lines[2] == "| rouge_l | 0.35 | 0.3 (base) | >= 0.4 | FAIL |"
    assert lines[3].startswith("| rouge_l | 0.35 | 0.3 (base) | improvement >= 0.1 vs base (got 0.05")
    assert lines[3].endswith("| FAIL |")


# (scenario, threshold, variants' metrics, expected statuses, expected baseline names)
VARIANT_SCENARIOS = [
    ("named variant beaten", T("rouge_l", min_delta_vs_baseline=0.05, baseline="base+rag"),
     {"base+rag": {"rouge_l": 0.40}}, ["pass"], ["base+rag"]),
    ("named variant not beaten", T("rouge_l", min_delta_vs_baseline=0.05, baseline="base+rag"),
     {"base+rag": {"rouge_l": 0.48}}, ["fail"], ["base+rag"]),
    ("variant lacks the metric: fails closed", T("rouge_l", min_ratio_vs_baseline=1.0, baseline="base+rag"),
     {"base+rag": {}}, ["fail"], ["base+rag"]),
    ("unnamed variants are never a default baseline", T("rouge_l", min_delta_vs_baseline=0.0),
     {"base+rag": {"rouge_l": 0.9}}, ["pass"], ["base"]),
]


@pytest.mark.parametrize("scenario,threshold,variants,statuses,names", VARIANT_SCENARIOS, ids=[s[0] for s in VARIANT_SCENARIOS])
def test_thresholds_may_name_a_variant_as_baseline(scenario, threshold, variants, statuses, names):
    verdict = judge([threshold], {"rouge_l": 0.5}, {"base": {"rouge_l": 0.2}}, examples=10, variants=variants)
    assert [c.status for c in verdict.checks] == statuses
    assert [c.baseline for c in verdict.checks] == names
