"""From raw model runs to a judged outcome: scores per contender, then the gate verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..specs.evaluation import EvaluationSpec
from .contenders import Contender
from .gates import Verdict, judge
from .metrics import ModelRun, Scores, aggregate, score


@dataclass
class Outcome:
    contenders: list[Contender]  # candidate first
    skipped: dict[str, str]  # baseline name -> why it was not compared
    examples: list[dict]
    runs: dict[str, list[ModelRun]]  # role -> one run per repeat
    scores: dict[str, Scores]  # role -> aggregated values; per-example scores of repeat 1
    verdict: Verdict
    notes: list[str] = field(default_factory=list)

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
) -> Outcome:
    expected = [e["output"] for e in examples]
    scores = {c.role: _score_repeats(spec, expected, runs.get(c.role, [])) for c in contenders}
    cand = contenders[0].role
    baselines = {c.role: scores[c.role].values for c in contenders[1:]}
    baselines.update({name: None for name in skipped})
    verdict = judge(
        spec.thresholds, scores[cand].values, baselines, examples=len(examples), errors=scores[cand].errors
    )
    notes = [f"{name}: {why}; relative thresholds against it were skipped" for name, why in skipped.items()]
    return Outcome(contenders, skipped, examples, runs, scores, verdict, notes)


def _score_repeats(spec: EvaluationSpec, expected: list[str], runs: list[ModelRun]) -> Scores:
    names = spec.metric_names()
    if not runs:  # nothing was run (empty eval split): every metric is missing
        return Scores({n: None for n in names}, [], {n: "no examples to score" for n in names})
    per_repeat = [score(names, expected, run, spec.metric_options) for run in runs]
    errors = {name: why for s in per_repeat for name, why in s.errors.items()}
    values = aggregate([s.values for s in per_repeat], spec.aggregate)
    return Scores(values, per_repeat[0].per_example, errors)
