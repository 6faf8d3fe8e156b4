"""Whether a load test's numbers meet its thresholds, k6-style: every threshold given must hold.

A pure decision, shared by `llmops loadtest` (exit 3 when it fails) and a rollout step (which
rolls the new version back). Boundary values pass (p95 3000 ms meets `p95_ms: 3000`), as the
rollout's own analysis does. It fails closed: a threshold that cannot be judged because no
request completed (or none succeeded) is a failure, never a silent pass.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Check(NamedTuple):
    """One threshold: where its measured value is in the result, and which way is good."""

    label: str
    measured: Callable[[dict], float | None]
    at_most: bool  # True: the value must not exceed the threshold; False: must reach it
    unit: str


CHECKS: dict[str, Check] = {
    "p50_ms": Check("p50 latency", lambda r: (r.get("latency_ms") or {}).get("p50"), True, " ms"),
    "p95_ms": Check("p95 latency", lambda r: (r.get("latency_ms") or {}).get("p95"), True, " ms"),
    "p99_ms": Check("p99 latency", lambda r: (r.get("latency_ms") or {}).get("p99"), True, " ms"),
    "ttft_p95_ms": Check("p95 time to first token", lambda r: (r.get("ttft_ms") or {}).get("p95"), True, " ms"),
    "error_rate": Check("error rate", lambda r: r.get("error_rate") if r.get("requests") else None, True, ""),
    "min_rps": Check("requests/s", lambda r: r.get("rps") if r.get("ok") else None, False, ""),
    "min_tokens_per_s": Check("tokens/s", lambda r: r.get("tokens_per_s") if r.get("ok") else None, False, ""),
}


def judge_load(result: dict[str, Any], thresholds: dict[str, Any] | None) -> dict[str, Any]:
    """{"passed", "problems", "summary"} for a run_load result against thresholds (a
    LoadThresholds dump; None values are not checked). Side-effect free."""
    given = {name: limit for name, limit in (thresholds or {}).items() if limit is not None}
    unknown = sorted(set(given) - set(CHECKS))
    problems = [f"unknown threshold {name!r}" for name in unknown]
    for name, check in CHECKS.items():
        if name in given:
            problem = _problem(check, check.measured(result), float(given[name]), result)
            if problem:
                problems.append(problem)
    if not given:
        summary = "no thresholds set"
    elif problems:
        summary = f"FAILED {len(problems)} of {len(given)} threshold(s): " + "; ".join(problems)
    else:
        summary = f"passed all {len(given)} threshold(s)"
    return {"passed": not problems, "problems": problems, "summary": summary}


def _problem(check: Check, value: float | None, limit: float, result: dict[str, Any]) -> str | None:
    if value is None:
        why = "no request was made" if not result.get("requests") else "no request succeeded"
        return f"{check.label} cannot be judged: {why}"
    if check.at_most and value > limit:
        return f"{check.label} {_number(value)}{check.unit} > {_number(limit)}{check.unit}"
    if not check.at_most and value < limit:
        return f"{check.label} {_number(value)}{check.unit} < {_number(limit)}{check.unit}"
    return None


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")
