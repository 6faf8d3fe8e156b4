"""Check a streamed answer before each chunk leaves: release only text no later chunk can change.

A card number, an e-mail or a deny word may arrive split over several chunks. Each span check
is a stage: it receives what the checks before it released (with their masks, as `Policy.check`
hands a text from check to check), holds back the newest text from the earliest position where
one of its matches could still be in progress (`SpanCheck.pending`), and passes on the rest,
masked, at once:

* pii: per entity, the trailing run of the characters its matches are made of, from the first
  one a match can start with (e-mail: local and domain characters and '@'; card: digits, spaces,
  dashes; IBAN: capitals, digits, spaces; phone: digits and + ( ) - . space; API key: the key
  alphabet), at most the entity's longest match (+2 for a look-ahead); a PEM key from its header
  until it ends; an `api_key = value` from its key name. A sentence holds back its last partial
  word, often nothing.
* deny_list: the longest suffix that starts a word and a (case-folded) entry, found with the
  prefix tree from at most the longest entry's length back.
* regex: a user pattern is not analysed; its max_match_chars (+1) are held back, so a regex check
  on output delays every chunk by that many characters (keep it small, or check input only).

The release point also moves back before any span the check's patterns matched (a hit, or a
candidate failing its checksum) that crosses it: a pattern's scan resumes where its previous
match ended, so no match is cut through, and the next scan starts at the release point. Only a
few released characters are kept before it, for look-behinds and word boundaries: one for the
built-in checks (their patterns look one character back), REGEX_CONTEXT_CHARS for a user regex.
Context is text already released, so it costs no delay. Together: the released text plus
`finish` equals what `Policy.check` makes of the whole answer, and text is released once.

Not exact for a user regex that matches more than its max_match_chars, looks further back than
REGEX_CONTEXT_CHARS, or looks more than one character past its match. Whole-text checks: max_chars stops the stream as soon as the answer is too
long; max_tokens is measured every RECOUNT_CHARS characters and at the end (so a stream may run
that far past the limit before it is stopped); json_schema is judged at the end, and when it
blocks the whole answer is held until then, since no prefix of it can be known to be valid.
"""

from __future__ import annotations

from .checks import SpanCheck, WholeCheck
from .verdicts import BoundCheck, Finding, Verdict, apply_span_check, make_verdict

RECOUNT_CHARS = 256


class OutputGuard:
    """One streamed answer: `feed` each delta, release the returned `.text`; `finish` at the end.
    A verdict with action block means: stop the stream, release nothing more."""

    def __init__(self, checks: tuple[BoundCheck, ...]):
        self._order = {(b.guardrail, b.check.id): index for index, b in enumerate(checks)}
        self._stages = [_Stage(b) for b in checks if isinstance(b.check, SpanCheck)]
        self._whole = [b for b in checks if isinstance(b.check, WholeCheck)]
        self._hold_all = any(b.check.kind == "json_schema" and b.check.action == "block" for b in self._whole)
        self._keep_raw = any(b.check.kind == "max_tokens" for b in self._whole)
        self._keep_released = any(b.check.kind == "json_schema" for b in self._whole)
        self._held = ""  # the whole answer, while a blocking json_schema check holds it
        self._raw: list[str] = []
        self._released: list[str] = []
        self._received = 0
        self._measured_at = 0
        self._reported: set[tuple[str, str]] = set()  # whole-text checks report once
        self._stopped: Verdict | None = None

    def feed(self, delta: str) -> Verdict:
        if self._stopped:
            return self._stopped
        self._received += len(delta)
        if self._keep_raw:
            self._raw.append(delta)
        findings = self._measure(final=False)
        if any(f.action == "block" for f in findings):
            return self._verdict("", findings)
        if self._hold_all:
            self._held += delta
            return self._verdict("", findings)
        text, found = self._through_stages(delta, final=False)
        return self._verdict(text, findings + found)

    def finish(self) -> Verdict:
        if self._stopped:
            return self._stopped
        text, found = self._through_stages(self._held, final=True)
        return self._verdict(text, found + self._measure(final=True, delivered="".join(self._released)))

    def _through_stages(self, text: str, final: bool) -> tuple[str, list[Finding]]:
        findings: list[Finding] = []
        for stage in self._stages:
            if not (text or final):
                break  # nothing new reaches the later checks
            text, found = stage.push(text, final)
            findings += found
        if self._keep_released:
            self._released.append(text)
        return text, findings

    def _verdict(self, text: str, findings: list[Finding]) -> Verdict:
        findings.sort(key=lambda f: self._order[(f.guardrail, f.check)])
        verdict = make_verdict(text, findings)
        if verdict.action == "block":
            self._stopped = make_verdict("", findings)
            return self._stopped
        return verdict

    def _measure(self, final: bool, delivered: str = "") -> list[Finding]:
        """Findings of whole-text checks not reported yet: max_chars now, max_tokens every
        RECOUNT_CHARS and at the end, json_schema at the end (on the text as delivered)."""
        recount = final or self._received - self._measured_at >= RECOUNT_CHARS
        raw = "".join(self._raw) if recount and self._keep_raw else ""
        if recount:
            self._measured_at = self._received
        findings = []
        for bound in self._whole:
            key = (bound.guardrail, bound.check.id)
            if key in self._reported:
                continue
            kind = bound.check.kind
            if kind == "max_chars":
                violated = self._received > bound.check.limit
            elif kind == "max_tokens":
                violated = recount and bound.check.violated(raw)
            else:
                violated = final and bound.check.violated(delivered)
            if violated:
                self._reported.add(key)
                findings.append(bound.finding())
        return findings


class _Stage:
    """One span check on a stream: the text the checks before it released comes in, this check's
    masks apply, and what no later text can change goes on."""

    def __init__(self, bound: BoundCheck):
        self._bound = bound
        self._check: SpanCheck = bound.check
        self._left = ""  # the last characters this check passed on, unmasked, for its look-behinds
        self._pending = ""

    def push(self, text: str, final: bool) -> tuple[str, list[Finding]]:
        self._pending += text
        subject, base = self._left + self._pending, len(self._left)
        cut = len(subject) if final else self._safe_cut(subject, base)
        if cut <= base:
            return "", []
        masked, end, findings = apply_span_check(self._bound, subject, base, cut)
        seen = subject[:cut]
        self._left = seen[max(len(seen) - self._check.context, 0):]
        self._pending = subject[cut:]
        return masked[base:end], findings

    def _safe_cut(self, subject: str, base: int) -> int:
        """Up to where `subject` can be released: the earliest position where a match could still
        be in progress, moved back before any span the check matched that crosses it."""
        cut = self._check.pending(subject, base)
        if cut <= base:
            return base
        spans = self._check.scan(subject, base)[1]
        while across := [start for start, end in spans if start < cut < end]:
            cut = min(across)
        return cut
