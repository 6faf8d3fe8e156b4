"""Gates: do a candidate's metrics meet the thresholds? A pure function of numbers.

Fail closed: a check passes only when it is positively shown to pass. A missing metric,
a metric that could not be computed, an evaluation error or an empty eval split fails
it. A relative bound against a baseline that does not exist (no live champion yet) is
*skipped*, with a note saying so; it neither passes nor fails.

Relative bounds measure improvement, so they read the same for every metric:
`min_delta_vs_baseline: 0.05` means "at least 0.05 better than the baseline" — higher for
rouge_l, lower for eval_loss or latency. `min_ratio_vs_baseline: 1.1` likewise means
"at least 1.1 times as good" (candidate/baseline, or baseline/candidate where lower is
better). For the neutral output_tokens_mean the plain difference and ratio are used.

A regression set (general knowledge the base model has) is judged the same way, against the
base model, and its checks join the gate: the gate passes only when both sets' checks hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Mapping, Sequence

from ..specs.evaluation import Threshold
from .metrics import LOWER_IS_BETTER

Status = Literal["pass", "fail", "skipped"]
REGRESSION_PREFIX = "regression."
MetricValues = Mapping[str, float | None]


@dataclass(frozen=True)
class Check:
    """One bound of one threshold, judged."""

    metric: str
    bound: str  # min | max | min_delta_vs_baseline | min_ratio_vs_baseline
    limit: float
    candidate: float | None
    baseline: str | None = None  # the baseline a relative bound used (absolute: shown beside)
    baseline_value: float | None = None
    observed: float | None = None  # the number compared with the limit
    status: Status = "fail"
    note: str = ""

    def describe_limit(self) -> str:
        text = {
            "min": f">= {fmt(self.limit)}",
            "max": f"<= {fmt(self.limit)}",
            "min_delta_vs_baseline": f"improvement >= {fmt(self.limit)} vs {self.baseline}",
            "min_ratio_vs_baseline": f"ratio >= {fmt(self.limit)} vs {self.baseline}",
        }[self.bound]
        if self.bound.endswith("_vs_baseline") and self.observed is not None:
            text += f" (got {fmt(self.observed)})"
        return text


@dataclass
class Verdict:
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]


def judge(
    thresholds: Sequence[Threshold],
    candidate: MetricValues,
    baselines: Mapping[str, MetricValues | None],
    *,
    examples: int,
    errors: Mapping[str, str] | None = None,
    evaluation_error: str | None = None,
    variants: Mapping[str, MetricValues] | None = None,
) -> Verdict:
    """Judge every bound of every threshold.

    `baselines` maps each compared baseline ("base", "champion") to its metrics, or to None
    when it does not exist (its relative bounds are skipped). `variants` are compared only by
    thresholds that name them (`baseline: base+rag`). `errors` says why a metric is
    missing; `evaluation_error` (or `examples == 0`) fails every check."""
    errors = errors or {}
    named = {**(variants or {}), **baselines}
    verdict = Verdict(checks=[])
    if evaluation_error is None and examples == 0:
        evaluation_error = "the eval split is empty: nothing was evaluated"
    for threshold in thresholds:
        for bound in ("min", "max", "min_delta_vs_baseline", "min_ratio_vs_baseline"):
            limit = getattr(threshold, bound)
            if limit is None:
                continue
            value = candidate.get(threshold.metric)
            if bound in ("min", "max"):
                check = Check(threshold.metric, bound, limit, value, *_shown_baseline(threshold, baselines))
                verdict.checks.append(_absolute(check, errors, evaluation_error))
                continue
            for name in _baselines_for(threshold, baselines):
                check = Check(threshold.metric, bound, limit, value, baseline=name)
                verdict.checks.append(_relative(check, named.get(name), errors, evaluation_error))
    verdict.notes = sorted({c.note for c in verdict.checks if c.status == "skipped"})
    return verdict


def with_regression(main: Verdict, regression: Verdict) -> Verdict:
    """One gate from the main checks and the regression set's, whose metrics are labelled
    `regression.<metric>` so that every table and document tells the two apart."""
    labelled = [_with(c, metric=REGRESSION_PREFIX + c.metric) for c in regression.checks]
    return Verdict(checks=main.checks + labelled, notes=sorted({*main.notes, *regression.notes}))


def _baselines_for(threshold: Threshold, baselines: Mapping[str, MetricValues | None]) -> list[str]:
    """A relative threshold names its baseline, or applies to every compared one."""
    if threshold.baseline is not None:
        return [threshold.baseline]
    return list(baselines)


def _shown_baseline(threshold: Threshold, baselines: Mapping[str, MetricValues | None]) -> tuple:
    """For an absolute bound, the first existing baseline's value, shown for context only."""
    for name, values in baselines.items():
        if values is not None:
            return name, values.get(threshold.metric)
    return None, None


def _missing(check: Check, errors: Mapping[str, str], evaluation_error: str | None) -> str | None:
    """Why the candidate value cannot be judged, or None when it can."""
    if evaluation_error:
        return evaluation_error
    if check.candidate is None:
        return f"not computed: {errors[check.metric]}" if check.metric in errors else "metric missing"
    if math.isnan(check.candidate):
        return "metric is NaN"
    return None


def _absolute(check: Check, errors, evaluation_error) -> Check:
    problem = _missing(check, errors, evaluation_error)
    if problem:
        return _with(check, status="fail", note=problem)
    ok = check.candidate >= check.limit if check.bound == "min" else check.candidate <= check.limit
    return _with(check, observed=check.candidate, status="pass" if ok else "fail")


def _relative(check: Check, baseline: MetricValues | None, errors, evaluation_error) -> Check:
    if baseline is None:
        return _with(check, status="skipped", note=f"no {check.baseline} model to compare with yet")
    problem = _missing(check, errors, evaluation_error)
    base_value = baseline.get(check.metric)
    check = _with(check, baseline_value=base_value)
    if problem:
        return _with(check, status="fail", note=problem)
    if base_value is None or math.isnan(base_value):
        return _with(check, status="fail", note=f"{check.baseline} metric missing")
    if check.bound == "min_delta_vs_baseline":
        observed = improvement(check.metric, check.candidate, base_value)
    else:
        observed = ratio(check.metric, check.candidate, base_value)
        if observed is None:
            return _with(check, status="fail", note="ratio undefined (a value is 0); use min_delta_vs_baseline")
    return _with(check, observed=observed, status="pass" if observed >= check.limit else "fail")


def improvement(metric: str, candidate: float, baseline: float) -> float:
    return baseline - candidate if metric in LOWER_IS_BETTER else candidate - baseline


def ratio(metric: str, candidate: float, baseline: float) -> float | None:
    numerator, denominator = (baseline, candidate) if metric in LOWER_IS_BETTER else (candidate, baseline)
    return None if denominator == 0 else numerator / denominator


def _with(check: Check, **changes) -> Check:
    return replace(check, **changes)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    if abs(value) >= 1000:  # milliseconds, token counts: whole numbers read best
        return f"{value:.0f}"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def table(verdict: Verdict) -> str:
    """The gate as a Markdown table (readable as-is in a terminal):
    metric | candidate | baseline | threshold | result."""
    lines = ["| metric | candidate | baseline | threshold | result |", "|---|---|---|---|---|"]
    for c in verdict.checks:
        baseline = f"{fmt(c.baseline_value)} ({c.baseline})" if c.baseline else "-"
        result = c.status.upper() if c.status != "skipped" else "skipped"
        if c.note:
            result += f": {c.note}"
        lines.append(f"| {c.metric} | {fmt(c.candidate)} | {baseline} | {c.describe_limit()} | {result} |")
    return "\n".join(lines)
