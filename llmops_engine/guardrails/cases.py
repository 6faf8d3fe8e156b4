"""A Guardrail's labelled test cases: read them, run them through the policy, score each check.

The cases file (`tests: {path}`) holds one JSON object per line:
`{"stage": "input"|"output", "text": "...", "expect": "block"|"mask"|"flag"|"pass", "check": "<id>"}`
(`check` optional). Every bad line is reported at once, as file:line, before anything runs:
by `llmops validate` (specs/checks.py reads the file with `scan_cases`) and again at apply.

A case *holds* when the verdict's action equals `expect` and, when the case names a check and
expects an action, that check acted with that action. A check *fired* on a case when it made a
finding. Per check C, counting only what the cases say:

* true positive: C fired on a case that expects an action (not pass) and names C or no check;
* false positive: C fired on a case that expects pass;
* false negative: a case names C and expects an action, and C did not fire.

(C firing on a case that names another check counts for neither.) precision = TP / (TP + FP),
recall = TP / (TP + FN), null when the denominator is 0. `run_cases` and `check_metrics` are pure.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GuardrailError
from ..paths import one_file
from .policy import Policy
from .verdicts import Verdict

MAX_CASES = 10_000  # every apply runs every case; a few hundred already pin a policy down
MAX_CASE_CHARS = 20_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_LISTED = 50  # problems or failures listed; the rest are counted
SHOWN_CHARS = 60
STAGES = ("input", "output")
EXPECTATIONS = ("block", "mask", "flag", "pass")
CASE_KEYS = ("stage", "text", "expect", "check")


@dataclass(frozen=True)
class Case:
    line: int
    stage: str
    text: str
    expect: str
    check: str | None = None


@dataclass(frozen=True)
class CaseResult:
    case: Case
    verdict: Verdict

    @property
    def fired(self) -> dict[str, str]:
        """Check id -> its action, for each check that made a finding."""
        return {finding.check: finding.action for finding in self.verdict.findings}

    @property
    def holds(self) -> bool:
        case = self.case
        named_acted = case.check is None or case.expect == "pass" or self.fired.get(case.check) == case.expect
        return self.verdict.action == case.expect and named_acted

    def describe(self, path: str) -> str:
        case = self.case
        acted = ", ".join(f"{check} {action}" for check, action in self.fired.items()) or "no check fired"
        named = f" by {case.check}" if case.check else ""
        return (f"{path}:{case.line}: {case.stage} {shown(case.text)}: expected {case.expect}{named}, "
                f"got {self.verdict.action} ({acted})")


def shown(text: str) -> str:
    """A case's text in a message: quoted, escaped, cut to SHOWN_CHARS."""
    cut = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"
    return json.dumps(cut, ensure_ascii=False)


def read_cases(root: Path, path: str, check_stages: dict[str, str]) -> list[Case]:
    """The cases of `path` (repository-relative); `check_stages` maps each check id to its stage.
    Every bad line is reported at once, as path:line."""
    cases, problems = scan_cases(root, path, check_stages)
    if problems:
        listed = [f"{path}:{number}: {message}" for number, message in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            listed.append(f"... and {len(problems) - MAX_LISTED} more")
        count = len(problems)
        raise GuardrailError(f"{count} problem{'s' if count != 1 else ''} in the guardrail cases {path}:\n" + "\n".join(listed))
    return cases


def scan_cases(root: Path, path: str, check_stages: dict[str, str]) -> tuple[list[Case], list[tuple[int, str]]]:
    """The good cases and (line, problem) for each bad line; GuardrailError when the file itself
    cannot be used (missing, a glob, too large, too many cases, no case at all)."""
    file = _cases_file(root, path)
    problems: list[tuple[int, str]] = []
    cases: list[Case] = []
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                cases.append(_case(number, raw, check_stages))
            except GuardrailError as exc:
                problems.append((number, str(exc)))
            if len(cases) + len(problems) > MAX_CASES:
                raise GuardrailError(f"{path}:{number}: more than {MAX_CASES:,} cases; every apply runs them all, "
                                     "keep a sample of at most that many")
    if not cases and not problems:
        raise GuardrailError(f'{path}: no cases; write one JSON object per line, {{"stage": "input", "text": "...", '
                             '"expect": "block"}}')
    return cases, problems


def _cases_file(root: Path, path: str) -> Path:
    try:
        return one_file(root, path, "cases file", "JSONL", MAX_FILE_BYTES)
    except ValueError as exc:
        raise GuardrailError(str(exc)) from None


def _case(number: int, raw: bytes, check_stages: dict[str, str]) -> Case:
    if len(raw) > 4 * MAX_CASE_CHARS + 1024:  # UTF-8 is at most 4 bytes a character: surely too long
        raise GuardrailError(f"line is {len(raw):,} bytes; a case's text is at most {MAX_CASE_CHARS:,} characters")
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise GuardrailError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (ValueError, RecursionError) as exc:
        raise GuardrailError(f"not a JSON object ({str(exc)[:100]})") from exc
    if not isinstance(row, dict):
        raise GuardrailError(f"not a JSON object but a {type(row).__name__}")
    unknown = [key for key in row if key not in CASE_KEYS]
    if unknown:
        raise GuardrailError(_unknown(str(unknown[0]), CASE_KEYS, "key"))
    stage, text, expect, check = row.get("stage"), row.get("text"), row.get("expect"), row.get("check")
    if stage not in STAGES:
        raise GuardrailError(_unknown(str(stage), STAGES, "stage") if stage is not None else "'stage' is missing (input or output)")
    if not isinstance(text, str):
        raise GuardrailError("'text' is missing or not a string")
    if len(text) > MAX_CASE_CHARS:
        raise GuardrailError(f"'text' is {len(text):,} characters; the limit is {MAX_CASE_CHARS:,}")
    if expect not in EXPECTATIONS:
        raise GuardrailError(_unknown(str(expect), EXPECTATIONS, "expect") if expect is not None else
                             "'expect' is missing (block, mask, flag or pass)")
    if check is not None:
        if not isinstance(check, str) or check not in check_stages:
            raise GuardrailError(_unknown(str(check), tuple(check_stages), "check id"))
        if check_stages[check] != stage:
            raise GuardrailError(f"check '{check}' is an {check_stages[check]} check but this case's stage is {stage}")
    return Case(number, stage, text, expect, check)


def _unknown(value: str, known: tuple[str, ...], what: str) -> str:
    hint = difflib.get_close_matches(value, known, n=1)
    return f"unknown {what} '{value[:SHOWN_CHARS]}'; " + (f"did you mean '{hint[0]}'?" if hint else f"one of: {', '.join(known) or '(none)'}")


def run_cases(policy: Policy, cases: list[Case]) -> list[CaseResult]:
    return [CaseResult(case, policy.check(case.stage, case.text)) for case in cases]


def check_metrics(checks: list[dict], results: list[CaseResult]) -> dict[str, dict]:
    """Per check id (`checks`: its policy entries with "stage"): stage, check, action, tp, fp, fn, precision, recall."""
    table = {entry["id"]: {"stage": entry["stage"], "check": entry["check"], "action": entry["action"],
                           "tp": 0, "fp": 0, "fn": 0} for entry in checks}
    for result in results:
        case, fired = result.case, result.fired
        for check_id in fired:
            if case.expect == "pass":
                table[check_id]["fp"] += 1
            elif case.check in (None, check_id):
                table[check_id]["tp"] += 1
        if case.check is not None and case.expect != "pass" and case.check not in fired:
            table[case.check]["fn"] += 1
    for row in table.values():
        row["precision"] = _ratio(row["tp"], row["tp"] + row["fp"])
        row["recall"] = _ratio(row["tp"], row["tp"] + row["fn"])
    return table


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None
