"""Prometheus text exposition for the HTTP front (`GET /metrics`), without a client library.

Named and labelled by Prometheus' conventions (base units, `_total` counters, `_seconds`
histograms); `deployment` and `version` (the model version) on every request family:
    llmops_requests_total{deployment,version,endpoint,code}   counter (code 499: the client left first)
    llmops_request_duration_seconds                            histogram, end to end at the front
    llmops_time_to_first_token_seconds                         histogram, streamed answers
    llmops_tokens_total{kind="prompt"|"completion"}            counter
    llmops_retrieval_duration_seconds                          histogram, a grounded version's search
    llmops_guardrail_actions_total{deployment,guardrail,check,stage,action}  counter
    llmops_answers_total{answered_by}                          counter: which model of a provider chain
                                                               answered (a rising fallback count is a
                                                               provider in trouble)
    llmops_unauthenticated_requests_total{endpoint}            counter: 401s are counted, not logged
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

Labels = tuple[tuple[str, str], ...]


def _labels(pairs: Labels) -> str:
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), "")}"'
               for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.name, self.help_text, self.buckets = name, help_text, buckets
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * len(buckets))
        self.sums: dict[Labels, float] = defaultdict(float)
        self.totals: dict[Labels, int] = defaultdict(int)

    def observe(self, labels: Labels, value_s: float) -> None:
        counts = self.counts[labels]
        for i, bound in enumerate(self.buckets):
            if value_s <= bound:
                counts[i] += 1
        self.sums[labels] += value_s
        self.totals[labels] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        for key in sorted(self.totals):
            for bound, count in zip(self.buckets, self.counts[key]):
                lines.append(f"{self.name}_bucket{_labels(key + (('le', str(bound)),))} {count}")
            lines.append(f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {self.totals[key]}")
            lines.append(f"{self.name}_sum{_labels(key)} {self.sums[key]:.6f}")
            lines.append(f"{self.name}_count{_labels(key)} {self.totals[key]}")
        return lines


def _counter(name: str, help_text: str, values: dict[Labels, int]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    return lines + [f"{name}{_labels(k)} {v}" for k, v in sorted(values.items())]


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[Labels, int] = defaultdict(int)
        self.tokens: dict[Labels, int] = defaultdict(int)
        self.unauthenticated: dict[Labels, int] = defaultdict(int)
        self.answers: dict[Labels, int] = defaultdict(int)
        self.guardrail_actions: dict[Labels, int] = defaultdict(int)
        self.duration = Histogram("llmops_request_duration_seconds", "End-to-end request duration at the HTTP front.")
        self.first_token = Histogram("llmops_time_to_first_token_seconds",
                                     "Time from the request to the first content of a streamed answer.")
        self.retrieval = Histogram("llmops_retrieval_duration_seconds",
                                   "Knowledge-base search time of a grounded request.", RETRIEVAL_BUCKETS)

    def observe_unauthenticated(self, endpoint: str) -> None:
        self.unauthenticated[(("endpoint", endpoint),)] += 1

    def observe(self, entry: dict[str, Any]) -> None:
        """One request, from its request-log entry (front.py records each request exactly once)."""
        base = (("deployment", entry.get("deployment") or ""), ("version", entry.get("model_version") or "none"))
        self.requests[base + (("endpoint", entry["endpoint"]), ("code", str(entry.get("status", 500))))] += 1
        self.tokens[base + (("kind", "prompt"),)] += entry.get("prompt_tokens") or 0
        self.tokens[base + (("kind", "completion"),)] += entry.get("completion_tokens") or 0
        self.duration.observe(base, entry["latency_ms"] / 1000)
        if entry.get("ttft_ms") is not None:
            self.first_token.observe(base, entry["ttft_ms"] / 1000)
        if entry.get("retrieval_ms") is not None:
            self.retrieval.observe(base, entry["retrieval_ms"] / 1000)
        if entry.get("answered_by"):
            self.answers[base + (("answered_by", entry["answered_by"]),)] += 1
        for action in entry.get("guardrails") or ():
            guardrail, _, check = action["check"].partition("/")
            labels = (base[0], ("guardrail", guardrail), ("check", check), ("stage", action["stage"]),
                      ("action", action["action"]))
            self.guardrail_actions[labels] += 1

    def render(self) -> str:
        lines = _counter("llmops_requests_total", "Requests handled, by endpoint and HTTP status code.", self.requests)
        lines += self.duration.render()
        lines += self.first_token.render()
        lines += _counter("llmops_tokens_total", "Tokens processed, by kind (prompt or completion).", self.tokens)
        lines += self.retrieval.render()
        lines += _counter("llmops_guardrail_actions_total", "Guardrail checks that acted (block, mask or flag).",
                          self.guardrail_actions)
        lines += _counter("llmops_answers_total",
                          "Answers of provider versions, by the model of the chain that gave them.", self.answers)
        lines += _counter("llmops_unauthenticated_requests_total",
                          "Requests refused for a missing or invalid API key.", self.unauthenticated)
        return "\n".join(lines) + "\n"
