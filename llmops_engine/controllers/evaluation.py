"""Evaluation controller: score a candidate model and its baselines, then gate promotion.

Recipe: pick the contenders (candidate, base, live champion) → read the eval split → run
them all in one Ray task → compute metrics → judge thresholds → write metrics.json,
examples.jsonl and report.md. A failed gate raises GateFailed (which stops everything
downstream); its report is kept under <store>/reports/<fingerprint>/, outside objects/,
so it can be read but never mistaken for a passed result.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import GateFailed
from ..evaluation import contenders as pick
from ..evaluation.gates import table
from ..evaluation.outcome import Outcome, assess
from ..evaluation.report import write_results
from ..specs.resource import Resource
from .base import ApplyContext, BaseController, Outputs


class EvaluationController(BaseController):
    kind = "Evaluation"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        from ..evaluation.runner import load_examples, run_on_cluster

        spec = resource.spec
        fingerprint = ctx.fingerprint(resource.key)
        candidate = pick.candidate(resource, ctx)
        baselines, skipped = pick.baselines(resource, ctx, candidate)
        contenders = [candidate, *baselines]
        for name, why in skipped.items():
            ctx.report(f"{resource.key}: not comparing with {name}: {why}")

        examples = load_examples(ctx.artifact_dir(f"Dataset/{spec.dataset}"), spec.max_examples)
        runs = {}
        if examples:  # an empty split runs nothing and fails closed in the verdict
            ctx.report(
                f"{resource.key}: scoring {', '.join(c.role for c in contenders)} on {len(examples)} examples"
            )
            runs = run_on_cluster(
                ctx.project, ctx.store.root, contenders, examples, spec.generation, spec.repeats, spec.gpus,
                run_name=f"{resource.name}-{fingerprint[:12]}",
            )
        outcome = assess(spec, contenders, skipped, examples, runs)
        write_results(staging, outcome, _run_info(resource, ctx, fingerprint, candidate))

        if not outcome.verdict.passed:
            report_dir = ctx.store.keep_report(fingerprint, staging)
            raise _gate_failed(resource, outcome, report_dir, ctx.store.report_url(fingerprint))
        ctx.report(f"{resource.key}: gate passed for {spec.model}")
        return _outputs(outcome)


def _run_info(resource: Resource, ctx: ApplyContext, fingerprint: str, candidate) -> dict:
    spec = resource.spec
    dataset_key = f"Dataset/{spec.dataset}"
    try:
        content_hash = ctx.outputs_of(dataset_key).get("content_hash", {}).get("eval")
    except KeyError:
        content_hash = None
    return {
        "evaluation": resource.name,
        "fingerprint": fingerprint,
        "dataset": {"name": spec.dataset, "fingerprint": ctx.fingerprint(dataset_key), "eval_content_hash": content_hash},
        "seed": spec.generation.seed,
        "batch_size": spec.generation.batch_size,
        "template_hash": candidate.template_hash,
        "generation": spec.generation.model_dump(),
        "repeats": spec.repeats,
        "aggregate": spec.aggregate,
    }


def _gate_failed(resource: Resource, outcome: Outcome, report_dir: Path, shared_url: str | None) -> GateFailed:
    failed = len(outcome.verdict.failures)
    gate_table = table(outcome.verdict)
    lines = [
        f"{resource.key}: gate failed ({failed} of {len(outcome.verdict.checks)} checks): "
        f"{resource.spec.model} is not promoted; the live version keeps serving.",
        gate_table,
        *[f"note: {n}" for n in outcome.notes],
        f"Report: {report_dir / 'report.md'}" + (f" (shared copy: {shared_url})" if shared_url else ""),
    ]
    return GateFailed("\n".join(lines), table=gate_table, report_dir=report_dir)


def _outputs(outcome: Outcome) -> Outputs:
    return {
        "passed": True,
        "model_fingerprint": outcome.candidate.label,
        "metrics": outcome.scores[outcome.candidate.role].values,
        "baseline_metrics": {c.role: outcome.scores[c.role].values for c in outcome.baselines},
        "examples": len(outcome.examples),
        "notes": outcome.notes,
        "report": "report.md",
    }
