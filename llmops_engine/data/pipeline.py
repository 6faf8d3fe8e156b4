"""The Dataset recipe: read → map → transform → split → validate → publish.

DuckDB reads the source out of core (data/sources.py: its readers, the column mapping in SQL,
spilling to the build directory past its memory limit) and hands the rows over in order as
Arrow batches; the transforms are steps over those batches (data/transforms.py). One ordered
pass splits rows by their content hash into train.jsonl / eval.jsonl (lines assembled
vectorized, byte-identical to json.dumps) and feeds Great Expectations chunk by chunk;
raw-data rules read the source in chunks of their own. Files are written into a temporary
sibling directory and swapped into place only when validation passes, so a failed build
leaves the previous good processed data exactly as it was.

The connection reads only the source's files and the build directory (sqlscan.py), so not
even an `sql` step can read anything else."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DataError, ValidationFailed
from ..specs.dataset import EXAMPLE_FIELDS, DatasetSpec
from .examples import chat_to_example, turns_of
from .reports import failure_message, report_dict, report_markdown
from .sources import mapped_columns, raw_relation, source_files, text_relation
from .split import eval_mask
from .sqltext import quoted, sql_list
from .transforms import Batches, StepContext, apply_transforms, joined, json_text_array, scan
from .validation import ChunkValidator, gx_version, value_digests

TRAIN, EVAL = "train.jsonl", "eval.jsonl"
REPORT_JSON, REPORT_MD = "validation.json", "validation.md"
OUTPUT_FILES = (TRAIN, EVAL, REPORT_JSON, REPORT_MD)
# DuckDB's share of a build; Python's batches and Great Expectations come on top.
MEMORY_LIMIT = os.environ.get("LLMOPS_DATA_MEMORY", "128MB")
# DuckDB's threads: with two, DuckDB reads and maps the next rows while Python works on a batch
# (measured: 12.7 s vs 14.9 s per million rows, for ~40 MB more read buffers).
THREADS = int(os.environ.get("LLMOPS_DATA_THREADS", "2"))


@dataclass
class BuildResult:
    raw_rows: int
    train_rows: int
    eval_rows: int
    report: dict


@dataclass(frozen=True)
class SourceData:
    """What the build reads besides the spec: an sql source's file patterns (from its SQL),
    a database source's extract (made by the plan)."""

    sql_patterns: tuple[str, ...] = ()
    extract: Path | None = None


def build(name: str, spec: DatasetSpec, root: Path, out_dir: Path, failure_dir: Path,
          data: SourceData = SourceData()) -> BuildResult:
    """Write train/eval + reports to out_dir, or raise and leave out_dir untouched."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        result = _build_into(name, spec, root, work, data)
        if not result.report["success"]:
            _keep_failure_reports(work, failure_dir)
            raise ValidationFailed(failure_message(name, result.report, failure_dir / REPORT_MD))
        _check_split(name, spec, result)
        _swap_in(work, out_dir)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_into(name: str, spec: DatasetSpec, root: Path, work: Path, data: SourceData) -> BuildResult:
    from .sqlscan import locked_connection

    files = source_files(root, spec.source, data.sql_patterns) + ([data.extract] if data.extract else [])
    # DuckDB spills, and Python steps keep their Parquet, in the build directory.
    con = locked_connection(files, work, memory_limit=MEMORY_LIMIT, threads=THREADS)
    with closing(con), _duckdb_errors(name, root):
        raw = raw_relation(root, spec.source, data.sql_patterns, data.extract)
        source_columns = _source_columns(con, raw)
        _check_columns(name, con, raw, source_columns, spec)
        results = _validate_raw(con, raw, source_columns, spec) if _checks(spec, "raw") else []
        source = _Counter()
        examples = apply_transforms(source.tap(_mapped(con, root, spec, raw, source_columns)), spec.transforms,
                                    StepContext(con, work))
        processed = ChunkValidator(spec.validation, "processed", lookup=_lookup(con, _written(work))) \
            if _checks(spec, "processed") else None
        train_rows, eval_rows = _write_split(examples, spec, work, processed)
        if source.rows == 0:
            raise _no_rows(name, spec)
        results += processed.finish() if processed else []
    raw_rows = source.rows
    counts = {"raw": raw_rows, "train": train_rows, "eval": eval_rows}
    report = report_dict(name, results, counts, gx_version() if results else None)
    (work / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (work / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    for step in work.glob("step-*"):
        step.unlink()
    return BuildResult(raw_rows, train_rows, eval_rows, report)


@contextmanager
def _duckdb_errors(name: str, root: Path) -> Iterator[None]:
    """DuckDB's errors (and those it raises through an Arrow stream, as Arrow's) as DataError: its
    first line, with repository paths written relative to the repository."""
    import duckdb
    import pyarrow as pa

    try:
        yield
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        lines = str(exc).strip().splitlines()
        text = (lines[0] if lines else type(exc).__name__).replace(f"{root.resolve()}/", "").replace(f"{root}/", "")
        raise DataError(f"Dataset {name}: {text}") from None


def _checks(spec: DatasetSpec, data: str) -> bool:
    return bool(spec.validation) and spec.validate_on in (data, "both")


def _source_columns(con: Any, raw: str) -> list[str]:
    return list(con.sql(f"SELECT * FROM {raw} LIMIT 0").columns)


def _check_columns(name: str, con: Any, raw: str, have: list[str], spec: DatasetSpec) -> None:
    """The columns the examples need must exist; `input` may be absent (it becomes "")."""
    if spec.source.inferred_format() == "jsonl" and have == ["json"] and "json" not in mapped_columns(spec.columns):
        # DuckDB's reading of lines that are not objects
        if not con.sql(f"SELECT count(*) FROM {raw}").fetchall()[0][0]:
            raise _no_rows(name, spec)
        raise DataError("the source's lines are not JSON objects; each line must be one JSON object")
    columns = spec.columns
    needed = [columns.messages] if columns.messages else [columns.instruction, columns.output]
    missing = [c for c in needed if c not in have]
    if missing:
        shown = ", ".join(sorted(have)) or "none"
        raise DataError(f"source has no column {', '.join(missing)} (it has: {shown}); fix spec.columns")


def _mapped(con: Any, root: Path, spec: DatasetSpec, raw: str, have: list[str]) -> Batches:
    """The rows as examples, in source order: instruction, input, output (and a chat source's
    history). The column mapping is SQL; a chat source's turns are mapped in Python."""
    columns = spec.columns
    source = text_relation(root, spec.source, columns, raw, have)
    if columns.messages:
        query = f"SELECT {quoted(columns.messages)} AS messages FROM {source}"
        return _chat_examples(scan(con, query))
    text = f"coalesce({quoted(columns.input)}, '')" if columns.input in have else "''"
    query = (f"SELECT {quoted(columns.instruction)} AS instruction, {text} AS input, "
             f"{quoted(columns.output)} AS output FROM {source}")
    return scan(con, query)


def _chat_examples(batches) -> Batches:
    import pyarrow as pa

    schema = pa.schema([(f, pa.string()) for f in (*EXAMPLE_FIELDS, "history")])
    for batch in batches:
        examples = [chat_to_example(turns_of(value)) for value in batch.column("messages").to_pylist()]
        yield pa.RecordBatch.from_pylist(
            [{**{f: e[f] for f in EXAMPLE_FIELDS}, "history": json.dumps(e["history"], ensure_ascii=False)}
             for e in examples], schema=schema)


def _validate_raw(con: Any, raw: str, columns: list[str], spec: DatasetSpec) -> list:
    check = ChunkValidator(spec.validation, "raw", lookup=_lookup(con, raw))
    wanted = check.needed_columns()
    values = columns if wanted is None else [c for c in wanted if c in columns]
    digests = [c for c in check.digest_columns() if c in columns]
    read = list(dict.fromkeys(values + digests)) or columns[:1]
    for batch in scan(con, f"SELECT {', '.join(map(quoted, read))} FROM {raw}"):
        check.add(batch.select(values).to_pandas(), value_digests(batch, digests), columns)
    return check.finish()


def _lookup(con: Any, relation: str) -> Callable[[str, list[int]], dict[int, Any]]:
    """Finds the values behind digests (failed uniqueness rules' examples) in one more streamed pass."""
    def values_of(column: str, digests: list[int]) -> dict[int, Any]:
        import numpy as np

        wanted, found = np.array(digests, dtype=np.int64), {}
        for batch in scan(con, f"SELECT {quoted(column)} FROM {relation}"):
            hashed = value_digests(batch, [column])[column]
            hits = np.flatnonzero(np.isin(hashed.to_numpy(dtype=np.int64, na_value=0), wanted) & ~hashed.isna())
            for index in hits.tolist():
                found.setdefault(int(hashed[index]), batch.column(0)[index].as_py())
            if len(found) == len(digests):
                break
        return found
    return values_of


def _written(work: Path) -> str:
    """The written train/eval files as a relation."""
    declared = ", ".join(f"'{f}': 'VARCHAR'" for f in EXAMPLE_FIELDS)
    return (f"read_json({sql_list([work / TRAIN, work / EVAL])}, format='newline_delimited', "
            f"columns={{{declared}}})")


def _write_split(examples: Batches, spec: DatasetSpec, work: Path, check: ChunkValidator | None) -> tuple[int, int]:
    """One ordered pass: each row to train or eval by its content hash, and to the validator."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digests = [c for c in (check.digest_columns() if check else []) if c in EXAMPLE_FIELDS]
    wanted = (check.needed_columns() if check else None) or EXAMPLE_FIELDS
    values = [f for f in EXAMPLE_FIELDS if f in wanted]
    counts = {TRAIN: 0, EVAL: 0}
    with (work / TRAIN).open("w", encoding="utf-8", newline="\n") as train, \
            (work / EVAL).open("w", encoding="utf-8", newline="\n") as evaluation:
        for batch in examples:
            lines, to_eval = _lines(batch), pa.array(eval_mask(batch, spec.split), pa.bool_())
            for target, handle, mask in ((TRAIN, train, pc.invert(to_eval)), (EVAL, evaluation, to_eval)):
                chosen = pc.filter(lines, mask)
                if len(chosen):
                    handle.write(_text_lines(chosen))
                counts[target] += len(chosen)
            if check:
                check.add(batch.select(values).to_pandas(), value_digests(batch, digests), EXAMPLE_FIELDS)
    return counts[TRAIN], counts[EVAL]


def _lines(batch: Any) -> Any:
    """Each example as the JSON line written for it (an Arrow array): its fields, and a chat
    source's earlier turns (for chat prompts) when it has them. The bytes
    json.dumps(ensure_ascii=False) writes, made from each field's JSON text."""
    import pyarrow as pa

    texts = [json_text_array(batch.column(f), ascii=False) for f in EXAMPLE_FIELDS]
    lines = joined('{"instruction": ', texts[0], ', "input": ', texts[1], ', "output": ', texts[2], "}")
    if "history" not in batch.schema.names:
        return lines
    histories = batch.column("history").to_pylist()
    return pa.array([line[:-1] + ', "history": ' + json.dumps(json.loads(turns), ensure_ascii=False) + "}"
                     if turns and turns != "[]" else line for line, turns in zip(lines.to_pylist(), histories)],
                    pa.string())


def _text_lines(lines: Any) -> str:
    """An Arrow array of lines as one text, each line ended by a newline."""
    import pyarrow as pa
    import pyarrow.compute as pc

    whole = pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines)
    return pc.binary_join(whole, "\n")[0].as_py() + "\n"


class _Counter:
    def __init__(self) -> None:
        self.rows = 0

    def tap(self, batches: Batches) -> Batches:
        for batch in batches:
            self.rows += batch.num_rows
            yield batch


def _no_rows(name: str, spec: DatasetSpec) -> DataError:
    return DataError(f"Dataset {name}: the source has no rows"
                     + ("; no rows to evaluate" if spec.split.eval_only() else "") + "; check spec.source")


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
