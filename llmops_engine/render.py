"""How plans, specs errors and statuses look: text for terminals, Markdown for PRs, JSON for tools."""

from __future__ import annotations

import time

from .errors import SpecError
from .planner import Plan

SYMBOL = {"create": "+", "update": "~", "delete": "-", "no-op": " "}


def plan_summary(plan: Plan) -> str:
    counts = {kind: sum(1 for a in plan.actions if a.action == kind) for kind in ("create", "update", "delete")}
    if not plan.has_changes():
        return "No changes. The world matches the specs."
    return f"Plan: {counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete."


def plan_text(plan: Plan, verbose: bool = False) -> list[tuple[str, str]]:
    """(style, line) pairs; the CLI colours them."""
    lines: list[tuple[str, str]] = []
    width = max((len(a.key) for a in plan.actions), default=0)
    for action in plan.actions:
        if action.action == "no-op" and not (verbose or action.notes):
            continue
        style = {"create": "green", "update": "yellow", "delete": "red", "no-op": "dim"}[action.action]
        reason = "; ".join(action.reasons) or "up to date"
        cost = f" ({action.cost})" if action.cost else ""
        lines.append((style, f"  {SYMBOL[action.action]} {action.key.ljust(width)}  {action.action}: {reason}{cost}"))
        lines += [("dim", f"    note: {note}") for note in action.notes]
    for key in plan.orphans:
        lines.append(("dim", f"  ? {key.ljust(width)}  not in specs (llmops apply --prune deletes it)"))
    lines.append(("bold", plan_summary(plan)))
    return lines


def plan_markdown(plan: Plan) -> str:
    rows = ["| | resource | action | reason | last run |", "|---|---|---|---|---|"]
    for action in plan.actions:
        if action.action == "no-op" and not action.notes:
            continue
        reason = "; ".join([*action.reasons, *action.notes]) or "up to date"
        rows.append(f"| `{SYMBOL[action.action]}` | `{action.key}` | {action.action} | {_cell(reason)} | "
                    f"{_cell((action.cost or '').removeprefix('last run '))} |")
    for key in plan.orphans:
        rows.append(f"| `?` | `{key}` | orphan | not in specs; `llmops apply --prune` deletes it | |")
    body = "\n".join(rows) if len(rows) > 2 else "_Nothing to do._"
    unchanged = sum(1 for a in plan.actions if a.action == "no-op")
    flags = " ".join(f"`{flag}`" for flag in plan.options.flags())
    return f"### llmops plan\n\n**{plan_summary(plan)}** ({unchanged} unchanged){' ' + flags if flags else ''}\n\n{body}\n"


def _cell(text: str) -> str:
    """Table-safe: no pipes, no newlines, no HTML from spec values in a PR comment."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def spec_errors_github(error: SpecError) -> str:
    return "\n".join(
        f"::error file={i.file},line={i.line},col={i.column},title=llmops spec::{i.path + ': ' if i.path else ''}{i.message}"
        for i in error.issues
    )


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
