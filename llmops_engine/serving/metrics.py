"""Prometheus text exposition for the ingress (`GET /metrics`), without a client library.

Five families, labelled by deployment, model version and outcome:
    llmops_requests_total            counter (status 499: the client disconnected first)
    llmops_request_latency_seconds   histogram
    llmops_tokens_total              counter (kind="prompt" | "completion")
    llmops_answers_total             counter by answered_by: which model of a provider version's chain
                                     answered (a rising fallback count is a provider in trouble)
    llmops_unauthenticated_requests_total  counter by endpoint: 401s are counted, not logged
"""

from __future__ import annotations

from collections import defaultdict

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple, int] = defaultdict(int)
        self.tokens: dict[tuple, int] = defaultdict(int)
        self.latency_buckets: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[tuple, float] = defaultdict(float)
        self.latency_count: dict[tuple, int] = defaultdict(int)
        self.unauthenticated: dict[tuple, int] = defaultdict(int)
        self.answers: dict[tuple, int] = defaultdict(int)

    def observe_unauthenticated(self, endpoint: str) -> None:
        self.unauthenticated[(("endpoint", endpoint),)] += 1

    def observe(
        self, deployment: str, version: str, endpoint: str, status: int, latency_s: float,
        prompt_tokens: int = 0, completion_tokens: int = 0, answered_by: str | None = None,
    ) -> None:
        base = (("deployment", deployment), ("model_version", version or "none"))
        if answered_by:
            self.answers[base + (("answered_by", answered_by),)] += 1
        self.requests[base + (("endpoint", endpoint), ("status", str(status)))] += 1
        self.tokens[base + (("kind", "prompt"),)] += prompt_tokens
        self.tokens[base + (("kind", "completion"),)] += completion_tokens
        buckets = self.latency_buckets[base]
        for i, bound in enumerate(BUCKETS):
            if latency_s <= bound:
                buckets[i] += 1
        self.latency_sum[base] += latency_s
        self.latency_count[base] += 1

    def render(self) -> str:
        lines = [
            "# HELP llmops_requests_total Requests handled, by endpoint and HTTP status.",
            "# TYPE llmops_requests_total counter",
        ]
        lines += [f"llmops_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
        lines += [
            "# HELP llmops_request_latency_seconds End-to-end request latency at the ingress.",
            "# TYPE llmops_request_latency_seconds histogram",
        ]
        for key in sorted(self.latency_count):
            for bound, count in zip(BUCKETS, self.latency_buckets[key]):
                lines.append(f"llmops_request_latency_seconds_bucket{_labels(key + (('le', str(bound)),))} {count}")
            lines.append(f"llmops_request_latency_seconds_bucket{_labels(key + (('le', '+Inf'),))} {self.latency_count[key]}")
            lines.append(f"llmops_request_latency_seconds_sum{_labels(key)} {self.latency_sum[key]:.6f}")
            lines.append(f"llmops_request_latency_seconds_count{_labels(key)} {self.latency_count[key]}")
        lines += [
            "# HELP llmops_tokens_total Tokens processed, by kind (prompt or completion).",
            "# TYPE llmops_tokens_total counter",
        ]
        lines += [f"llmops_tokens_total{_labels(k)} {v}" for k, v in sorted(self.tokens.items())]
        lines += [
            "# HELP llmops_answers_total Answers of provider versions, by the model of the chain that gave them.",
            "# TYPE llmops_answers_total counter",
        ]
        lines += [f"llmops_answers_total{_labels(k)} {v}" for k, v in sorted(self.answers.items())]
        lines += [
            "# HELP llmops_unauthenticated_requests_total Requests refused for a missing or invalid API key.",
            "# TYPE llmops_unauthenticated_requests_total counter",
        ]
        lines += [f"llmops_unauthenticated_requests_total{_labels(k)} {v}" for k, v in sorted(self.unauthenticated.items())]
        return "\n".join(lines) + "\n"
