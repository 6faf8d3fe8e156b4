"""A Deployment's guardrails at the ingress: requests checked before any model sees them, answers
before any client does.

The policies are the Guardrails' compiled JSON (their records' `policy`, in the Deployment's
order), carried in the ingress's user_config: a policy change is a `reconfigure`, live, with no
replica restart. Input checks run on everything the client sent, joined (so a size limit is the
request's and a pattern split across messages is still one), and on each message for what it
masks; output checks on every answer; a streamed answer is checked as it streams
(guardrails.OutputGuard holds back what could still complete a match). A block is a 400 in the OpenAI envelope, `code:
guardrail_blocked`, naming the check and never quoting the text; what acted goes to the request
log and metrics as {check, stage, action, entity}, never the text it acted on.
"""

from __future__ import annotations

from typing import Any

from .openai_api import APIError, ChatRequest, CompletionRequest

BLOCKED = "guardrail_blocked"


class GuardrailBlocked(APIError):
    """A request (or its answer) a guardrail blocked; `findings` are what the log records."""

    def __init__(self, stage: str, check: str, findings: list[dict[str, Any]]):
        what = "request" if stage == "input" else "answer"
        super().__init__(400, f"the {what} was blocked by guardrail check {check}", BLOCKED)
        self.findings = findings
        self.tokens: dict[str, int] = {}  # what a blocked answer cost, for the log and metrics


def compile_policy(policies: list[dict[str, Any]] | None):
    """The guardrails.Policy of a config's policies, or None when the deployment has none."""
    if not policies:
        return None
    from ..guardrails import Policy

    policy = Policy.from_json(policies)
    policy.prepare()  # tokenizers load now, not on a client's request
    return policy


def findings_json(verdict) -> list[dict[str, Any]]:
    return [{"check": f"{f.guardrail}/{f.check}", "stage": f.stage, "action": f.action,
             **({"entity": f.entity} if f.entity else {})} for f in verdict.findings]


def add_findings(findings: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """Add what acted, once per (check, stage, action, entity): how many matches, or how many
    chunks a stream came in, does not change what the log and the metrics count."""
    findings += [finding for finding in new if finding not in findings]


def checked(policy, stage: str, text: str, findings: list[dict[str, Any]]) -> str:
    """`text` as it may pass (masked where a check masks); raises GuardrailBlocked on a block.
    `findings` collects what acted, for the log."""
    verdict = policy.check(stage, text)
    add_findings(findings, findings_json(verdict))
    if verdict.action == "block":
        raise GuardrailBlocked(stage, verdict.blocked_by, findings)
    return verdict.text


def guard_request(policy, parsed: ChatRequest | CompletionRequest) -> list[dict[str, Any]]:
    """Run the input checks over what the client sent, masking in place; what acted. The joined
    text decides (blocks, flags, limits); each message is then masked on its own."""
    findings: list[dict[str, Any]] = []
    if policy is None or not policy.checks("input"):
        return findings
    texts = [m.text() for m in parsed.messages] if isinstance(parsed, ChatRequest) else parsed.prompts()
    checked(policy, "input", "\n".join(texts), findings)
    masked = [policy.check("input", text).text if text else text for text in texts]
    if isinstance(parsed, ChatRequest):
        for message, text, before in zip(parsed.messages, masked, texts):
            if text != before:
                message.content = text
    else:
        parsed.prompt = masked[0] if isinstance(parsed.prompt, str) else masked
    return findings


def guard_answers(policy, gens: list[dict[str, Any]], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole answers through the output checks (masked copies); raises GuardrailBlocked on a block."""
    if policy is None or not policy.checks("output"):
        return gens
    try:
        return [{**gen, "text": checked(policy, "output", gen["text"], findings)} for gen in gens]
    except GuardrailBlocked as blocked:
        blocked.tokens = {"prompt_tokens": sum(g.get("prompt_tokens", 0) for g in gens),
                          "completion_tokens": sum(g.get("completion_tokens", 0) for g in gens)}
        raise


class StreamGuard:
    """The output checks of one streamed answer (what RelayedStream asks): the text that may leave
    now, or None once a check blocked; `findings` collects what acted."""

    def __init__(self, policy) -> None:
        self.guard = policy.output_guard()
        self.findings: list[dict[str, Any]] = []
        self.blocked_by: str | None = None

    def feed(self, delta: str) -> str | None:
        return self._released(self.guard.feed(delta))

    def finish(self) -> str | None:
        return self._released(self.guard.finish())

    def _released(self, verdict) -> str | None:
        add_findings(self.findings, findings_json(verdict))
        if verdict.action == "block":
            self.blocked_by = verdict.blocked_by
            return None
        return verdict.text


def stream_guard(policy) -> StreamGuard | None:
    return StreamGuard(policy) if policy is not None and policy.checks("output") else None
