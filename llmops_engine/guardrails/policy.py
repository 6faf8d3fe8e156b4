"""A compiled guardrail policy: run a stage's checks on a text and say what to do with it.

Serving replicas build one `Policy` from the JSON of the Deployment's Guardrails (in the
Deployment's order) and call `check("input", text)` per request (and per retrieved chunk),
`check("output", answer)` per answer, or feed a streamed answer through `output_guard()`.
The Guardrail controller runs its test cases through the same code.

Semantics: every check of the stage runs, in order. A span check (regex, deny_list, pii) with
action mask replaces what it found ([EMAIL], [REDACTED], ...), and later checks see the masked
text; max_chars and max_tokens measure the text as received; json_schema validates the text as
it would be delivered (after earlier masks). Any blocking finding makes the verdict block
(`blocked_by` names the first); flags are findings only. A Verdict never carries matched text
except in `.text` itself: findings name checks and entities, so logs and metrics may keep them.
"""

from __future__ import annotations

from typing import Any

from ..errors import GuardrailError
from .checks import WholeCheck, compile_check
from .stream import OutputGuard
from .verdicts import BoundCheck, Finding, Verdict, apply_span_check, make_verdict

STAGES = ("input", "output")


class Policy:
    def __init__(self, stages: dict[str, tuple[BoundCheck, ...]]):
        self._stages = stages

    @classmethod
    def from_json(cls, policies: list[dict[str, Any]]) -> "Policy":
        """Compile the `GuardrailSpec.policy()` JSON of one or more Guardrails, applied in the given order."""
        if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
            raise GuardrailError("a guardrail policy is a list of Guardrail policies (GuardrailSpec.policy())")
        stages: dict[str, list[BoundCheck]] = {stage: [] for stage in STAGES}
        for policy in policies:
            name = policy.get("name")
            if not isinstance(name, str) or not all(isinstance(policy.get(stage, []), list) for stage in STAGES):
                raise GuardrailError(f"not a Guardrail policy: {str(policy)[:120]}")
            for stage in STAGES:
                stages[stage] += [BoundCheck(name, stage, compile_check(entry)) for entry in policy.get(stage, [])]
        return cls({stage: tuple(checks) for stage, checks in stages.items()})

    def checks(self, stage: str) -> bool:
        """Whether `stage` has any check (a caller can skip the call when not)."""
        return bool(self.stage(stage))

    def stage(self, stage: str) -> tuple[BoundCheck, ...]:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return self._stages[stage]

    def prepare(self) -> None:
        """Load what the checks otherwise load on first use (tokenizers), so that a replica pays at start."""
        from . import tokens

        for bound in self._stages["input"] + self._stages["output"]:
            if isinstance(bound.check, WholeCheck) and bound.check.tokenizer:
                tokens.counter(bound.check.tokenizer)

    def check(self, stage: str, text: str) -> Verdict:
        """Run every check of `stage` on a whole text."""
        findings: list[Finding] = []
        current = text
        for bound in self.stage(stage):
            if isinstance(bound.check, WholeCheck):
                if bound.check.violated(current if bound.check.kind == "json_schema" else text):
                    findings.append(bound.finding())
            else:
                current, _, found = apply_span_check(bound, current, 0, len(current))
                findings += found
        return make_verdict(current, findings)

    def output_guard(self) -> OutputGuard:
        """A guard for one streamed answer (see stream.py)."""
        return OutputGuard(self.stage("output"))
