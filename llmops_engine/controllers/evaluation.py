"""Evaluation controller: score a candidate model and its baselines, then gate promotion.

Recipe: pick the contenders (candidate, base, live champion) and the spec's variants → read
the eval split (and the regression set's, scored for the candidate, the base and the variants)
→ run them all in one Ray task → compute metrics → judge thresholds → write metrics.json,
examples.jsonl, report.md and, with variants, the side-by-side comparison.png.
A failed gate raises GateFailed (which stops everything downstream); its report is kept
under <store>/reports/<fingerprint>/, outside objects/, so it can be read but never mistaken
for a passed result.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import GateFailed
from ..evaluation import contenders as pick
from ..evaluation.contenders import Contender
from ..evaluation.gates import REGRESSION_PREFIX, table
from ..evaluation.metrics import ModelRun
from ..evaluation.outcome import REGRESSION_ROLES, Outcome, assess
from ..evaluation.report import comparison_table, write_results
from ..specs.resource import Resource
from .base import ApplyContext, BaseController, Outputs


class EvaluationController(BaseController):
    kind = "Evaluation"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        from ..evaluation.runner import load_examples

        spec = resource.spec
        fingerprint = ctx.fingerprint(resource.key)
        candidate = pick.candidate(resource, ctx)
        baselines, skipped = pick.baselines(resource, ctx, candidate)
        contenders = [candidate, *baselines]
        variants = pick.variants(resource, ctx, candidate)
        for name, why in skipped.items():
            ctx.report(f"{resource.key}: not comparing with {name}: {why}")

        examples = load_examples(ctx.artifact_dir(f"Dataset/{spec.dataset}"), spec.max_examples)
        regression_examples = regression_base = None
        if spec.regression is not None:
            regression_dir = ctx.artifact_dir(f"Dataset/{spec.regression.dataset}")
            regression_examples = load_examples(regression_dir, spec.max_examples)
            regression_base = next((c for c in baselines if c.role == "base"), None) or pick.base_of(candidate, ctx)
        runs = _run(resource, ctx, fingerprint, contenders + variants, examples, regression_examples, regression_base)
        outcome = assess(spec, contenders, skipped, examples, runs.get("main", {}),
                         regression_examples, runs.get("regression", {}), variants)
        info = _run_info(resource, ctx, fingerprint, candidate, regression_base)
        write_results(staging, outcome, {**info, "reused_answers": _reused(runs)})
        if variants:
            ctx.report(f"{resource.key}: side by side on the same examples\n{comparison_table(outcome)}")

        if not outcome.verdict.passed:
            report_dir = ctx.store.keep_report(fingerprint, staging)
            raise _gate_failed(resource, outcome, report_dir, ctx.store.report_url(fingerprint))
        ctx.report(f"{resource.key}: gate passed for {spec.model}")
        return _outputs(outcome)


def _run(resource: Resource, ctx: ApplyContext, fingerprint: str, contenders: list[Contender],
         examples: list[dict], regression_examples: list[dict] | None, regression_base: Contender | None) -> dict:
    """Score every suite that has examples in one Ray task: suite -> role -> runs. An empty
    split runs nothing and fails closed in the verdict."""
    from ..evaluation.runner import Suite, run_on_cluster

    spec = resource.spec
    suites = [Suite("main", examples, [c.role for c in contenders], _needs_losses(spec.metric_names()))]
    loaded = list(contenders)
    if regression_examples is not None:
        variant_roles = [v.name for v in spec.variants]
        suites.append(Suite("regression", regression_examples, [*REGRESSION_ROLES, *variant_roles],
                            _needs_losses(spec.regression.metric_names())))
        if regression_base not in contenders:  # compare_to has no base: it is scored on the regression set only
            loaded.append(regression_base)
    suites = [s for s in suites if s.examples]
    if not suites:
        return {}
    scored = {role for s in suites for role in s.roles}
    ctx.report(f"{resource.key}: scoring " + "; ".join(
        f"{', '.join(s.roles)} on {len(s.examples)} {s.name} examples" for s in suites
    ))
    local = [c for c in loaded if c.role in scored and c.upstream is None]
    hosted = [c for c in loaded if c.role in scored and c.upstream is not None]
    runs: dict = {s.name: {} for s in suites}
    if local:
        runs = run_on_cluster(
            ctx.project, ctx.store.root, local, suites, spec.generation,
            spec.repeats, spec.gpus, spec.cpus, run_name=f"{resource.name}-{fingerprint[:12]}",
            answers_dir=_answers_dir(ctx), reuse_answers=not _reports_latency(spec), report=ctx.report,
            store_url=ctx.store.url,
        )
    if hosted:
        from ..evaluation.hosted import score_hosted

        for suite, by_role in score_hosted(hosted, suites, spec.generation.model_dump(), spec.repeats).items():
            runs.setdefault(suite, {}).update({role: [ModelRun(**r) for r in raw] for role, raw in by_role.items()})
    if reused := _reused(runs):
        total = sum(len(run.outputs) for run in _all_runs(runs))
        ctx.report(f"{resource.key}: {reused} of {total} answers reused from earlier evaluations "
                   "(same model, prompt and greedy settings)")
    return runs


def _all_runs(runs: dict) -> list:
    return [run for by_role in runs.values() for role_runs in by_role.values() for run in role_runs]


def _reused(runs: dict) -> int:
    return sum(run.reused for run in _all_runs(runs))


def _reports_latency(spec) -> bool:
    """A latency is measured now, not remembered: such an evaluation decodes everything itself."""
    from ..evaluation.metrics import NOT_DETERMINISTIC

    asked = set(spec.metric_names()) | (set(spec.regression.metric_names()) if spec.regression else set())
    return bool(asked & NOT_DETERMINISTIC)


def _answers_dir(ctx: ApplyContext) -> Path | None:
    """Where the evaluation task keeps answers for reuse: on this machine, so only when the task
    runs here (the local head); a worker on a cluster node answers afresh."""
    return None if ctx.project.ray_address() else ctx.project.state_dir / "answers"


def _needs_losses(metrics: list[str]) -> bool:
    from ..evaluation.metrics import LOSS_METRICS

    return bool(LOSS_METRICS & set(metrics))


def _run_info(resource: Resource, ctx: ApplyContext, fingerprint: str, candidate: Contender,
              regression_base: Contender | None) -> dict:
    spec = resource.spec
    return {
        "evaluation": resource.name,
        "fingerprint": fingerprint,
        "dataset": _dataset_info(ctx, spec.dataset),
        "seed": spec.generation.seed,
        "batch_size": spec.generation.batch_size,
        "template_hash": candidate.template_hash,
        "generation": spec.generation.model_dump(),
        "repeats": spec.repeats,
        "aggregate": spec.aggregate,
        **({"regression_dataset": {**_dataset_info(ctx, spec.regression.dataset), "base_model": regression_base.label}}
           if regression_base else {}),
    }


def _dataset_info(ctx: ApplyContext, name: str) -> dict:
    key = f"Dataset/{name}"
    try:
        content_hash = ctx.outputs_of(key).get("content_hash", {}).get("eval")
    except KeyError:
        content_hash = None
    return {"name": name, "fingerprint": ctx.fingerprint(key), "eval_content_hash": content_hash}


def _gate_failed(resource: Resource, outcome: Outcome, report_dir: Path, shared_url: str | None) -> GateFailed:
    failures = outcome.verdict.failures
    forgot = sum(c.metric.startswith(REGRESSION_PREFIX) for c in failures)
    on_regression = f", {forgot} on the regression set {outcome.regression.dataset}" if forgot else ""
    gate_table = table(outcome.verdict)
    lines = [
        f"{resource.key}: gate failed ({len(failures)} of {len(outcome.verdict.checks)} checks{on_regression}): "
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
        "template_hash": outcome.candidate.template_hash,  # the prompt it passed with (a provider's gate checks it)
        "metrics": outcome.scores[outcome.candidate.role].values,
        "baseline_metrics": {c.role: outcome.scores[c.role].values for c in outcome.baselines},
        **({"variant_metrics": {v.role: outcome.scores[v.role].values for v in outcome.variants}}
           if outcome.variants else {}),
        "examples": len(outcome.examples),
        **({"regression_metrics": {role: s.values for role, s in outcome.regression.scores.items()}}
           if outcome.regression else {}),
        "notes": outcome.notes,
        "report": "report.md",
    }
