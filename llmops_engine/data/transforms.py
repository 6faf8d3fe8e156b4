"""Transforms: each spec entry becomes one step over a stream of Arrow record batches.

The rows arrive from DuckDB in source order as batches of example fields (instruction, input,
output, and a chat source's `history`). Declarative steps are vectorized Arrow compute kernels
over each batch, so no per-row Python runs for them; `dedupe` keys rows by a vectorized 128-bit
hash and keeps 16 bytes per distinct key in sorted NumPy arrays (data/seen.py), `sample` the n
rows it keeps, `filter_regex` runs Python's
`re` under a per-row time limit (it runs here, in the main thread, where the alarm works). An
`sql` step hands the rows so far to DuckDB as an Arrow IPC file in the build directory and
streams back what the user's SELECT returns, on the connection that can read nothing else
(data/sqlscan.py). No user string is evaluated except that SELECT.

Semantics, in the order written in the spec:
  strip_whitespace  {} = every field, or a list of fields; strips both ends (Python's
                    whitespace: the characters str.strip() strips).
  drop_empty        drop a row whose named field is null or only whitespace.
  dedupe            keep the first row of each distinct key (the named fields).
  max_chars/min_chars  drop rows whose field is longer/shorter than the limit, in characters
                    (dropped, never truncated: a cut answer is a wrong answer).
                    A null field is kept; drop_empty is the rule for those.
  filter_regex      keep (keep: true) or drop (keep: false) rows where re.search matches.
  sample            keep n rows chosen by a seeded hash of their content: the same rows
                    on every machine and whatever the file order; original order kept.
  sql               a SELECT over `rows`; its result (instruction and output, input
                    optional) is the new rows, in the order it returns them.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import signal
import threading
from dataclasses import dataclass, replace
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import DataError
from ..specs.dataset import EXAMPLE_FIELDS, FilterRegex, Sample, Transform
from .examples import Example
from .seen import SeenDigests

REGEX_SECONDS_PER_ROW = 1.0  # a sane pattern takes microseconds per row; this only stops a runaway one
BATCH_ROWS = 20_000  # per step: ~10 MB of support-ticket text; per-batch Python overhead stays small
# DuckDB hands its vectors over as they are (2,048 rows): asking it for bigger Arrow batches made
# it hold ~90 MB more per million-row scan.
_SCAN_ROWS = 2_048
# Exactly the characters str.isspace() accepts (tests/test_sql_datasets.py checks the list), so
# strip_whitespace strips what Python's str.strip() strips.
PYTHON_WHITESPACE = "".join(map(chr, (0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680,
                                      *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)))

Batches = Iterator[Any]  # of pyarrow.RecordBatch, example fields as strings


@dataclass(frozen=True)
class StepContext:
    """What the steps that leave Python need: the build's DuckDB connection and directory, and
    the step's place in spec.transforms (for its files and its errors)."""

    con: Any
    work: Path
    index: int = 0


def apply_transforms(batches: Batches, transforms: list[Transform], ctx: StepContext) -> Batches:
    for index, transform in enumerate(transforms):
        name, argument = transform.operation()
        batches = _STEPS[name](batches, argument, replace(ctx, index=index))
    return batches


def content_hash(salt: Any, example: Example) -> int:
    """A stable 64-bit number for a row: same on every machine, Python version and run."""
    key = json.dumps([salt, example.get("instruction"), example.get("input"), example.get("output")])
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def content_hashes(salt: Any, batch: Any) -> list[int]:
    """content_hash of each row of an Arrow batch of examples, without a json.dumps per row: the
    key is assembled from each field's JSON text (the same bytes json.dumps writes)."""
    texts = [json_text_array(batch.column(f)) for f in EXAMPLE_FIELDS]
    keys = joined("[" + json.dumps(salt) + ", ", texts[0], ", ", texts[1], ", ", texts[2], "]")
    return [int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") for key in keys.to_pylist()]


# Strings json.dumps writes as they are, between quotes: no quote, backslash or control
# character, and (ensure_ascii) nothing past ASCII. Only the others need Python's encoder.
_PLAIN = {True: r"^[ !#-\[\]-~]*$", False: r'^[^"\\\x00-\x1f]*$'}


def json_text_array(strings: Any, ascii: bool = True) -> Any:
    """Each string (or null) of an Arrow array as json.dumps writes it (ensure_ascii=`ascii`):
    vectorized for plain strings, by json's own C encoders for the rest."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(pc.match_substring_regex(strings, _PLAIN[ascii]), True)
    texts = pc.binary_join_element_wise('"', strings, '"', "")
    special = pc.invert(plain)
    if pc.any(special).as_py():
        encode = encode_basestring_ascii if ascii else encode_basestring
        encoded = [encode(value) for value in pc.filter(strings, special).to_pylist()]
        texts = pc.replace_with_mask(texts, special, pa.array(encoded, pa.string()))
    return pc.fill_null(texts, "null")


def joined(*parts: Any) -> Any:
    """Element-wise concatenation of Arrow string arrays and constant strings."""
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(*parts, "")


def scan(con: Any, query: str) -> Batches:
    """A query's result in order, as batches of about BATCH_ROWS rows."""
    import pyarrow as pa

    pending, rows = [], 0
    for batch in con.sql(query).to_arrow_reader(_SCAN_ROWS):
        pending.append(batch)
        rows += batch.num_rows
        if rows >= BATCH_ROWS:
            yield pa.concat_batches(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_batches(pending)


# --- vectorized steps ------------------------------------------------------------------


def strip_whitespace(batches: Batches, fields: dict | list, ctx: StepContext) -> Batches:
    import pyarrow.compute as pc

    names = list(fields) if isinstance(fields, list) and fields else list(EXAMPLE_FIELDS)
    for batch in batches:
        for name in names:
            index = batch.schema.get_field_index(name)
            batch = batch.set_column(index, name, pc.utf8_trim(batch.column(index), characters=PYTHON_WHITESPACE))
        yield batch


def drop_empty(batches: Batches, fields: list[str], ctx: StepContext) -> Batches:
    import pyarrow.compute as pc

    def nonempty(column):  # null → false: a null field is empty
        trimmed = pc.utf8_trim(column, characters=PYTHON_WHITESPACE)
        return pc.fill_null(pc.greater(pc.utf8_length(trimmed), 0), False)
    yield from _kept(batches, lambda batch: _all(nonempty(batch.column(f)) for f in fields))


def max_chars(batches: Batches, limits: dict[str, int], ctx: StepContext) -> Batches:
    import pyarrow.compute as pc

    yield from _kept(batches, lambda batch: _all(
        pc.fill_null(pc.less_equal(pc.utf8_length(batch.column(f)), n), True) for f, n in limits.items()))


def min_chars(batches: Batches, limits: dict[str, int], ctx: StepContext) -> Batches:
    import pyarrow.compute as pc

    yield from _kept(batches, lambda batch: _all(
        pc.fill_null(pc.greater_equal(pc.utf8_length(batch.column(f)), n), True) for f, n in limits.items()))


def _all(masks: Iterable[Any]) -> Any:
    import pyarrow.compute as pc

    result = None
    for mask in masks:
        result = mask if result is None else pc.and_(result, mask)
    return result


def _kept(batches: Batches, mask: Callable[[Any], Any]) -> Batches:
    for batch in batches:
        yield batch.filter(mask(batch))


def dedupe(batches: Batches, fields: list[str], ctx: StepContext) -> Batches:
    seen = SeenDigests()
    for batch in batches:
        yield batch.filter(seen.first_seen(*row_keys(batch, fields)))


# Two independent keyed 64-bit SipHashes (pandas' vectorized hash_array) make a 128-bit key per
# row, as strong as the 16-byte digest a Python loop would compute, at a fifth of its cost.
_KEYS = ("llmops-dedupe-k1", "llmops-dedupe-k2")
_NULL = (0x6C6C6D6F70732D6E, 0x756C6C2D76616C75)  # a null field's hash: not what "" or "None" hash to


def row_keys(batch: Any, fields: list[str]) -> tuple[Any, Any]:
    """The 128-bit key of each row's named fields, as two NumPy uint64 arrays."""
    import numpy as np
    import pandas as pd

    columns = [batch.column(f).to_numpy(zero_copy_only=False) for f in fields]
    halves = []
    for key, null in zip(_KEYS, _NULL):
        combined = np.zeros(batch.num_rows, dtype=np.uint64)
        for values in columns:
            missing = pd.isna(values)
            hashed = pd.util.hash_array(np.where(missing, "", values), hash_key=key, categorize=False)
            combined = combined * np.uint64(1_000_003) ^ np.where(missing, np.uint64(null), hashed)
        halves.append(combined)
    return halves[0], halves[1]


# --- Python steps ----------------------------------------------------------------------


def filter_regex(batches: Batches, rule: FilterRegex, ctx: StepContext) -> Batches:
    import pyarrow as pa

    pattern = re.compile(rule.pattern)
    search = _time_limited_search if _alarm_is_free() else _search
    number = 0
    for batch in batches:
        keep = []
        for text in batch.column(rule.column).to_pylist():
            number += 1
            try:
                matched = search(pattern, text or "") is not None
            except _Overrun:
                raise DataError(
                    f"filter_regex '{rule.pattern}' ran longer than {REGEX_SECONDS_PER_ROW:g} s on row {number} "
                    f"({rule.column}); the pattern backtracks catastrophically on this text, simplify it"
                ) from None
            keep.append(matched == rule.keep)
        yield batch.filter(pa.array(keep, pa.bool_()))


class _Overrun(Exception):
    """A regex search ran past REGEX_SECONDS_PER_ROW; filter_regex turns it into a DataError."""


def _alarm_is_free() -> bool:
    """SIGALRM can bound a search only in the main thread, and only if nobody else uses it."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN)
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


def _search(pattern: re.Pattern, text: str) -> re.Match | None:
    return pattern.search(text)


def _time_limited_search(pattern: re.Pattern, text: str) -> re.Match | None:
    """Search, raising _Overrun past the limit: CPython's regex engine checks for signals as it
    backtracks, so the alarm's handler interrupts even a runaway match."""
    previous = signal.signal(signal.SIGALRM, _raise_overrun)
    signal.setitimer(signal.ITIMER_REAL, REGEX_SECONDS_PER_ROW)
    try:
        return pattern.search(text)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raise_overrun(signum, frame) -> None:
    raise _Overrun()


def sample(batches: Batches, rule: Sample, ctx: StepContext) -> Batches:
    # Bottom-n by hash: one pass, n rows of memory, independent of input order.
    import pyarrow as pa

    chosen: list[tuple[int, int, dict]] = []  # max-heap via negated hash
    schema, position = None, 0
    for batch in batches:
        schema = batch.schema
        for row, digest in zip(batch.to_pylist(), content_hashes(["sample", rule.seed], batch)):
            entry = (-digest, position, row)
            position += 1
            if len(chosen) < rule.n:
                heapq.heappush(chosen, entry)
            elif entry > chosen[0]:
                heapq.heapreplace(chosen, entry)
    if schema is not None:
        kept = [row for _, _, row in sorted(chosen, key=lambda item: item[1])]
        yield pa.RecordBatch.from_pylist(kept, schema=schema)


# --- SQL -------------------------------------------------------------------------------


def sql(batches: Batches, query: str, ctx: StepContext) -> Batches:
    """The user's SELECT over `rows` (the rows so far, in order: the example fields, and `history`,
    null unless the source is chat); its result, in its order, is the new rows. The rows reach
    DuckDB as an Arrow IPC file (out of core: one batch in memory)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from .sqlscan import nestable

    where = f"sql transform (spec.transforms[{ctx.index}])"
    path = ctx.work / f"step-{ctx.index}.arrow"
    schema = _write_ipc(batches, path)
    if schema is None:
        return
    name = f"llmops_rows_{ctx.index}"
    ctx.con.register(name, ds.dataset(path, format="ipc"))
    history = "history" if "history" in schema.names else "NULL::VARCHAR AS history"
    rows = f"SELECT instruction, input, output, {history} FROM {name}"
    relation = f"(WITH rows AS ({rows}) SELECT * FROM ({nestable(query)}))"
    columns = _bound_columns(ctx.con, relation, where)
    missing = [f for f in ("instruction", "output") if f not in columns]
    if missing:
        raise DataError(f"{where} returned no column {', '.join(missing)} "
                        f"(it returned: {', '.join(columns) or 'nothing'}); select instruction and output, "
                        "and input if you keep it")
    kept = ["instruction::VARCHAR AS instruction",
            "coalesce(input::VARCHAR, '') AS input" if "input" in columns else "'' AS input",
            "output::VARCHAR AS output"]
    if "history" in columns:  # earlier turns must stay a JSON list of turns, or be null
        kept.append(f"CASE WHEN history IS NULL OR (json_valid(history::VARCHAR) AND "
                    f"json_type(history::VARCHAR) = 'ARRAY') THEN history::VARCHAR ELSE "
                    f"error('{where}: history must be null or a JSON list of turns') END AS history")
    for batch in scan(ctx.con, f"SELECT {', '.join(kept)} FROM {relation}"):
        yield batch.cast(pa.schema([(f, pa.string()) for f in batch.schema.names]))


def _write_ipc(batches: Batches, path: Path) -> Any:
    """The batches as one Arrow IPC file; its schema, or None when there were no batches."""
    import pyarrow as pa

    writer, schema = None, None
    try:
        for batch in batches:
            if writer is None:
                schema = batch.schema
                writer = pa.ipc.new_file(str(path), schema)
            writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    return schema


def _bound_columns(con: Any, relation: str, where: str) -> list[str]:
    import duckdb

    try:
        return list(con.sql(f"SELECT * FROM {relation} LIMIT 0").columns)
    except duckdb.Error as exc:
        reason = " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())
        raise DataError(f"{where} failed: {reason}") from None


_STEPS: dict[str, Callable[[Batches, Any, StepContext], Batches]] = {
    "strip_whitespace": strip_whitespace,
    "drop_empty": drop_empty,
    "dedupe": dedupe,
    "max_chars": max_chars,
    "min_chars": min_chars,
    "filter_regex": filter_regex,
    "sample": sample,
    "sql": sql,
}
