"""The warehouse extract against a real PostgreSQL (tests/postgres.py): types, content hashes,
read-only queries, streaming in batches, and errors that never carry the URL's credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llmops_engine.data import warehouse
from llmops_engine.data.warehouse import Extract, extract, latest
from llmops_engine.errors import DataError
from tests.postgres import DATABASE, ROLE, free_port

ENV = "WAREHOUSE_URL"

TICKETS = """
    CREATE TABLE tickets (
        id int PRIMARY KEY, question text, score float8, resolved bool,
        opened timestamptz, due timestamp, note text, amount numeric(10, 2));
    INSERT INTO tickets VALUES
        (1, 'Reset my password?', 0.5, true, '2026-01-02 03:04:05+00', '2026-02-01 00:00:00', NULL, 12.50),
        (2, 'Café ☕ 東京 — émoji 🎉', -1.25, false, '2026-01-03 10:00:00+02', NULL, 'second', NULL),
        (3, 'percent 100% off?', NULL, NULL, NULL, '2026-03-01 12:30:00', NULL, 0.01);
"""
ALL = "SELECT * FROM tickets ORDER BY id"


def failure(url_env: str, query: str, out: Path, environ: dict) -> str:
    """Run an extract that must fail; the DataError's message and its whole printed traceback."""
    with pytest.raises(DataError) as caught:
        extract(url_env, query, out, environ)
    return str(caught.value) + "\n" + "".join(traceback.format_exception(caught.value))


@pytest.fixture(scope="module")
def db(postgres):
    """The cluster, with the tickets table (re)created for this module."""
    with postgres.connect() as connection:
        connection.execute("DROP TABLE IF EXISTS tickets")
        connection.execute(TICKETS)
    return postgres


@pytest.fixture
def env(db) -> dict:
    return {ENV: db.url}


def test_extract_types_values_and_files(env, tmp_path):
    result = extract(ENV, "SELECT * FROM tickets WHERE question LIKE '%?' OR id = 2 ORDER BY id", tmp_path, env)

    assert result.rows == 3 and result.path == tmp_path / f"{result.sha256}.parquet"
    assert result.columns == ("id", "question", "score", "resolved", "opened", "due", "note", "amount")
    table = pq.read_table(result.path)
    assert {f.name: str(f.type) for f in table.schema} == {
        "id": "int32", "question": "string", "score": "double", "resolved": "bool",
        "opened": "timestamp[us, tz=UTC]", "due": "timestamp[us]", "note": "string", "amount": "double"}
    rows = table.to_pylist()
    assert rows[1]["question"] == "Café ☕ 東京 — émoji 🎉"
    assert rows[1]["opened"] == datetime(2026, 1, 3, 8, 0, tzinfo=timezone.utc)
    assert rows[0]["due"] == datetime(2026, 2, 1) and rows[0]["amount"] == 12.5
    assert [r["note"] for r in rows] == [None, "second", None]
    assert [r["resolved"] for r in rows] == [True, False, None]
    assert rows[2]["question"] == "percent 100% off?"  # `%` reaches the server as written
    sidecar = json.loads((tmp_path / f"{result.sha256}.json").read_text())
    assert sidecar["rows"] == 3 and sidecar["columns"] == list(result.columns)
    assert datetime.fromisoformat(sidecar["queried_at"]).utcoffset() == timedelta(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{result.sha256}.parquet", f"{result.sha256}.json", "latest.json"])  # no partial file left


def test_same_rows_same_hash_changed_rows_new_hash(db, env, tmp_path):
    first = extract(ENV, ALL, tmp_path / "a", env)
    again = extract(ENV, ALL, tmp_path / "b", env)
    assert again.sha256 == first.sha256
    assert again.path.read_bytes() == first.path.read_bytes()

    # Row order is content: the same rows in another order are another extract, so a query
    # that wants a stable hash must ORDER BY.
    assert extract(ENV, "SELECT * FROM tickets ORDER BY id DESC", tmp_path / "c", env).sha256 != first.sha256

    with db.connect() as connection:
        connection.execute("UPDATE tickets SET score = 0.75 WHERE id = 1")
    try:
        assert extract(ENV, ALL, tmp_path / "d", env).sha256 != first.sha256
    finally:
        with db.connect() as connection:
            connection.execute("UPDATE tickets SET score = 0.5 WHERE id = 1")


def test_null_only_unknown_and_mixed_columns(env, tmp_path):
    query = """
        SELECT g AS id, NULL::int AS typed_null, NULL AS untyped_null,
               CASE WHEN g % 2 = 0 THEN '10.0.0.1'::inet END AS address,
               (ARRAY['1', '"a"', '{"k": [1, "é"]}', 'null'])[g]::jsonb AS doc
        FROM generate_series(1, 4) g ORDER BY g"""
    result = extract(ENV, query, tmp_path, env)
    table = pq.read_table(result.path)
    assert {f.name: str(f.type) for f in table.schema} == {
        "id": "int32", "typed_null": "int32", "untyped_null": "string", "address": "string", "doc": "string"}
    assert table.column("typed_null").null_count == 4
    assert table.column("address").to_pylist() == [None, "10.0.0.1", None, "10.0.0.1"]
    # JSON null arrives from the driver as None, so it is a NULL like SQL NULL.
    assert table.column("doc").to_pylist() == ["1", '"a"', '{"k": [1, "é"]}', None]


def test_streams_in_bounded_batches_through_a_server_cursor(db, env, tmp_path):
    query = "SELECT g AS id, repeat('x', 40) || g AS body FROM generate_series(1, 200000) g ORDER BY g"
    batches = warehouse._query_batches(db.url, query, "db", ENV, 20_000)
    names, rows, _ = next(batches)
    try:
        assert names == ["id", "body"] and len(rows) == warehouse.PROBE_ROWS
        # The server holds the rest: the session's last statement is a FETCH from our cursor.
        with db.connect() as observer:
            statements = [r[0] for r in observer.execute(
                "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND usename = %s", [ROLE])]
        assert any(s.startswith("FETCH FORWARD 1000 FROM llmops_extract") for s in statements), statements
    finally:
        batches.close()

    result = extract(ENV, query, tmp_path, env)
    metadata = pq.ParquetFile(result.path).metadata
    assert result.rows == 200_000 and metadata.num_rows == 200_000
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [1000] + [20_000] * 9 + [19_000]


@pytest.mark.parametrize("url", ["postgres", "sqlite"])
def test_wide_rows_come_in_fewer_rows_per_batch(db, tmp_path, monkeypatch, url):
    """A batch is bounded in bytes too, so whole documents per row cannot blow memory up."""
    if url == "sqlite":
        import sqlite3

        with sqlite3.connect(tmp_path / "w.db") as connection:
            connection.execute("CREATE TABLE docs AS WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g "
                               "WHERE n < 2000) SELECT n AS id, printf('%.10000c', 'x') AS body FROM g")
        url = f"sqlite:///{tmp_path / 'w.db'}"
        query = "SELECT id, body FROM docs ORDER BY id"
    else:
        url = db.url
        query = "SELECT g AS id, repeat('x', 10000) AS body FROM generate_series(1, 2000) g ORDER BY g"
    monkeypatch.setattr(warehouse, "BATCH_BYTES", 1 << 20)

    result = extract(ENV, query, tmp_path / "out", {ENV: url})

    metadata = pq.ParquetFile(result.path).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert result.rows == 2000 and sizes == [1000] + [104] * 9 + [64]  # 1 MiB / (10,000 + 8) bytes a row


@pytest.mark.parametrize("query, expected", [
    ("SELECT * FROM tickets WHERE id > 99", "the query returned no rows"),
    ("SELEC * FROM tickets", 'syntax error at or near "SELEC" (query line 1, column 1)'),
    ("SELECT id,\n  nope FROM tickets", 'column "nope" does not exist (query line 2, column 3)'),
    ("DELETE FROM tickets RETURNING *", "(query line 1, column 1); an extract's query must be a SELECT"),
    ("SELECT nextval('ticket_numbers')", "cannot execute nextval() in a read-only transaction"),
    ("SELECT close_all()", "cannot execute UPDATE in a read-only transaction"),
    ("WITH gone AS (DELETE FROM tickets RETURNING *) SELECT * FROM gone", "data-modifying"),
    ("SELECT 1 AS a, 2 AS a", "column(s) 'a' more than once"),
    ("SELECT 'infinity'::date AS d", "the query failed: "),  # the driver's own error, while reading rows
])
def test_bad_queries_fail_clearly_and_write_nothing(db, env, tmp_path, query, expected):
    with db.connect() as connection:
        connection.execute("CREATE SEQUENCE IF NOT EXISTS ticket_numbers")
        connection.execute("CREATE OR REPLACE FUNCTION close_all() RETURNS int LANGUAGE sql AS "
                           "'UPDATE tickets SET resolved = true RETURNING 1'")
    previous = extract(ENV, ALL, tmp_path, env)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    message = failure(ENV, query, tmp_path, env)

    assert expected in message and db.password not in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert latest(tmp_path, ALL) == Extract(previous.path, previous.sha256, 3, previous.columns, round(previous.seconds, 3))
    with db.connect() as connection:  # nothing was written
        assert connection.execute("SELECT count(*), count(resolved) FROM tickets").fetchone() == (3, 2)


@pytest.mark.parametrize("query, second", [
    ("SELECT 1", None),
    ("SELECT 1;", None),
    ("SELECT 1 ;; \n -- done; really\n /* ; */", None),
    ("SELECT ';' AS a, 'it''s; fine' AS b", None),
    ("SELECT E'it\\'s; fine' AS a", None),
    ("SELECT 'a\\'; DELETE FROM t", "DELETE"),  # standard string: the backslash is a character
    ('SELECT 1 AS "semi;""colon"', None),
    ("SELECT $$;$$, $body$ ; $$ ; $body$", None),
    ("SELECT a$b$c FROM t; DROP TABLE t", "DROP"),  # `a$b$c` is an identifier, not a $b$ body
    ("SELECT $1; COMMIT", "COMMIT"),
    ("SELECT 1 /* outer /* inner; */ still comment; */ ; CREATE TABLE x ()", "CREATE"),
    ("SELECT 1; COMMIT; CREATE TABLE pwned AS SELECT 1", "COMMIT"),
    ("SELECT 'unterminated; DELETE", None),  # the server rejects it
])
def test_second_statement_detection(query, second):
    """Decides whether a query hides another statement; pure."""
    at = warehouse._second_statement_at(query)
    assert (None if at is None else query[at:].split()[0].rstrip(";")) == second


def test_a_second_statement_is_refused_before_anything_runs(db, env, tmp_path):
    message = failure(ENV, "SELECT 1 AS a; COMMIT; CREATE TABLE pwned AS SELECT 1", tmp_path, env)
    assert "the query must be one statement, but another starts at line 1, column 16" in message
    with db.connect() as connection:
        assert connection.execute("SELECT to_regclass('pwned')").fetchone() == (None,)


@pytest.mark.parametrize("environ, expected", [
    ({}, "environment variable WAREHOUSE_URL is not set; it must hold the database URL"),
    ({ENV: "  "}, "environment variable WAREHOUSE_URL is not set"),
    ({ENV: "127.0.0.1:5432/warehouse?password=s3cr3t-pw"}, "$WAREHOUSE_URL is not a valid database URL"),
    ({ENV: "postgresql://u:s3cr3t-pw@127.0.0.1:notaport/db"}, "$WAREHOUSE_URL is not a valid database URL"),
    ({ENV: "nosuchdb://u:s3cr3t-pw@127.0.0.1/db"}, "unknown database kind in $WAREHOUSE_URL: 'nosuchdb'"),
    ({ENV: "postgresql+psycopg2://u:s3cr3t-pw@127.0.0.1/db"}, "driver for postgresql+psycopg2://127.0.0.1/db is not installed"),
])
def test_url_problems(environ, expected, tmp_path):
    message = failure(ENV, "SELECT 1", tmp_path, environ)
    assert expected in message and "s3cr3t-pw" not in message


def test_wrong_password_never_shows_either_password_or_user(db, tmp_path):
    url = db.url.replace(db.password, "wrong-s3cr3t")
    message = failure(ENV, ALL, tmp_path, {ENV: url})
    assert f"database postgresql+psycopg://127.0.0.1:{db.port}/{DATABASE} (from $WAREHOUSE_URL): " \
           "authentication failed" in message
    assert "wrong-s3cr3t" not in message and f'"{ROLE}"' not in message  # the driver's text names the user


def test_database_down_is_clear_fast_and_secret_free(db, tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://{ROLE}:{db.password}@127.0.0.1:{port}/{DATABASE}"
    started = time.monotonic()
    message = failure(ENV, ALL, tmp_path, {ENV: url})
    assert time.monotonic() - started < 5
    assert f"database postgresql://127.0.0.1:{port}/{DATABASE} (from $WAREHOUSE_URL): cannot connect: " \
           "Connection refused" in message
    assert db.password not in message and f'"{ROLE}"' not in message


def test_missing_database(db, tmp_path):
    message = failure(ENV, ALL, tmp_path, {ENV: db.url.replace(f"/{DATABASE}", "/nowhere")})
    assert "/nowhere (from $WAREHOUSE_URL): the database does not exist" in message
    assert db.password not in message


def test_latest_finds_the_last_extract_of_the_same_query(env, tmp_path):
    assert latest(tmp_path, ALL) is None
    first = extract(ENV, ALL, tmp_path, env)
    found = latest(tmp_path, ALL)
    assert found == Extract(first.path, first.sha256, first.rows, first.columns, round(first.seconds, 3))
    assert latest(tmp_path, ALL + " ") is None  # another query text: query again

    other = extract(ENV, "SELECT id FROM tickets ORDER BY id", tmp_path, env)
    assert latest(tmp_path, ALL) is None and latest(tmp_path, "SELECT id FROM tickets ORDER BY id").sha256 == other.sha256
    other.path.unlink()
    assert latest(tmp_path, "SELECT id FROM tickets ORDER BY id") is None  # its file is gone
    (tmp_path / "latest.json").write_text("{not json")
    assert latest(tmp_path, ALL) is None


def test_other_dialects_stream_and_type_by_inference(tmp_path):
    """SQLite (any non-PostgreSQL dialect) goes through SQLAlchemy's stream_results; its columns
    have no declared type, so the first batch decides, and mixed values become text."""
    import sqlite3

    path = tmp_path / "w.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (id, mixed, empty, late)")
        connection.executemany("INSERT INTO t VALUES (?, ?, NULL, ?)",
                               [(i, i if i % 2 else f"s{i}", i if i < 5 else "text") for i in range(1, 9)])
    env = {ENV: f"sqlite:///{path}"}

    result = extract(ENV, "SELECT id, mixed, empty FROM t ORDER BY id", tmp_path / "out", env, batch_rows=3)
    table = pq.read_table(result.path)
    assert {f.name: str(f.type) for f in table.schema} == {"id": "int64", "mixed": "string", "empty": "string"}
    assert table.column("mixed").to_pylist()[:2] == ["1", "s2"] and pq.ParquetFile(result.path).num_row_groups == 3

    one_batch = extract(ENV, "SELECT late FROM t ORDER BY id", tmp_path / "out", env)
    assert pq.read_table(one_batch.path).column("late").to_pylist() == ["1", "2", "3", "4"] + ["text"] * 4
    # Typed as int64 by its first batch, then text arrives: say so rather than guess.
    with pytest.raises(DataError, match="column 'late' changed type between batches"):
        extract(ENV, "SELECT late FROM t ORDER BY id", tmp_path / "out", env, batch_rows=3)


def test_importing_the_module_stays_light():
    code = ("import sys, llmops_engine.data.warehouse; "
            "print(sorted(m for m in ('sqlalchemy', 'pyarrow', 'psycopg', 'pandas') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
