"""Load-test results as a Deployment record keeps them and as people read them.

Light on purpose (no httpx, no event loop): `llmops status` formats the last result of every
Deployment through `summary_line`, and the record writers (`llmops loadtest`, a rollout's
load-test step) keep the history bounded through `with_load_test`. A record comes from a store
others share, so everything read back is checked for shape before it is formatted.
"""

from __future__ import annotations

from typing import Any

KEPT_RESULTS = 20  # a record's `load_tests` history: the newest ones


def with_load_test(outputs: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Record outputs with `entry` appended to `load_tests`, keeping the newest KEPT_RESULTS.
    Side-effect free."""
    history = outputs.get("load_tests")
    history = [item for item in history if isinstance(item, dict)] if isinstance(history, list) else []
    return {**outputs, "load_tests": [*history, entry][-KEPT_RESULTS:]}


def last_load_test(outputs: dict[str, Any]) -> dict[str, Any] | None:
    history = outputs.get("load_tests")
    last = history[-1] if isinstance(history, list) and history else None
    return last if isinstance(last, dict) else None


def summary_line(entry: dict[str, Any]) -> str:
    """One line for `llmops status`: e.g. `load test 12.5 rps p95 840 ms errors 0.0 % passed`."""
    latency = entry.get("latency_ms") if isinstance(entry.get("latency_ms"), dict) else {}
    parts = [f"load test {_number(entry.get('rps'))} rps", f"p95 {_number(latency.get('p95'))} ms",
             f"errors {_percent(entry.get('error_rate'))}"]
    verdict = entry.get("verdict")
    if isinstance(verdict, dict):
        parts.append("passed" if verdict.get("passed") is True else "FAILED")
    return " ".join(parts)


def result_rows(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) rows of the table `llmops loadtest` prints."""
    latency, ttft = entry.get("latency_ms") or {}, entry.get("ttft_ms") or {}
    counts = entry.get("status_counts") or {}
    rows = [
        ("requests", f"{entry.get('requests')} ({entry.get('ok')} ok, {entry.get('errors')} errors, "
                     f"{entry.get('interrupted', 0)} interrupted at the end)"),
        ("clients × duration", f"{entry.get('clients')} × {_number(entry.get('duration_s'))} s "
                               f"(stopped by {entry.get('stopped_by')}, {_number(entry.get('elapsed_s'))} s measured)"),
        ("requests/s (ok)", _number(entry.get("rps"))),
        ("latency p50 / p95 / p99 / max",
         " / ".join(_number(latency.get(p)) for p in ("p50", "p95", "p99", "max")) + " ms"),
        ("time to first token p50 / p95", " / ".join(_number(ttft.get(p)) for p in ("p50", "p95")) + " ms"),
        ("completion tokens/s", f"{_number(entry.get('tokens_per_s'))} ({entry.get('completion_tokens')} tokens)"),
        ("error rate", _percent(entry.get("error_rate"))),
        ("status counts", ", ".join(f"{key}: {value}" for key, value in counts.items()) or "-"),
    ]
    if entry.get("model_version"):
        rows.append(("model version", str(entry["model_version"])))
    return rows


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:.1f}".removesuffix(".0") if isinstance(value, float) else str(value)


def _percent(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value * 100:.1f} %"
