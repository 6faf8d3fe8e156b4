"""The saved result of an Evaluation: metrics.json, examples.jsonl and report.md (plus
regression_examples.jsonl when a regression set is scored, and comparison.png, every system's
scores side by side, when the spec has variants)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .gates import REGRESSION_PREFIX, fmt, table
from .metrics import LOWER_IS_BETTER, NEUTRAL, NOT_DETERMINISTIC
from .outcome import Outcome

WORST_EXAMPLES = 5
COMPARISON_CHART = "comparison.png"
REGRESSION_EXAMPLES = "regression_examples.jsonl"


def write_results(directory: Path, outcome: Outcome, run_info: dict) -> None:
    """Write the three result files; `run_info` holds seed, batch size, dataset, fingerprint..."""
    (directory / "metrics.json").write_text(json.dumps(metrics_document(outcome, run_info), indent=2))
    with (directory / "examples.jsonl").open("w", encoding="utf-8") as handle:
        for row in example_rows(outcome):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    if outcome.regression is not None:
        with (directory / REGRESSION_EXAMPLES).open("w", encoding="utf-8") as handle:
            for row in _rows(outcome.regression.examples, outcome.regression.runs, outcome.regression.scores):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (directory / "report.md").write_text(markdown(outcome, run_info), encoding="utf-8")
    if outcome.variants:
        from .chart import write_comparison_chart

        write_comparison_chart(comparison(outcome), directory / COMPARISON_CHART, run_info["evaluation"])


def metrics_document(outcome: Outcome, run_info: dict) -> dict:
    def model_entry(contender):
        scores = outcome.scores[contender.role]
        return {
            "model": contender.label,
            "template_hash": contender.template_hash,
            "metrics": scores.values,
            "errors": scores.errors,
        }

    document = {
        "passed": outcome.verdict.passed,
        "examples": len(outcome.examples),
        "candidate": model_entry(outcome.candidate),
        "baselines": {c.role: model_entry(c) for c in outcome.baselines},
        "skipped_baselines": outcome.skipped,
        "thresholds": [asdict(c) for c in outcome.verdict.checks],
        "notes": outcome.notes,
        "model_fingerprints": {c.role: c.label for c in outcome.systems},
        "variants": {v.role: {**model_entry(v), "knowledge_base": _knowledge_name(v)} for v in outcome.variants},
        "not_deterministic": sorted(NOT_DETERMINISTIC),
        **run_info,
    }
    if outcome.regression is not None:
        regression = outcome.regression
        document["regression"] = {
            "dataset": regression.dataset,
            "examples": len(regression.examples),
            **{role: {"metrics": s.values, "errors": s.errors} for role, s in regression.scores.items()},
        }
    return document


def example_rows(outcome: Outcome):
    return _rows(outcome.examples, outcome.runs, outcome.scores)


def _rows(examples: list[dict], runs_by_role: dict[str, list], scores: dict):
    for index, example in enumerate(examples):
        row = {
            "index": index,
            "instruction": example["instruction"],
            "input": example.get("input", ""),
            "expected": example["output"],
        }
        for role in scores:
            runs = runs_by_role.get(role) or []
            if not runs:
                continue
            entry = {"output": runs[0].outputs[index], "scores": scores[role].per_example[index]}
            if runs[0].sources is not None:
                entry["sources"] = runs[0].sources[index]
            if len(runs) > 1:
                entry["other_repeats"] = [run.outputs[index] for run in runs[1:]]
            row[role] = entry
        yield row


def markdown(outcome: Outcome, run_info: dict) -> str:
    verdict = "PASSED" if outcome.verdict.passed else "FAILED"
    roles = [c.role for c in outcome.systems]
    lines = [
        f"# Evaluation {run_info['evaluation']}: gate {verdict}",
        "",
        f"- candidate: `{outcome.candidate.label}`",
        *[f"- {c.role}: `{c.label}`" for c in outcome.baselines],
        *[f"- variant {v.role}: `{v.label}`, prompt `{v.template_hash[:12]}`"
          + (f", knowledge base {_knowledge_name(v)}" if v.knowledge else "") for v in outcome.variants],
        f"- dataset: {run_info['dataset']['name']} eval split, {len(outcome.examples)} examples",
        f"- decoding: {_decoding(run_info)}; seed {run_info['seed']}, batch size {run_info['batch_size']}",
        f"- template hash: `{run_info['template_hash'][:12]}`; fingerprint `{run_info['fingerprint'][:12]}`",
        "",
        "## Gate",
        "",
        table(outcome.verdict),
        "",
        *[f"> note: {note}" for note in outcome.notes],
        "",
        "## Metrics",
        "",
        _metrics_table(roles, outcome.scores),
        "",
        "Latency is the wall time of the batched generate call that answered each example "
        "(after one warm-up call); it varies between runs, every other metric is deterministic "
        "for greedy decoding.",
        "",
        *_comparison_section(outcome),
        *_regression_section(outcome, run_info),
        *_worst_examples("", outcome.examples, outcome.runs, outcome.scores, _gated(outcome, main=True)),
    ]
    if outcome.regression is not None:
        regression = outcome.regression
        gated = _gated(outcome, main=False)
        lines += _worst_examples("regression ", regression.examples, regression.runs, regression.scores, gated)
    return "\n".join(lines) + "\n"


def comparison(outcome: Outcome) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """Every system's metrics (and the regression set's, as regression.<metric>), gated or reported:
    (metric names, system -> metric -> value)."""
    main = list(outcome.scores[outcome.candidate.role].values)
    regression = list(outcome.regression.scores["candidate"].values) if outcome.regression else []
    metrics = main + [REGRESSION_PREFIX + m for m in regression]
    values = {}
    for system in outcome.systems:
        row = {m: outcome.scores[system.role].values.get(m) for m in main}
        scored = outcome.regression.scores.get(system.role) if outcome.regression else None
        row |= {REGRESSION_PREFIX + m: scored.values.get(m) if scored else None for m in regression}
        values[system.role] = row
    return metrics, values


def comparison_table(outcome: Outcome) -> str:
    """The side-by-side table (Markdown, readable in a terminal): one row per system."""
    metrics, values = comparison(outcome)
    lines = ["| system | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for system, row in values.items():
        lines.append(f"| {system} | " + " | ".join(fmt(row[m]) for m in metrics) + " |")
    return "\n".join(lines)


def _comparison_section(outcome: Outcome) -> list[str]:
    if not outcome.variants:
        return []
    return [
        "## Side by side",
        "",
        "The candidate, its baselines and the variants on the same examples with the same decoding "
        "(a variant with a knowledge base retrieves its `{context}` per example, as a grounded deployment does).",
        "",
        comparison_table(outcome),
        "",
        f"![comparison]({COMPARISON_CHART})",
        "",
    ]


def _knowledge_name(contender) -> str | None:
    return contender.knowledge["name"] if contender.knowledge else None


def _regression_section(outcome: Outcome, run_info: dict) -> list[str]:
    """The regression set's metrics, candidate beside base; its checks are in the gate table
    above as `regression.<metric>`."""
    regression = outcome.regression
    if regression is None:
        return []
    base_model = run_info.get("regression_dataset", {}).get("base_model", "the base model")
    return [
        f"## Regression set: {regression.dataset}",
        "",
        f"What tuning must not break: {len(regression.examples)} examples from {regression.dataset}'s eval split, "
        f"answered by the candidate and the base (`{base_model}`) with the same prompt template and decoding"
        + (", and by each variant with its own" if outcome.variants else "")
        + f". Its checks (if it has any) are the `{REGRESSION_PREFIX}*` rows of the gate.",
        "",
        _metrics_table(list(regression.scores), regression.scores),
        "",
    ]


def _gated(outcome: Outcome, main: bool) -> list[str]:
    """The gated metrics of the main set (main=True) or of the regression set, in gate order."""
    names = [c.metric for c in outcome.verdict.checks]
    if main:
        return list(dict.fromkeys(n for n in names if not n.startswith(REGRESSION_PREFIX)))
    return list(dict.fromkeys(n.removeprefix(REGRESSION_PREFIX) for n in names if n.startswith(REGRESSION_PREFIX)))


def _decoding(run_info: dict) -> str:
    gen = run_info["generation"]
    if not gen["do_sample"]:
        return f"greedy, max {gen['max_new_tokens']} new tokens"
    return (
        f"sampled (temperature {gen['temperature']}, top_p {gen['top_p']}), max {gen['max_new_tokens']} new "
        f"tokens, {run_info['repeats']} repeats aggregated by {run_info['aggregate']}"
    )


def _metrics_table(roles: list[str], scores: dict) -> str:
    header = "| metric | " + " | ".join(roles) + " | better |"
    lines = [header, "|---" * (len(roles) + 2) + "|"]
    for metric in scores[roles[0]].values:
        cells = [fmt(scores[r].values.get(metric)) for r in roles]
        better = "-" if metric in NEUTRAL else ("lower" if metric in LOWER_IS_BETTER else "higher")
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {better} |")
    return "\n".join(lines)


def _worst_examples(title: str, examples: list[dict], runs_by_role: dict, scores: dict, gated: list[str]) -> list[str]:
    """The candidate's worst examples by the first gated per-example quality metric."""
    per_example = scores["candidate"].per_example
    metric = next(
        (m for m in gated if per_example and m in per_example[0] and m not in NOT_DETERMINISTIC), None
    )
    if metric is None:
        return []
    order = sorted(range(len(per_example)), key=lambda i: per_example[i][metric], reverse=metric in LOWER_IS_BETTER)
    lines = [f"## Worst {min(WORST_EXAMPLES, len(order))} {title}examples by {metric}", ""]
    for index in order[:WORST_EXAMPLES]:
        example = examples[index]
        lines += [f"### {(title + 'example').capitalize()} {index} ({metric} {fmt(per_example[index][metric])})", ""]
        lines += [f"- instruction: {_quote(example['instruction'])}"]
        if example.get("input"):
            lines += [f"- input: {_quote(example['input'])}"]
        lines += [f"- expected: {_quote(example['output'])}"]
        for role in scores:
            runs = runs_by_role.get(role) or []
            if runs:
                score = scores[role].per_example[index].get(metric)
                lines += [f"- {role} ({fmt(score)}): {_quote(runs[0].outputs[index])}"]
        lines.append("")
    return lines


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return f"`{text[:limit]}{'...' if len(text) > limit else ''}`"
