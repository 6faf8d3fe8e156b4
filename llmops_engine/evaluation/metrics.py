"""Metrics: per-example scores and their aggregates, from a model's raw outputs.

Quality metrics are fractions in [0, 1] (BLEU and chrF included, so thresholds on every
quality metric read the same way). Text metrics use well-kept libraries: `rouge-score`
for ROUGE-L, `sacrebleu` for BLEU and chrF (never `evaluate.load`, which needs a hub).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..specs.evaluation import MetricOptions
from ..specs.regexes import regex_problem

LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity", "latency_p50_ms", "latency_p95_ms"})
LOSS_METRICS = frozenset({"eval_loss", "perplexity"})  # need a scoring pass besides generation
NEUTRAL = frozenset({"output_tokens_mean"})  # neither direction is "better"
NOT_DETERMINISTIC = frozenset({"latency_p50_ms", "latency_p95_ms"})  # wall-clock, varies per run


@dataclass(frozen=True)
class ModelRun:
    """What one model produced on the eval examples (one decoding pass)."""

    outputs: list[str]
    output_tokens: list[int]
    latencies_ms: list[float]  # per example: wall time of the generate call that answered it
    losses: list[float] | None = None  # mean token loss on the expected response, per example
    sources: list[list[str]] | None = None  # per example: the chunk ids a knowledge base retrieved for it
    reused: int = 0  # answers an earlier evaluation gave to the same prompts (answers.py)


@dataclass
class Scores:
    values: dict[str, float | None]  # metric -> aggregate (None: could not be computed)
    per_example: list[dict[str, float]]  # example index -> metric -> score
    errors: dict[str, str] = field(default_factory=dict)  # metric -> why it is None


def normalize(text: str, options: MetricOptions) -> str:
    """Text as exact_match/contains compare it."""
    if options.ignore_case:
        text = text.casefold()
    if options.ignore_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if options.normalize_whitespace:
        text = " ".join(text.split())
    return text


def score(names: Sequence[str], expected: Sequence[str], run: ModelRun, options: MetricOptions) -> Scores:
    """Compute each named metric; a metric that fails is recorded as an error, not raised,
    so the gate can fail closed on exactly that metric and still report the others."""
    if len(run.outputs) != len(expected):
        raise ValueError(f"{len(run.outputs)} outputs for {len(expected)} examples")
    result = Scores(values={}, per_example=[{} for _ in expected])
    for name in names:
        try:
            value, per_example = _METRICS[name](expected, run, options)
        except (ValueError, OverflowError, re.error) as exc:
            result.values[name], result.errors[name] = None, str(exc)
            continue
        result.values[name] = value
        for row, example_score in zip(result.per_example, per_example or []):
            row[name] = example_score
    return result


# --- the metrics: each returns (aggregate, per-example scores or None) --------------------

Metric = Callable[[Sequence[str], ModelRun, MetricOptions], tuple[float, list[float] | None]]


def _nonempty(values: Sequence) -> Sequence:
    if not values:
        raise ValueError("no examples to score")
    return values


def _mean(values: Sequence[float]) -> float:
    return math.fsum(_nonempty(values)) / len(values)


def _exact_match(expected, run, options):
    per = [float(normalize(o, options) == normalize(e, options)) for o, e in zip(run.outputs, expected)]
    return _mean(per), per


def _contains(expected, run, options):
    per = [float(normalize(e, options) in normalize(o, options)) for o, e in zip(run.outputs, expected)]
    return _mean(per), per


def _regex_match(expected, run, options):
    flags = re.IGNORECASE if options.ignore_case else 0
    per = []
    for index, (output, target) in enumerate(zip(run.outputs, expected)):
        pattern = options.regex if options.regex is not None else target
        if options.regex is None and (problem := regex_problem(pattern)):  # data, not a checked spec
            raise ValueError(f"example {index}: expected text is refused as a regular expression ({problem}); "
                             "set metric_options.regex")
        try:
            per.append(float(re.search(pattern, output, flags) is not None))
        except re.error as exc:
            raise ValueError(
                f"example {index}: expected text is not a valid regular expression ({exc}); "
                "set metric_options.regex"
            ) from exc
    return _mean(per), per


def _rouge_l(expected, run, options):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per = [scorer.score(e, o)["rougeL"].fmeasure for o, e in zip(run.outputs, expected)]
    return _mean(per), per


def _bleu(expected, run, options):
    from sacrebleu.metrics import BLEU

    _nonempty(expected)
    # effective order: n-gram orders absent from every output are left out, so answers
    # shorter than 4 tokens are not scored 0 (same result as plain BLEU on longer texts)
    bleu = BLEU(effective_order=True)
    per = [bleu.sentence_score(o, [e]).score / 100 for o, e in zip(run.outputs, expected)]
    return bleu.corpus_score(list(run.outputs), [list(expected)]).score / 100, per


def _chrf(expected, run, options):
    from sacrebleu.metrics import CHRF

    _nonempty(expected)
    chrf = CHRF()
    per = [chrf.sentence_score(o, [e]).score / 100 for o, e in zip(run.outputs, expected)]
    return chrf.corpus_score(list(run.outputs), [list(expected)]).score / 100, per


def _losses(run: ModelRun) -> list[float]:
    if run.losses is None:
        raise ValueError("the model run produced no losses")
    if not all(math.isfinite(x) for x in run.losses):
        raise ValueError("the loss is not finite for some examples")
    return run.losses


def _eval_loss(expected, run, options):
    losses = _losses(run)
    return _mean(losses), list(losses)


def _perplexity(expected, run, options):
    # exp of the mean loss (the usual definition), not the mean of per-example perplexities
    losses = _losses(run)
    return math.exp(_mean(losses)), [math.exp(x) for x in losses]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    ordered = sorted(_nonempty(values))
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latency(q: float) -> Metric:
    def metric(expected, run, options):
        return percentile(run.latencies_ms, q), list(run.latencies_ms)

    return metric


def _output_tokens_mean(expected, run, options):
    per = [float(n) for n in run.output_tokens]
    return _mean(per), per


_METRICS: dict[str, Metric] = {
    "exact_match": _exact_match,
    "contains": _contains,
    "regex_match": _regex_match,
    "rouge_l": _rouge_l,
    "bleu": _bleu,
    "chrf": _chrf,
    "eval_loss": _eval_loss,
    "perplexity": _perplexity,
    "latency_p50_ms": _latency(50),
    "latency_p95_ms": _latency(95),
    "output_tokens_mean": _output_tokens_mean,
}


def aggregate(repeats: Sequence[dict[str, float | None]], how: str) -> dict[str, float | None]:
    """Combine the metrics of repeated sampled runs. `min` is the pessimistic choice: the
    worst repeat per metric (highest for metrics where lower is better). A metric missing
    from any repeat is missing from the result (fail closed)."""
    combined: dict[str, float | None] = {}
    for name in repeats[0]:
        values = [r.get(name) for r in repeats]
        if any(v is None for v in values):
            combined[name] = None
        elif how == "mean":
            combined[name] = math.fsum(values) / len(values)
        else:
            combined[name] = max(values) if name in LOWER_IS_BETTER else min(values)
    return combined
