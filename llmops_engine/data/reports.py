"""Validation results as people and programs read them: JSON, Markdown, an error message.

The Markdown report is self-contained (no scripts, styles or CDN assets), unlike GX's
data docs, so it renders offline and in a pull request.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_EXAMPLES = 5


@dataclass
class RuleResult:
    index: int
    rule: str
    kwargs: dict[str, Any]
    data: str  # "raw" | "processed"
    success: bool = True
    element_count: int = 0
    missing_count: int = 0
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    observed_value: Any = None
    error: str | None = None

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        head = f"[{self.data}] rule {self.index + 1}: {self.rule}({args})"
        if self.error:
            return f"{head}: could not run: {self.error}"
        if self.unexpected_count is not None:
            shown = ", ".join(_short(v) for v in self.examples) or "-"
            return f"{head}: {self.unexpected_count} unexpected ({self.unexpected_percent:.2f}%), e.g. {shown}"
        return f"{head}: observed {_short(self.observed_value)}"


def report_dict(dataset: str, results: list[RuleResult], rows: dict[str, int], gx_version: str | None) -> dict:
    return {
        "dataset": dataset,
        "success": all(r.success for r in results),
        "rows": rows,
        "great_expectations": gx_version,
        "rules": [asdict(r) for r in results],
    }


def report_markdown(report: dict) -> str:
    verdict = "PASSED" if report["success"] else "FAILED"
    lines = [
        f"# Validation of Dataset `{report['dataset']}`: {verdict}",
        "",
        ", ".join(f"{k} rows: {v}" for k, v in report["rows"].items()),
        "",
        "| # | data | rule | arguments | result | unexpected | examples |",
        "|---|------|------|-----------|--------|------------|----------|",
    ]
    for r in report["rules"]:
        args = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        status = "pass" if r["success"] else ("error: " + r["error"] if r["error"] else "FAIL")
        if r["unexpected_count"] is not None:
            unexpected = f"{r['unexpected_count']} ({(r['unexpected_percent'] or 0):.2f}%)"
        else:
            unexpected = f"observed {_short(r['observed_value'])}"
        examples = "; ".join(_short(v) for v in r["examples"])
        cells = [str(r["index"] + 1), r["data"], r["rule"], args, status, unexpected, examples]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value if not isinstance(value, str) else value[:200]
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return jsonable(value.item())
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return json.loads(json.dumps(value, default=str))


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def failure_message(name: str, report: dict, report_path: Path) -> str:
    failed = [RuleResult(**r) for r in report["rules"] if not r["success"]]
    lines = [f"Dataset {name} failed {len(failed)} of {len(report['rules'])} validation rules:"]
    lines += [f"  - {r.describe()}" for r in failed]
    lines.append(f"Report: {report_path}. The previous processed data is unchanged; "
                 "fix the data or the rules and apply again.")
    return "\n".join(lines)
