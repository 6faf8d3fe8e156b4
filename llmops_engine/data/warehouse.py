"""Materialize a warehouse query as a content-addressed Parquet extract.

A database is not a file: the same query returns different rows tomorrow, DVC cannot hash a
table, and re-reading a warehouse on every build is slow and costly. So a Dataset with
`source: {database_url_env, query}` runs its query once (when its `refresh` policy says so) and
this module writes the result to `<out_dir>/<sha256>.parquet`, named by the hash of its bytes,
with a `<sha256>.json` sidecar (rows, columns, seconds, queried_at) and a `latest.json` pointer
keyed by the query's hash, which `latest` reads back so `refresh: manual` can reuse the extract.
The pipeline then reads the extract like any Parquet file, and the hash joins the fingerprint:
downstream retrains only when the data changed.

Guarantees:
- Bounded memory: rows stream through a server-side cursor (PostgreSQL: our own
  `DECLARE … CURSOR` + `FETCH FORWARD`, so an error position maps back onto the user's query;
  other dialects: SQLAlchemy's `stream_results`), one batch at a time — at most `BATCH_ROWS`
  rows and about `BATCH_BYTES` of values — each written as one Parquet row group.
- Same rows in the same order → same bytes → same hash (fixed writer settings and batch size;
  a pyarrow upgrade may change the bytes once). Without an ORDER BY, a database may return rows
  in any order, so a query that wants a stable hash must order its rows.
- Read-only: one statement (a second one after `;` is refused before connecting), run in a
  transaction that is always rolled back; on PostgreSQL also `SET TRANSACTION READ ONLY`, so
  a query that tries to write fails. This guards against mistakes; the boundary against a
  hostile spec is a database role that can only read. No statement timeout is set here: the
  role's or database's `statement_timeout` applies, as for any client.
- Credentials: the URL is read from an environment variable only, and errors name the database
  as `driver://host:port/db` — never the user or password; driver errors that could carry either
  are not chained.

sqlalchemy and pyarrow are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import cache
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import DataError

BATCH_ROWS = 20_000  # most rows per batch (~10 MB of support tickets); a batch is one Parquet row group
BATCH_BYTES = 32 << 20  # and about this many bytes of values at most: wide rows come in fewer per batch
PROBE_ROWS = 1_000  # the first batch, before row widths are known
CONNECT_TIMEOUT_S = 10  # a black-holed host fails in bounded time instead of the OS's minutes
LATEST = "latest.json"
_CURSOR = "llmops_extract"
_DECLARE = f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR\n"  # the query starts on its own line


@dataclass(frozen=True)
class Extract:
    """One materialized query result."""

    path: Path
    sha256: str
    rows: int
    columns: tuple[str, ...]
    seconds: float


def extract(url_env: str, query: str, out_dir: Path, environ: Mapping[str, str] = os.environ,
            *, batch_rows: int = BATCH_ROWS) -> Extract:
    """Run `query` against the database whose URL is in `environ[url_env]` and write its rows to
    `out_dir/<sha256>.parquet` (plus sidecar and `latest.json`). Raises DataError for every
    failure; on failure nothing in `out_dir` changes."""
    url = environ.get(url_env, "").strip()
    if not url:
        raise DataError(f"environment variable {url_env} is not set; it must hold the database URL "
                        "(e.g. postgresql://user@host:5432/db)")
    database = _database_name(url, url_env)
    second = _second_statement_at(query)
    if second is not None:
        raise DataError(f"the query must be one statement, but another starts at{_line_column(query, second)}; "
                        "an extract runs a single read-only query")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".extract-{uuid.uuid4().hex}.parquet.partial"
    started = time.perf_counter()
    try:
        # closing: if writing fails mid-stream, the transaction and connection end now, not at GC
        with closing(_query_batches(url, query, database, url_env, batch_rows)) as batches:
            rows, columns = _write_parquet(batches, partial)
        if rows == 0:
            raise DataError(f"the query returned no rows; check its WHERE clause and that the tables it reads "
                            f"are filled (database {database}, from ${url_env})")
        digest = _file_sha256(partial)
        path = out_dir / f"{digest}.parquet"
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    result = Extract(path, digest, rows, columns, time.perf_counter() - started)
    _write_json(out_dir / f"{digest}.json", {
        "rows": rows, "columns": list(columns), "seconds": round(result.seconds, 3),
        "queried_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    _write_json(out_dir / LATEST, {"sha256": digest, "query_sha256": query_sha256(query)})
    return result


def latest(out_dir: Path, query: str) -> Extract | None:
    """The last extract written for this exact query, or None (never extracted, a different
    query since, or its files are gone). Does not re-hash the file: it is trusted by name."""
    try:
        pointer = json.loads((out_dir / LATEST).read_text())
        if pointer.get("query_sha256") != query_sha256(query):
            return None
        digest = pointer["sha256"]
        sidecar = json.loads((out_dir / f"{digest}.json").read_text())
        path = out_dir / f"{digest}.parquet"
        if not path.is_file():
            return None
        return Extract(path, digest, int(sidecar["rows"]), tuple(sidecar["columns"]), float(sidecar["seconds"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def query_sha256(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8")).hexdigest()


def _database_name(url: str, url_env: str) -> str:
    """`driver://host:port/db` for messages: everything but the credentials. A URL that does
    not parse is an error here (without echoing it: it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DataError(f"${url_env} is not a valid database URL; expected driver://user:password@host:port/db "
                        "(e.g. postgresql://user@host:5432/db)") from None
    where = parsed.host or ""
    if parsed.port:
        where += f":{parsed.port}"
    return f"{parsed.drivername}://{where}/{parsed.database or ''}"


def _engine(url: str, database: str, url_env: str):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # psycopg 3 is the driver we install; SQLAlchemy < 2.1 picks psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    try:
        return create_engine(parsed, pool_pre_ping=False, connect_args=connect_args)
    except ModuleNotFoundError as exc:
        raise DataError(f"the database driver for {database} is not installed ({exc}); "
                        "for PostgreSQL use postgresql+psycopg://") from None
    except SQLAlchemyError:  # NoSuchModuleError: an unknown dialect name
        raise DataError(f"unknown database kind in ${url_env}: {database.split('://')[0]!r} "
                        "(e.g. postgresql://user@host:5432/db)") from None


def _query_batches(url: str, query: str, database: str, url_env: str,
                   batch_rows: int) -> Iterator[tuple[list[str], list[tuple], list]]:
    """Yield (column names, rows, driver type codes) one batch at a time, inside one read-only
    transaction that is rolled back at the end."""
    engine = _engine(url, database, url_env)
    try:
        connection = _connect(engine, url, database, url_env)
        try:
            with _query_errors(query, engine.dialect.loaded_dbapi.Error):
                transaction = connection.begin()
                try:
                    if engine.dialect.name == "postgresql":
                        yield from _postgres_batches(connection, query, batch_rows)
                    else:
                        yield from _generic_batches(connection, query, batch_rows)
                finally:
                    transaction.rollback()
        finally:
            connection.close()
    finally:
        engine.dispose()


def _postgres_batches(connection, query: str, batch_rows: int):
    connection.exec_driver_sql("SET TRANSACTION READ ONLY")
    # The server's lexer must read quotes as _second_statement_at did (the default since 9.1).
    connection.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
    connection.exec_driver_sql(_DECLARE + _literal_percent(connection, query))
    size = min(batch_rows, PROBE_ROWS)
    while True:
        result = connection.exec_driver_sql(f"FETCH FORWARD {size} FROM {_CURSOR}")
        # The driver's plain tuples: wrapping each in a SQLAlchemy Row costs ~15% of an extract.
        # At most `size` of them: FETCH bounds it on the server.
        description, rows = result.cursor.description, result.cursor.fetchall()
        result.close()
        yield [d[0] for d in description], rows, [d[1] for d in description]
        if len(rows) < size:
            return
        size = _next_batch_rows(rows, batch_rows)


def _generic_batches(connection, query: str, batch_rows: int):
    size = min(batch_rows, PROBE_ROWS)
    result = connection.exec_driver_sql(_literal_percent(connection, query),
                                        execution_options={"stream_results": True, "yield_per": size})
    names = list(result.keys())
    yield names, [], [None] * len(names)  # the names, even when there are no rows
    while rows := result.fetchmany(size):
        yield names, rows, [None] * len(names)
        size = _next_batch_rows(rows, batch_rows)


def _next_batch_rows(rows: list, batch_rows: int) -> int:
    """How many rows to fetch next so a batch holds about BATCH_BYTES of values: wide rows
    (whole documents) come in smaller batches. Estimated from up to 64 rows spread over the last
    batch — the same rows give the same sizes, so the same row groups and the same hash."""
    sample = rows[:: max(1, len(rows) // 64)]
    row_bytes = sum(_value_bytes(v) for row in sample for v in row) / len(sample)
    return max(1, min(batch_rows, int(BATCH_BYTES // max(row_bytes, 1))))


def _value_bytes(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 8


def _literal_percent(connection, query: str) -> str:
    """SQLAlchemy hands the driver parameters (none), so `format`-style drivers read `%` as a
    placeholder: double it so `LIKE 'a%'` reaches the server as written."""
    return query.replace("%", "%%") if connection.dialect.paramstyle in ("format", "pyformat") else query


def _connect(engine, url: str, database: str, url_env: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return engine.connect()
    except SQLAlchemyError as exc:
        parsed = make_url(url)
        detail = _first_line(exc)
        if "authentication failed" in detail or "password" in detail.lower():
            problem = "authentication failed: check the user and password in the URL"
        elif "does not exist" in detail and "database" in detail:
            problem = "the database does not exist"
        else:
            problem = "cannot connect: " + detail.rsplit("failed:", 1)[-1].strip()
        if parsed.username:
            problem = problem.replace(f'"{parsed.username}"', '"…"')
        if parsed.password:
            problem = problem.replace(str(parsed.password), "***")
        # `from None`: the driver's message can name the user, and its chain the connect arguments.
        raise DataError(f"database {database} (from ${url_env}): {problem}") from None


def _hint(sqlstate: str | None, at_first_word: bool) -> str:
    if sqlstate == "25006":  # read_only_sql_transaction
        return "; extracts run in a read-only transaction: the query must only read"
    if sqlstate == "42601" and at_first_word:  # DECLARE … CURSOR FOR takes only a query
        return "; an extract's query must be a SELECT (or WITH … SELECT, VALUES, TABLE)"
    return ""


@contextmanager
def _query_errors(query: str, driver_error: type[BaseException]):
    """Errors once connected are the query's: say what the database said, and where. Rows are read
    from the driver's own cursor, so its errors (`driver_error`) arrive unwrapped too."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        yield
    except DBAPIError as exc:
        raise _query_failed(query, exc.orig, _first_line(exc)) from exc
    except driver_error as exc:
        raise _query_failed(query, exc, _first_line(exc)) from exc
    except SQLAlchemyError as exc:
        raise DataError(f"the query failed: {_first_line(exc)}") from exc


def _query_failed(query: str, error: BaseException, fallback: str) -> DataError:
    diag = getattr(error, "diag", None)
    message = (getattr(diag, "message_primary", None) or fallback).strip()
    where = _query_position(query, getattr(diag, "statement_position", None))
    hint = _hint(getattr(error, "sqlstate", None), where == " (query line 1, column 1)")
    return DataError(f"the query failed: {message}{where}{hint}")


def _query_position(query: str, position: Any) -> str:
    """`(line L, column C)` in the user's query from PostgreSQL's 1-based character position in
    the statement we sent (our DECLARE line comes first)."""
    try:
        offset = int(position) - 1 - len(_DECLARE)
    except (TypeError, ValueError):
        return ""
    return f" (query{_line_column(query, offset)})" if 0 <= offset <= len(query) else ""


def _line_column(query: str, offset: int) -> str:
    before = query[:offset]
    return f" line {before.count(chr(10)) + 1}, column {offset - before.rfind(chr(10))}"


def _second_statement_at(query: str) -> int | None:
    """Where a second statement starts in `query`, or None. Pure.

    A driver that sends a query without parameters uses the simple protocol, which runs every
    `;`-separated statement: `SELECT 1; COMMIT; DELETE …` would end the read-only transaction and
    write. So a `;` followed by anything but blanks, comments or more `;` is refused. What can hide
    a `;` follows PostgreSQL's lexer (standard_conforming_strings on): '…' strings ('' escapes),
    E'…' strings (backslash escapes too), "…" identifiers, $tag$…$tag$ bodies, -- comments and
    nested /* */ comments. An unterminated one runs to the end, where the server rejects it.
    """
    i, n, ended = 0, len(query), False
    while i < n:
        char = query[i]
        if query.startswith("--", i):
            newline = query.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif query.startswith("/*", i):
            i = _block_comment_end(query, i)
        elif char.isspace() or char == ";":
            ended = ended or char == ";"
            i += 1
        elif ended:
            return i
        elif char in "'\"":
            escapes = char == "'" and i > 0 and query[i - 1] in "eE" and not (i > 1 and _in_identifier(query[i - 2]))
            i = _quoted_end(query, i, escapes)
        elif char == "$" and not (i > 0 and _in_identifier(query[i - 1])) and (tag := _DOLLAR_TAG.match(query, i)):
            close = query.find(tag.group(0), tag.end())
            i = n if close < 0 else close + len(tag.group(0))
        else:
            i += 1
    return None


_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _in_identifier(char: str) -> bool:
    return char.isalnum() or char in "_$" or ord(char) > 127


def _quoted_end(query: str, start: int, backslash_escapes: bool) -> int:
    """The index after the quote closing the string or identifier opened at `start`."""
    quote, i = query[start], start + 1
    while i < len(query):
        if backslash_escapes and query[i] == "\\":
            i += 2
        elif query[i] == quote:
            if not query.startswith(quote, i + 1):
                return i + 1
            i += 2  # a doubled quote is one quote character
        else:
            i += 1
    return len(query)


def _block_comment_end(query: str, start: int) -> int:
    depth, i = 0, start
    while i < len(query):
        if query.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif query.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(query)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- rows → Parquet ----------------------------------------------------------------------------


def _write_parquet(batches, path: Path) -> tuple[int, tuple[str, ...]]:
    """Write every batch as one row group; fixed settings so the same rows give the same bytes.
    Returns (rows, column names)."""
    import pyarrow.parquet as pq

    writer = None
    plan = None
    total = 0
    names: list[str] = []
    try:
        for names, rows, type_codes in batches:
            if not rows:
                continue
            if plan is None:
                plan = _column_plan(names, rows, type_codes)
            batch = _record_batch(plan, rows)
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema, compression="zstd", compression_level=3,
                                          version="2.6", use_dictionary=True, write_statistics=True,
                                          data_page_version="1.0")
            writer.write_batch(batch, row_group_size=len(rows))
            total += len(rows)
    finally:
        if writer is not None:
            writer.close()
    return total, tuple(names)


@dataclass(frozen=True)
class _Column:
    field: Any  # pyarrow.Field
    convert: Any = None  # values → values, before pyarrow sees them


def _column_plan(names: list[str], rows: list, type_codes: list) -> list[_Column]:
    """Each column's Arrow type, fixed from the first batch for the whole extract: PostgreSQL's
    catalog type where we know it, else inferred from the first batch's values."""
    import pyarrow as pa

    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"the query returns column(s) {', '.join(map(repr, duplicates))} more than once; "
                        "give each column its own name with AS")
    plan = []
    for name, code, column in zip(names, type_codes, zip(*rows)):
        known = _postgres_types().get(code) if isinstance(code, int) else None
        arrow_type, convert = known if known is not None else (_infer(column), None)
        plan.append(_Column(pa.field(name, arrow_type), convert))
    return plan


def _infer(values) -> Any:
    """A type for a column the driver did not describe: text when the first batch's values are
    all NULL or of mixed kinds (`_to_arrow` then renders each value as text)."""
    import pyarrow as pa

    try:
        inferred = pa.array(values).type
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.string()
    return pa.string() if pa.types.is_null(inferred) else inferred


def _record_batch(plan: list[_Column], rows: list):
    import pyarrow as pa

    columns = list(zip(*rows))
    return pa.RecordBatch.from_arrays([_to_arrow(c, v) for c, v in zip(plan, columns)],
                                      schema=pa.schema([c.field for c in plan]))


def _to_arrow(column: _Column, values):
    import pyarrow as pa

    if column.convert is not None:
        values = [None if v is None else column.convert(v) for v in values]
    try:
        return pa.array(values, type=column.field.type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        if pa.types.is_string(column.field.type):
            return pa.array([_as_text(v) for v in values], type=pa.string())
        raise DataError(f"column {column.field.name!r} changed type between batches ({exc}); "
                        "CAST it to one type in the query") from None


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _as_json(value) if isinstance(value, (dict, list)) else str(value)


def _as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


@cache
def _postgres_types() -> dict[int, tuple[Any, Any]]:
    """(Arrow type, converter) for PostgreSQL's built-in type OIDs (pg_type.dat): a column's
    type comes from the catalog, not from whichever values come first, so an all-NULL first
    batch is typed too. Other types are inferred."""
    import pyarrow as pa

    text = (pa.string(), None)
    return {
        16: (pa.bool_(), None), 21: (pa.int16(), None), 23: (pa.int32(), None), 20: (pa.int64(), None),
        26: (pa.int64(), None), 700: (pa.float32(), None), 701: (pa.float64(), None),
        1700: (pa.float64(), float),  # NUMERIC arrives as Decimal; CAST to text to keep every digit
        25: text, 1043: text, 1042: text, 19: text, 18: text,
        114: (pa.string(), _as_json), 3802: (pa.string(), _as_json), 2950: (pa.string(), str),  # json, jsonb, uuid
        17: (pa.binary(), None), 1082: (pa.date32(), None), 1083: (pa.time64("us"), None),
        1186: (pa.duration("us"), None), 1114: (pa.timestamp("us"), None), 1184: (pa.timestamp("us", tz="UTC"), None),
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, payload: dict) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
