"""The Dataset recipe: read → map → transform → split → validate → publish.

One streaming pass: rows flow from the reader through the column mapping and the
transforms into train.jsonl / eval.jsonl, while validators watch the raw and/or
processed stream in chunks. Files are written into a temporary sibling directory and
swapped into place only when validation passes, so a failed build leaves the previous
good processed data exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DataError, ValidationFailed
from ..specs.dataset import EXAMPLE_FIELDS, DatasetSpec
from .examples import Example, to_example
from .reports import failure_message, report_dict, report_markdown
from .sources import read_rows
from .split import is_eval
from .transforms import apply_transforms
from .validation import ChunkValidator, gx_version

TRAIN, EVAL = "train.jsonl", "eval.jsonl"
REPORT_JSON, REPORT_MD = "validation.json", "validation.md"
OUTPUT_FILES = (TRAIN, EVAL, REPORT_JSON, REPORT_MD)


@dataclass
class BuildResult:
    raw_rows: int
    train_rows: int
    eval_rows: int
    report: dict


def build(name: str, spec: DatasetSpec, root: Path, out_dir: Path, failure_dir: Path) -> BuildResult:
    """Write train/eval + reports to out_dir, or raise and leave out_dir untouched."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        result = _build_into(name, spec, root, work)
        if not result.report["success"]:
            _keep_failure_reports(work, failure_dir)
            raise ValidationFailed(failure_message(name, result.report, failure_dir / REPORT_MD))
        _check_split(name, spec, result)
        _swap_in(work, out_dir)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_into(name: str, spec: DatasetSpec, root: Path, work: Path) -> BuildResult:
    raw_check = processed_check = None
    if _checks(spec, "raw"):
        raw_check = ChunkValidator(spec.validation, "raw", reread=lambda: read_rows(root, spec.source))
    if _checks(spec, "processed"):
        processed_check = ChunkValidator(spec.validation, "processed", list(EXAMPLE_FIELDS),
                                         reread=lambda: _read_written(work))
    counter = _Counter()
    raw = counter.tap(read_rows(root, spec.source))
    if raw_check:
        raw = raw_check.tap(raw)
    examples = apply_transforms(_mapped(raw, spec), spec.transforms)
    if processed_check:
        examples = processed_check.tap(examples)
    train_rows, eval_rows = _write_split(examples, spec, work)
    results = (raw_check.finish() if raw_check else []) + (processed_check.finish() if processed_check else [])
    rows = {"raw": counter.rows, "train": train_rows, "eval": eval_rows}
    report = report_dict(name, results, rows, gx_version() if results else None)
    (work / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (work / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    return BuildResult(counter.rows, train_rows, eval_rows, report)


def _checks(spec: DatasetSpec, data: str) -> bool:
    return bool(spec.validation) and spec.validate_on in (data, "both")


def _mapped(rows: Iterable[dict], spec: DatasetSpec) -> Iterator[Example]:
    for number, row in enumerate(rows):
        if number == 0:
            _check_columns(row, spec)
        yield to_example(row, spec.columns)


def _check_columns(first_row: dict, spec: DatasetSpec) -> None:
    columns = spec.columns
    needed = [columns.messages] if columns.messages else [columns.instruction, columns.output]
    missing = [c for c in needed if c not in first_row]
    if missing:
        have = ", ".join(sorted(map(str, first_row))) or "none"
        raise DataError(f"source has no column {', '.join(missing)} (first row has: {have}); fix spec.columns")


def _write_split(examples: Iterable[Example], spec: DatasetSpec, work: Path) -> tuple[int, int]:
    counts = {TRAIN: 0, EVAL: 0}
    with (work / TRAIN).open("w", encoding="utf-8", newline="\n") as train, \
            (work / EVAL).open("w", encoding="utf-8", newline="\n") as evaluation:
        for example in examples:
            target = EVAL if is_eval(example, spec.split) else TRAIN
            line = json.dumps(_written(example), ensure_ascii=False)
            (evaluation if target == EVAL else train).write(line + "\n")
            counts[target] += 1
    return counts[TRAIN], counts[EVAL]


def _written(example: Example) -> dict:
    """The example fields, and a chat source's earlier turns (for chat prompts) when it has them."""
    written = {f: example.get(f) for f in EXAMPLE_FIELDS}
    return written | {"history": example["history"]} if example.get("history") else written


def _read_written(work: Path) -> Iterator[Example]:
    for name in (TRAIN, EVAL):
        with (work / name).open(encoding="utf-8") as handle:
            yield from map(json.loads, handle)


def _check_split(name: str, spec: DatasetSpec, result: BuildResult) -> None:
    if spec.split.eval_only():  # a benchmark or regression set: train is empty by design
        if result.eval_rows == 0:
            raise DataError(f"Dataset {name}: no rows to evaluate; add data or loosen the transforms")
        return
    if result.train_rows == 0 or result.eval_rows == 0:
        raise DataError(
            f"Dataset {name}: the split left {result.train_rows} train and {result.eval_rows} eval rows; "
            "both need rows: add data, loosen the transforms, or change split.eval_fraction"
        )


def _swap_in(work: Path, out_dir: Path) -> None:
    """Replace out_dir's files with work's; each file moves with an atomic rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        os.replace(work / name, out_dir / name)


def _keep_failure_reports(work: Path, failure_dir: Path) -> None:
    failure_dir.mkdir(parents=True, exist_ok=True)
    for name in (REPORT_JSON, REPORT_MD):
        shutil.copy2(work / name, failure_dir / name)


class _Counter:
    def __init__(self) -> None:
        self.rows = 0

    def tap(self, rows: Iterable[dict]) -> Iterator[dict]:
        for row in rows:
            self.rows += 1
            yield row
