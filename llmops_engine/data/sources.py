"""Read a Dataset's raw files as a stream of plain dict rows.

Every reader yields one row at a time, so memory does not grow with the file: JSONL is
read line by line, CSV with the csv module, Parquet one record batch at a time. A glob
is expanded in sorted order, so the row order (which `dedupe` keeps first) is the same
on every machine, and by `paths.match_files`, so no match can lie outside the repository.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from ..paths import excluding, match_files
from ..specs.dataset import Source

Row = dict


def source_files(root: Path, source: Source) -> list[Path]:
    """The files a source names, sorted; an error if there are none, or if any lies outside the
    repository. The engine's own output (its state, a local store) is never a source."""
    from ..project import load_project

    matches = match_files(root, source.path)
    if matches.problem:
        raise DataError(f"spec.source.path: {matches.problem}")
    files = excluding(matches.files, load_project(root).engine_dirs())
    if not files:
        raise DataError(f"source '{source.path}' matches no file under {root}; check spec.source.path")
    return files


def read_rows(root: Path, source: Source) -> Iterator[Row]:
    reader = _READERS[source.inferred_format()]
    for path in source_files(root, source):
        yield from reader(path)


def _jsonl(path: Path) -> Iterator[Row]:
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be one object") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            yield row


def _csv(path: Path) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)  # long answers are normal in instruction data
    with path.open("r", encoding="utf-8", newline="") as handle:
        try:
            yield from csv.DictReader(handle)
        except csv.Error as exc:
            raise DataError(f"{path}: CSV error: {exc}") from exc


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot read Parquet: {exc}") from exc


_READERS = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}
