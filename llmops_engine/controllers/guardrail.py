"""Guardrail controller: compile the policy, run its test cases as a gate, publish the policy.

Recipe: read the schema files the policy names (confined to the repository) → build the policy
JSON that serving runs (outputs["policy"], with those schemas embedded, so a Deployment never
reads the repository) → compile it exactly as a replica would → run every case of `tests:` →
score each check (guardrails/cases.py defines precision and recall) → write
guardrail_report.json. A failed expectation publishes nothing (GateFailed, exit 3; the report is
kept under <store>/reports/<fingerprint>/), so live deployments keep the previous policy.
The fingerprint covers the spec, the cases file and the schema files, so `plan` sees any change
to them without running anything. Pure Python: no Ray, no model (a max_tokens check loads only
its tokenizer).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import GateFailed
from ..specs.resource import Resource
from .base import ApplyContext, BaseController, Outputs

REPORT = "guardrail_report.json"
LISTED_FAILURES = 20


class GuardrailController(BaseController):
    kind = "Guardrail"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        from ..guardrails import Policy
        from ..guardrails.cases import check_metrics, read_cases, run_cases
        from ..guardrails.schema_file import read_schema

        spec = resource.spec
        schemas = {path: read_schema(ctx.root, path) for _, path in spec.schema_paths()}
        policy_json = spec.policy(resource.name, schemas)
        policy = Policy.from_json([policy_json])
        entries = [{**entry, "stage": stage} for stage in ("input", "output") for entry in policy_json[stage]]
        outputs: Outputs = {"policy": policy_json, "policy_sha256": policy_sha256(policy_json),
                            "tests": spec.tests.path if spec.tests else None}
        if spec.tests is None:
            outputs.update(cases=0, passed=True, checks=check_metrics(entries, []), note="no tests: declared; no case was run")
            _write_report(staging, {**outputs, "failures": []})
            ctx.report(f"{resource.key}: {len(entries)} checks compiled; no tests: declared, no case was run")
            return outputs
        cases = read_cases(ctx.root, spec.tests.path, spec.check_stages())
        results = run_cases(policy, cases)
        checks = check_metrics(entries, results)
        failures = [result for result in results if not result.holds]
        outputs.update(cases=len(cases), passed=not failures, checks=checks)
        _write_report(staging, {**outputs, "failures": [_failure(r) for r in failures]})
        if failures:
            raise _gate_failed(resource, ctx, staging, failures, len(cases), checks)
        ctx.report(f"{resource.key}: all {len(cases)} cases hold ({_summary(checks)})")
        return outputs


def policy_sha256(policy_json: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(policy_json, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _failure(result) -> dict[str, Any]:
    from ..guardrails.cases import shown

    case = result.case
    return {"line": case.line, "stage": case.stage, "text": shown(case.text), "expect": case.expect, "check": case.check,
            "got": result.verdict.action, "fired": result.fired}


def _write_report(staging: Path, report: dict[str, Any]) -> None:
    (staging / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False))


def _gate_failed(resource: Resource, ctx: ApplyContext, staging: Path, failures: list, cases: int,
                 checks: dict[str, dict]) -> GateFailed:
    path = resource.spec.tests.path
    fingerprint = ctx.fingerprint(resource.key)
    report_dir = ctx.store.keep_report(fingerprint, staging)
    listed = [failure.describe(path) for failure in failures[:LISTED_FAILURES]]
    if len(failures) > LISTED_FAILURES:
        listed.append(f"... and {len(failures) - LISTED_FAILURES} more (all in the report)")
    shared = ctx.store.report_url(fingerprint)
    message = (f"{resource.key}: {len(failures)} of {cases} guardrail cases failed; the policy is not published and "
               f"deployments keep the previous one:\n" + "\n".join(listed)
               + f"\nReport: {report_dir / REPORT}" + (f" (shared copy: {shared})" if shared else ""))
    return GateFailed(message, table=_table(checks), report_dir=report_dir)


def _table(checks: dict[str, dict]) -> str:
    lines = ["| check | stage | action | TP | FP | FN | precision | recall |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {check_id} | {row['stage']} | {row['action']} | {row['tp']} | {row['fp']} | {row['fn']} | "
              f"{_fmt(row['precision'])} | {_fmt(row['recall'])} |" for check_id, row in checks.items()]
    return "\n".join(lines)


def _summary(checks: dict[str, dict]) -> str:
    return ", ".join(f"{check_id} P {_fmt(row['precision'])} R {_fmt(row['recall'])}" for check_id, row in checks.items())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
