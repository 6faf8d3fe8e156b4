"""From raw model runs to a judged outcome: scores per contender, then the gate verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..specs.evaluation import EvaluationSpec
from .contenders import Contender
from .gates import Verdict, judge, with_regression
from .metrics import ModelRun, Scores, aggregate, score

REGRESSION_ROLES = ("candidate", "base")  # forgetting is measured against what the base knows


@dataclass
class RegressionOutcome:
    """The regression set: the candidate and the base scored on a second dataset."""

    dataset: str
    examples: list[dict]
    runs: dict[str, list[ModelRun]]  # role -> one run per repeat
    scores: dict[str, Scores]  # candidate, base, then each variant


@dataclass
class Outcome:
    contenders: list[Contender]  # candidate first
    skipped: dict[str, str]  # baseline name -> why it was not compared
    examples: list[dict]
    runs: dict[str, list[ModelRun]]  # role -> one run per repeat
    scores: dict[str, Scores]  # role -> aggregated values; per-example scores of repeat 1
    verdict: Verdict  # the whole gate: main checks, then the regression set's
    notes: list[str] = field(default_factory=list)
    regression: RegressionOutcome | None = None
    variants: list[Contender] = field(default_factory=list)  # scored beside, gated only where named

    @property
    def systems(self) -> list[Contender]:
        """Every scored system in report order: candidate, baselines, variants."""
        return self.contenders + self.variants

    @property
    def candidate(self) -> Contender:
        return self.contenders[0]

    @property
    def baselines(self) -> list[Contender]:
        return self.contenders[1:]


def assess(
    spec: EvaluationSpec,
    contenders: list[Contender],
    skipped: dict[str, str],
    examples: list[dict],
    runs: dict[str, list[ModelRun]],
    regression_examples: list[dict] | None = None,
    regression_runs: dict[str, list[ModelRun]] | None = None,
    variants: Sequence[Contender] = (),
) -> Outcome:
    """Score and judge. With `spec.regression`, `regression_examples` is its eval split and
    `regression_runs` the candidate's, base's and variants' runs on it (missing runs fail closed)."""
    expected = [e["output"] for e in examples]
    names = spec.metric_names()
    scores = {c.role: _score_repeats(spec, names, expected, runs.get(c.role, [])) for c in [*contenders, *variants]}
    cand = contenders[0].role
    baselines = {c.role: scores[c.role].values for c in contenders[1:]}
    baselines.update({name: None for name in skipped})
    verdict = judge(
        spec.thresholds, scores[cand].values, baselines, examples=len(examples), errors=scores[cand].errors,
        variants={v.role: scores[v.role].values for v in variants},
    )
    notes = [f"{name}: {why}; relative thresholds against it were skipped" for name, why in skipped.items()]
    regression = None
    if spec.regression is not None:
        roles = [*REGRESSION_ROLES, *(v.role for v in variants)]
        regression = _regression(spec, regression_examples or [], regression_runs or {}, roles)
        verdict = with_regression(verdict, _judge_regression(spec, regression))
    return Outcome(contenders, skipped, examples, runs, scores, verdict, notes, regression, list(variants))


def _regression(spec: EvaluationSpec, examples: list[dict], runs: dict[str, list[ModelRun]],
                roles: Sequence[str]) -> RegressionOutcome:
    expected = [e["output"] for e in examples]
    names = spec.regression.metric_names()
    scores = {role: _score_repeats(spec, names, expected, runs.get(role, [])) for role in roles}
    return RegressionOutcome(spec.regression.dataset, examples, runs, scores)


def _judge_regression(spec: EvaluationSpec, regression: RegressionOutcome) -> Verdict:
    candidate, base = regression.scores["candidate"], regression.scores["base"]
    empty = None
    if not regression.examples:
        empty = f"the regression set ({regression.dataset}'s eval split) is empty: nothing was evaluated"
    return judge(
        spec.regression.thresholds, candidate.values, {"base": base.values},
        examples=len(regression.examples), errors=candidate.errors, evaluation_error=empty,
    )


def _score_repeats(spec: EvaluationSpec, names: Sequence[str], expected: list[str], runs: list[ModelRun]) -> Scores:
    if not runs:  # nothing was run (empty eval split): every metric is missing
        return Scores({n: None for n in names}, [], {n: "no examples to score" for n in names})
    per_repeat = [score(names, expected, run, spec.metric_options) for run in runs]
    errors = {name: why for s in per_repeat for name, why in s.errors.items()}
    values = aggregate([s.values for s in per_repeat], spec.aggregate)
    return Scores(values, per_repeat[0].per_example, errors)
