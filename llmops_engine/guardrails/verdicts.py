"""What a guardrail check reports: findings and verdicts, and how one span check acts on a text.

Shared by `Policy.check` (a whole text) and `OutputGuard` (a stream released piece by piece), so
that both reach the same verdict on the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import SpanCheck, WholeCheck

_RANK = {"pass": 0, "flag": 1, "mask": 2, "block": 3}


@dataclass(frozen=True)
class Finding:
    guardrail: str
    check: str  # the check's id
    stage: str
    action: str
    entity: str | None = None  # pii: which entity was found


@dataclass(frozen=True)
class Verdict:
    action: str  # pass | flag | mask | block
    text: str  # the text with masks applied (what may be released)
    findings: tuple[Finding, ...]
    blocked_by: str | None  # "<guardrail>/<check id>" of the first blocking check


@dataclass(frozen=True)
class BoundCheck:
    guardrail: str
    stage: str
    check: SpanCheck | WholeCheck

    def finding(self, entity: str | None = None) -> Finding:
        return Finding(self.guardrail, self.check.id, self.stage, self.check.action, entity)


def make_verdict(text: str, findings: list[Finding]) -> Verdict:
    action = max((finding.action for finding in findings), key=_RANK.__getitem__, default="pass")
    blocked_by = next((f"{f.guardrail}/{f.check}" for f in findings if f.action == "block"), None)
    return Verdict(action, text, tuple(findings), blocked_by)


def apply_span_check(bound: BoundCheck, text: str, start: int, cut: int) -> tuple[str, int, list[Finding]]:
    """Act on the hits of one span check that start in [start, cut) (scanned from `start`, so the
    text before it is only context): findings, and masks when its action is mask. Returns the new
    text, where `cut` moved to as masks changed lengths, and the findings (one per entity found).
    The caller cuts where no hit crosses (the whole text, or a stream's safe cut)."""
    hits = [hit for hit in bound.check.hits(text, start) if hit.start < cut]
    if not hits:
        return text, cut, []
    findings = [bound.finding(entity) for entity in dict.fromkeys(hit.entity for hit in hits)]
    if bound.check.action != "mask":
        return text, cut, findings
    pieces: list[str] = []
    position = offset = 0
    for hit in hits:
        pieces += [text[position:hit.start], hit.replacement]
        position = hit.end
        offset += len(hit.replacement) - (hit.end - hit.start)
    pieces.append(text[position:])
    return "".join(pieces), cut + offset, findings
