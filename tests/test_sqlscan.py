"""Dataset SQL: what it reads (analyze), reading exactly the matched files (rewrite), the locked
DuckDB connection as the real barrier, and the import-light scan_all used by validate/plan."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from llmops_engine.data.sqlscan import analyze, locked_connection, rewrite
from llmops_engine.specs.sqlfacts import SqlFacts, scan_all
from llmops_engine.errors import DataError
from llmops_engine.paths import is_glob, match_files

ACCEPTED = [
    # (role, sql, patterns it reads)
    ("source", "SELECT question, answer FROM read_json_auto('data/*.jsonl')", ("data/*.jsonl",)),
    ("source", "SELECT * FROM read_json('data/a.jsonl', format='newline_delimited')", ("data/a.jsonl",)),
    ("source", "SELECT * FROM read_ndjson_auto('a.jsonl') UNION ALL SELECT * FROM read_ndjson('b.jsonl')",
     ("a.jsonl", "b.jsonl")),
    ("source", "SELECT * FROM read_csv(['b.csv', 'a.csv', 'b.csv'], header=true)", ("b.csv", "a.csv")),
    ("source", "SELECT * FROM read_csv_auto('x.csv') JOIN parquet_scan('p/*.parquet') USING (id)",
     ("x.csv", "p/*.parquet")),
    ("source", "SELECT * FROM read_json_auto('q.jsonl') q JOIN read_json_auto('a.jsonl') a ON q.id = a.id",
     ("q.jsonl", "a.jsonl")),
    ("source", "SELECT * FROM 'data/x.jsonl'", ("data/x.jsonl",)),
    ("source", "FROM 'data/**/*.parquet' SELECT id", ("data/**/*.parquet",)),
    ("source", "SELECT * FROM 'logs/a.csv.gz' AS t(c1, c2)", ("logs/a.csv.gz",)),
    ("source", "WITH q AS (SELECT * FROM read_parquet('q.parquet')), a AS (SELECT * FROM q) SELECT * FROM a",
     ("q.parquet",)),
    ("source", "SELECT (SELECT count(*) FROM 'first.jsonl') AS n FROM read_json_auto('second.jsonl')",
     ("first.jsonl", "second.jsonl")),
    ("source", "SELECT * FROM read_json_auto($$data/it's.jsonl$$)", ("data/it's.jsonl",)),
    ("source", "VALUES (1, 'a'), (2, 'b')", ()),
    ("source", "SELECT i AS id FROM range(3) r(i)", ()),
    ("transform", "SELECT * FROM rows WHERE length(output) < 2000", ()),
    ("transform", "SELECT * FROM ROWS", ()),
    ("transform", "WITH kept AS (SELECT * FROM rows WHERE output <> '') SELECT k.* REPLACE (t.w AS input) "
                  "FROM kept k, unnest(string_split(k.input, ' ')) t(w)", ()),
    ("transform", "SELECT *, lower(instruction) AS q FROM rows QUALIFY row_number() OVER (PARTITION BY q) = 1", ()),
    ("transform", "SELECT instruction, list_transform([output], lambda t: upper(t))[1] AS output FROM rows;", ()),
]

REFUSED = [
    # (role, sql, words the problem must contain, text the offset must point at, or None for no offset)
    ("source", "COPY (SELECT 1) TO 'out.csv'", "allowed (found COPY)", "COPY"),
    ("source", "ATTACH 'other.db' AS o", "allowed (found ATTACH)", "ATTACH"),
    ("source", "INSTALL httpfs", "allowed (found INSTALL)", "INSTALL"),
    ("transform", "PRAGMA version", "allowed (found PRAGMA)", "PRAGMA"),
    ("transform", "SELECT * FROM rows WHERE length(answer) < 2000", 'column "answer" not found', None),
    ("transform", "SELECT instruction FROM rows", "must return instruction and output", None),
    ("transform", "SELECT * FROM rows WHERE no_such_function(output)", "no_such_function does not exist", None),
    ("transform", "SET enable_external_access = true", "allowed (found SET)", "SET"),
    ("transform", "CREATE TABLE t AS SELECT * FROM rows", "allowed (found CREATE)", "CREATE"),
    ("transform", "SELECT * FROM rows; SELECT 2", "found 2 statements: SELECT, SELECT", "SELECT 2"),
    ("source", "SELECT 1;\nCOPY (SELECT 1) TO 'x'", "found 2 statements: SELECT, COPY", "COPY"),
    ("source", "  -- nothing", "the SQL is empty", None),
    ("source", "SELECT * FROM read_json_auto('data/x.jsonl') WHERE", "does not parse: syntax error", "WHERE"),
    ("source", "SELECT getenv('HOME')", "function getenv() is not allowed", "getenv"),
    ("transform", "SELECT current_setting('temp_directory') FROM rows", "function current_setting()", "current_setting"),
    ("transform", "SELECT * FROM rows WHERE id IN (SELECT 1 FROM duckdb_settings())", "duckdb_settings()", "duckdb_settings"),
    ("source", "SELECT * FROM read_text('data/notes.txt')", "table function read_text() is not allowed", "read_text"),
    ("source", "SELECT * FROM read_blob('data/*.bin')", "read_blob()", "read_blob"),
    ("source", "SELECT * FROM glob('*')", "glob()", "glob"),
    ("source", "SELECT * FROM sniff_csv('data/a.csv')", "sniff_csv()", "sniff_csv"),
    ("source", "SELECT * FROM query('SELECT 1')", "query()", "query"),
    ("source", "SELECT * FROM postgres_scan('host=db', 'public', 't')", "postgres_scan()", "postgres_scan"),
    ("source", "SELECT * FROM system.main.read_text('x')", "read_text()", "system.main.read_text"),
    ("source", "SELECT * FROM read_csv('/etc/passwd')", "is absolute", "read_csv"),
    ("source", "SELECT * FROM '/etc/hosts.csv'", "is absolute", "'/etc/hosts.csv'"),
    ("source", "SELECT * FROM read_json_auto(['ok.jsonl', '../secret.jsonl'])", "contains '..'", "read_json_auto"),
    ("source", "SELECT * FROM read_parquet('https://example.invalid/x.parquet')", "is a URL", "read_parquet"),
    ("source", "SELECT * FROM 's3://bucket/x.csv'", "is a URL", "'s3://"),
    ("source", "SELECT * FROM read_csv('data/' || 'a.csv')", "must name its files with a string", "read_csv"),
    ("source", "SELECT * FROM read_csv((SELECT 'a.csv'))", "computed paths", "read_csv"),
    ("source", "SELECT * FROM read_csv(['a.csv', 1])", "must name its files", "read_csv"),
    ("source", "SELECT * FROM read_csv(?)", "must name its files", "read_csv"),
    ("source", "SELECT * FROM users", "there is no table 'users'", "users"),
    ("source", "SELECT * FROM rows", "there is no table 'rows'", "rows"),
    ("source", "SELECT * FROM 'data/notes.txt'", "not a file type DuckDB reads by name", "'data/notes.txt'"),
    ("transform", "SELECT * FROM read_json_auto('data/x.jsonl')", "reads only `rows`; read_json_auto() reads files",
     "read_json_auto"),
    ("transform", "SELECT * FROM rows JOIN 'data/x.jsonl' USING (id)", "reads only `rows`; it reads the file", "'data/x.jsonl'"),
    ("transform", "SELECT * FROM rows r JOIN users u USING (id)", "it reads table 'users'", "users"),
    ("transform", "SELECT * FROM main.rows", "it reads table 'main.rows'", "main.rows"),
    ("transform", "SELECT * FROM information_schema.tables", "table 'information_schema.tables'", "information_schema"),
    ("transform", "SELECT * FROM rows WHERE id = $1", "query parameters", "$1"),
    ("transform", "DESCRIBE SELECT * FROM rows", "SHOW, DESCRIBE and SUMMARIZE", None),
    ("transform", "SELECT * FROM (PIVOT rows ON k USING sum(v))", "PIVOT and UNPIVOT are not supported", "SELECT"),
    ("transform", "SELECT 'a\x00b' FROM rows", "NUL character", "\x00"),
]


@pytest.mark.parametrize("role, sql, patterns", ACCEPTED)
def test_accepted_sql_reports_what_it_reads(role, sql, patterns):
    assert analyze(sql, role) == SqlFacts(patterns=patterns)


@pytest.mark.parametrize("role, sql, words, points_at", REFUSED)
def test_refused_sql_says_why_and_where(role, sql, words, points_at):
    facts = analyze(sql, role)
    assert facts.problem and words in facts.problem, facts
    assert facts.patterns == ()
    if points_at is None:
        assert facts.offset is None
    else:
        assert facts.offset is not None and sql[facts.offset:].startswith(points_at), (facts.offset, sql[facts.offset:])


def test_offsets_count_characters_not_utf8_bytes():
    sql = "SELECT 'ééé☃' AS s, getenv('X')"
    assert sql[analyze(sql, "source").offset:].startswith("getenv")
    broken = "SELECT 'ééé☃' AS s FRM t"
    assert broken[analyze(broken, "source").offset:].startswith("FRM")


def test_the_earliest_problem_is_reported():
    facts = analyze("SELECT getenv('A') FROM read_text('x')", "source")
    assert "getenv" in facts.problem and facts.offset == 7


# --- rewrite: the same rows from exactly the matched files -------------------------------------

ROUND_TRIPS = [
    "SELECT id, q FROM read_json_auto('data/*.jsonl', format='newline_delimited') t WHERE id > 1 ORDER BY ALL",
    "SELECT x.id, x.q FROM 'data/x.jsonl' ORDER BY 1",
    "SELECT \"data/*.jsonl\".id FROM 'data/*.jsonl' ORDER BY 1",
    "SELECT t.c1 FROM 'data/x.jsonl' AS t(c1) ORDER BY 1",
    "SELECT count(*) AS n, sum(id) FROM read_json_auto(['data/x.jsonl', 'data/y.jsonl', 'data/x.jsonl'])",
    "WITH w AS (SELECT * FROM read_csv(['data/a.csv'], header=true, columns={'id': 'INT', 'ok': 'BOOL'})) "
    "SELECT w.ok, j.q FROM w JOIN 'data/*.jsonl' j ON w.id = j.id ORDER BY ALL",
    "SELECT q, count(*) FILTER (WHERE id > 1) AS big, 'it''s' AS quote FROM read_json_auto('data/y.jsonl') GROUP BY ALL ORDER BY ALL",
    "SELECT * FROM 'data/p.parquet' UNION ALL BY NAME SELECT 9 AS n ORDER BY ALL",
    "SELECT \"we\"\"ird\" FROM (SELECT id AS \"we\"\"ird\" FROM 'data/x.jsonl') ORDER BY 1",
]


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.jsonl").write_text('{"id": 1, "q": "a"}\n{"id": 2, "q": "b"}\n')
    (root / "data" / "y.jsonl").write_text('{"id": 3, "q": "b"}\n{"id": 2, "q": "c"}\n')
    (root / "data" / "a.csv").write_text("id,ok\n1,true\n2,false\n")
    with duckdb.connect() as connection:
        connection.execute(f"COPY (SELECT 7 AS n) TO '{root / 'data' / 'p.parquet'}' (FORMAT parquet)")
    monkeypatch.chdir(root)  # where DuckDB resolves the original query's relative paths
    return root


def _matched(root: Path, sql: str) -> dict[str, list[Path]]:
    facts = analyze(sql, "source")
    assert facts.problem is None, facts
    return {pattern: list(match_files(root, pattern).files) for pattern in facts.patterns}


@pytest.mark.parametrize("sql", ROUND_TRIPS)
def test_rewritten_sql_returns_the_same_rows_on_the_locked_connection(data_root, sql):
    files = _matched(data_root, sql)
    rewritten = rewrite(sql, files)
    for pattern in files:
        assert f"'{pattern}'" not in rewritten
    with duckdb.connect() as plain:
        expected = plain.execute(sql)
        expected_rows, expected_names = expected.fetchall(), [column[0] for column in expected.description]
    readable = [path for paths in files.values() for path in paths]
    with locked_connection(readable, data_root.parent / "spill") as locked:
        got = locked.execute(rewritten)
        assert [column[0] for column in got.description] == expected_names
        assert got.fetchall() == expected_rows
        if any(is_glob(pattern) for pattern in files):  # the original globs, which is refused there
            with pytest.raises(duckdb.PermissionException):
                locked.execute(sql)


def test_rewrite_lists_exactly_the_matched_files_even_when_duckdb_would_glob_more(data_root):
    sql = "SELECT count(*) FROM read_json_auto('data/*.jsonl')"
    only_x = {"data/*.jsonl": [data_root / "data" / "x.jsonl"]}  # llmops' confinement kept one file
    with locked_connection(only_x["data/*.jsonl"], data_root.parent / "spill") as locked:
        assert locked.execute(rewrite(sql, only_x)).fetchone() == (2,)


@pytest.mark.parametrize("sql, files, words", [
    ("SELECT * FROM read_json_auto('data/none*.jsonl')", {"data/none*.jsonl": []}, "matches no file"),
    ("SELECT * FROM read_json_auto('data/x.jsonl')", {}, "matches no file"),
    ("SELECT * FROM read_text('x')", {}, "read_text() is not allowed"),
    ("COPY (SELECT 1) TO 'x.csv'", {}, "only one SELECT"),
    ("SELECT * FROM 'data/x.jsonl'", {"data/x.jsonl": [Path("/repo/data/x[1].jsonl")]}, "glob character"),
])
def test_rewrite_refuses_what_it_cannot_make_exact(sql, files, words):
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        rewrite(sql, files)


# --- the locked connection is the real barrier --------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """One locked connection for every escape attempt: each must fail and leave it as it was."""
    tmp_path = tmp_path_factory.mktemp("sandbox")
    allowed = tmp_path / "repo" / "data"
    allowed.mkdir(parents=True)
    (allowed / "ok.csv").write_text("a,b\n1,2\n")
    (allowed / "etc").symlink_to("/etc")  # a symlinked directory next to the allowed file
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "passwd.csv").symlink_to("/etc/passwd")  # a symlink inside an allowed directory
    with locked_connection([allowed / "ok.csv"], spill, memory_limit="64MB", threads=1) as connection:
        yield connection, allowed, spill


def test_locked_connection_reads_the_allowed_file_and_arrow_relations(sandbox):
    import pyarrow as pa

    connection, allowed, _ = sandbox
    assert connection.execute(f"SELECT * FROM read_csv('{allowed / 'ok.csv'}')").fetchall() == [(1, 2)]
    connection.register("rows", pa.table({"x": [1, 2, 3]}))  # how a transform receives its stream
    assert connection.execute("SELECT sum(x) FROM rows").fetchone() == (6,)
    settings = dict(connection.execute(
        "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration', "
        "'autoload_known_extensions', 'autoinstall_known_extensions', 'threads', 'preserve_insertion_order')").fetchall())
    assert settings == {"enable_external_access": "false", "lock_configuration": "true", "threads": "1",
                        "autoload_known_extensions": "false", "autoinstall_known_extensions": "false",
                        "preserve_insertion_order": "true"}


ESCAPES = [
    # (what it tries, SQL with {allowed} and {spill} filled in, DuckDB's words for the refusal)
    ("read /etc/passwd", "SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("read_text /etc/passwd", "SELECT * FROM read_text('/etc/passwd')", "Permission Error"),
    ("glob outside", "SELECT * FROM read_csv('/etc/pass*')", "Permission Error"),
    ("glob inside the allowed folder", "SELECT * FROM read_csv('{allowed}/*.csv')", "Permission Error"),
    ("list a folder", "SELECT * FROM glob('{allowed}/*')", "Permission Error"),
    ("symlink in an allowed directory", "SELECT * FROM read_csv('{spill}/passwd.csv')", "Permission Error"),
    ("symlinked directory", "SELECT * FROM read_csv('{allowed}/etc/passwd')", "Permission Error"),
    ("relative path", "SELECT * FROM read_csv('data/ok.csv')", "Permission Error"),
    ("http URL", "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')", "Permission Error"),
    ("getenv", "SELECT getenv('HOME')", "getenv does not exist"),
    ("turn access back on", "SET enable_external_access = true", "configuration has been locked"),
    ("unlock", "SET lock_configuration = false", "configuration has been locked"),
    ("widen the allowed list", "SET allowed_directories = ['/']", "configuration has been locked"),
    ("reset the allowed list", "RESET allowed_paths", "configuration has been locked"),
    ("load an extension", "LOAD httpfs", "Permission Error"),
    ("install an extension", "INSTALL httpfs", "Permission Error"),
    ("attach a database", "ATTACH '/tmp/other.duckdb'", "Permission Error"),
    ("write outside", "COPY (SELECT 1) TO '/tmp/llmops-sqlscan-escape.csv'", "Permission Error"),
]


@pytest.mark.parametrize("what, sql, words", ESCAPES, ids=[case[0] for case in ESCAPES])
def test_locked_connection_refuses_escapes(sandbox, what, sql, words):
    connection, allowed, spill = sandbox
    with pytest.raises(duckdb.Error, match=words):
        connection.execute(sql.format(allowed=allowed, spill=spill)).fetchall()


def test_an_allowed_symlink_is_resolved_by_duckdb_so_callers_must_pass_confined_files(tmp_path):
    """DuckDB resolves allowed_paths: allowing a link allows its target. match_files refuses such links."""
    link = tmp_path / "link.csv"
    link.symlink_to("/etc/hostname")
    with locked_connection([link], tmp_path / "spill") as connection:
        assert connection.execute("SELECT count(*) FROM read_csv('/etc/hostname', header=false)").fetchone()[0] >= 1


# --- scan_all: cached, one subprocess, no DuckDB in the calling process -------------------------

def test_scan_all_answers_in_order_and_then_from_its_cache(tmp_path, monkeypatch):
    items = [("SELECT * FROM 'a.jsonl'", "source"), ("SELECT * FROM read_text('x')", "source"),
             ("SELECT * FROM rows", "transform"), ("SELECT * FROM 'a.jsonl'", "source")]
    first = scan_all(items, tmp_path / "cache")
    assert first == [analyze(sql, role) for sql, role in items]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # a cache miss would now fail
    assert scan_all(items, tmp_path / "cache") == first
    damaged = next((tmp_path / "cache").glob("*.json"))
    damaged.write_text("{not json")
    with pytest.raises(DataError, match="cannot start DuckDB"):
        scan_all(items, tmp_path / "cache")


def test_scan_all_reports_a_failing_subprocess_with_its_stderr(tmp_path, monkeypatch):
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'duckdb exploded here' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(failing))
    with pytest.raises(DataError, match="exit 3.*duckdb exploded here"):
        scan_all([("SELECT 1", "source")], tmp_path / "cache")


def test_scan_all_keeps_duckdb_out_of_the_calling_process(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from llmops_engine.specs.sqlfacts import scan_all
        facts = scan_all([("SELECT * FROM read_json_auto('d/*.jsonl')", "source")], Path({str(tmp_path)!r}))
        print(json.dumps([facts[0].patterns, "duckdb" in sys.modules]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["d/*.jsonl"], False]


@pytest.mark.parametrize("stdin, code, output", [
    ('[{"sql": "SELECT * FROM \'a.csv\'", "role": "source"}]', 0, [{"patterns": ["a.csv"], "problem": None, "offset": None}]),
    ('[{"sql": "SELECT 1", "role": "admin"}]', 2, None),
    ("{not json", 2, None),
])
def test_module_entry_reads_json_requests(stdin, code, output):
    done = subprocess.run([sys.executable, "-m", "llmops_engine.data.sqlscan"], input=stdin,
                          capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == code, done.stderr
    if output is not None:
        assert json.loads(done.stdout) == output
    else:
        assert done.stderr.startswith("sqlscan: ")
