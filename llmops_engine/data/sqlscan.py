"""What a Dataset's SQL reads, and a DuckDB connection that can read nothing else.

Dataset SQL arrives in pull requests, so llmops must know every file a query reads before it
runs it: those files are confined to the repository like every other spec path, become the DVC
stage's deps and the fingerprint's inputs, and are the only files the query may open. Three
pieces make that hold:

* `analyze` walks DuckDB's own parse tree (`json_serialize_sql`; no regex over SQL) and says
  which path literals a query reads, or why it is refused. A `source` reads files only through
  the readers in `FILE_READERS` with constant paths, or by naming a file (`FROM 'data/x.jsonl'`,
  a replacement scan); a `transform` reads only the relation `rows` (and its own CTEs). Both may
  use the row generators in `HARMLESS_TABLE_FUNCTIONS` (e.g. `unnest` for a lateral join).
  `REFUSED_FUNCTIONS` lists functions that reach outside the data. That denylist is a courtesy
  that turns a runtime permission error into a `validate` error at the right line: the barrier
  is `locked_connection`.
* `rewrite` replaces each path literal with the explicit list of absolute files llmops matched,
  so DuckDB reads exactly the files llmops confined and hashed, whatever its own glob rules are.
  It edits the parse tree and prints it back with `json_deserialize_sql`. That round trip was
  checked on DuckDB 2.0.1 (quoting, CTEs, named reader options, lambdas, window clauses, sampling):
  the printed SQL is normalised (`format='x'` becomes `(format = 'x')`, `count(*)` becomes
  `count_star()`) but returns the same rows under the same column names; tests/test_sqlscan.py
  runs both on the same files to keep that true.
* `locked_connection` is a DuckDB connection with external access off, allowed to read only the
  given files (and to spill into its temp directory), with extension loading off and its
  configuration locked so SQL cannot undo any of it. DuckDB resolves symlinks both in the
  allowed list and in every path a query opens, so a symlink inside an allowed directory that
  points elsewhere is refused; globs are refused outright (listing a directory is external
  access), which is why `rewrite` hands DuckDB explicit file lists.

The light CLI (`validate`, `plan`) must not import DuckDB, so specs/sqlfacts.py answers from a
cache and asks one `python -m llmops_engine.data.sqlscan` subprocess (`main` here) for the rest;
DuckDB is imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import DataError
from ..paths import is_glob, pattern_problem
from ..specs.sqlfacts import Role, SqlFacts

# Table functions a `source` may read files through; the first argument names the files.
FILE_READERS = frozenset({
    "read_json", "read_json_auto", "read_ndjson", "read_ndjson_auto",
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan",
})
# Table functions that compute rows without reading anything; allowed in both roles.
HARMLESS_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# Functions that read the environment, settings, other files or run SQL given as a string.
REFUSED_FUNCTIONS = frozenset({
    "getenv", "current_setting", "getvariable", "read_text", "read_blob", "glob", "sniff_csv",
    "query", "query_table", "json_execute_serialized_sql",
})
REFUSED_FUNCTION_PREFIXES = ("duckdb_", "pragma_")  # catalog and settings introspection
REFUSED_FUNCTION_SUFFIXES = ("_scan",)  # postgres_scan, iceberg_scan, delta_scan, sqlite_scan, ...

# What DuckDB reads a named file with (`FROM 'data/x.jsonl'`), by extension; compression
# suffixes are looked through. Other names are not files to DuckDB without an extension.
REPLACEMENT_SCAN_READERS = {
    ".csv": "read_csv_auto", ".tsv": "read_csv_auto",
    ".json": "read_json_auto", ".jsonl": "read_json_auto", ".ndjson": "read_json_auto",
    ".parquet": "read_parquet",
}
COMPRESSION_SUFFIXES = (".gz", ".zst")

_STRUCTURAL_TABLE_REFS = frozenset({"JOIN", "SUBQUERY", "EXPRESSION_LIST", "EMPTY"})
_NO_LOCATION = 2**64 - 1  # DuckDB's "unknown" query_location
_READERS_HINT = "read_json_auto('data/*.jsonl'), read_csv(...), read_parquet(...) or FROM 'data/file.jsonl'"
_TRANSFORM_ONLY_ROWS = "an sql transform reads only `rows`"


@dataclass
class _FileRead:
    """One place a query reads files: a reader's first argument or a named file."""

    location: int
    patterns: tuple[str, ...]
    table_ref: dict[str, Any]
    named_file: bool  # `FROM 'x.jsonl'` (a BASE_TABLE node) rather than a reader call


@dataclass
class _Scan:
    reads: list[_FileRead] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


class _Refusal(Exception):
    def __init__(self, message: str, offset: int | None):
        super().__init__(message)
        self.message = message
        self.offset = offset


def analyze(sql: str, role: Role) -> SqlFacts:
    """Which repo-relative paths `sql` reads, or why it is refused. Parses only; reads nothing."""
    import duckdb

    with duckdb.connect(":memory:") as connection:
        return _analyze(connection, sql, role)


def _analyze(connection, sql: str, role: Role) -> SqlFacts:
    try:
        scan = _scan(_parse(connection, sql), role)
    except _Refusal as refusal:
        return SqlFacts(problem=refusal.message, offset=refusal.offset)
    if scan.problems:
        location, message = min(scan.problems, key=lambda problem: problem[0])
        return SqlFacts(problem=message, offset=_char_offset(sql, location))
    if role == "transform":
        return _bound_transform(connection, sql)
    ordered = sorted(scan.reads, key=lambda read: read.location)
    patterns = [pattern for read in ordered for pattern in read.patterns]
    return SqlFacts(patterns=tuple(dict.fromkeys(patterns)))


# What an sql transform sees as `rows` (data/transforms.py): the example fields, and a chat
# source's earlier turns.
ROWS_COLUMNS = ("instruction", "input", "output", "history")


def _bound_transform(connection, sql: str) -> SqlFacts:
    """Bind a transform against an empty `rows`: an unknown column or function, a type error, or a
    result without instruction and output is a problem now, not when the Dataset builds."""
    import duckdb

    columns = ", ".join(f"{name} VARCHAR" for name in ROWS_COLUMNS)
    connection.execute(f"CREATE OR REPLACE TEMP TABLE rows ({columns})")
    try:
        returned = list(connection.sql(f"SELECT * FROM ({_printed(connection, sql)}) LIMIT 0").columns)
    except duckdb.Error as exc:
        reason = " ".join(_clean(str(exc)).split())
        return SqlFacts(problem=f"the SQL does not run on rows ({', '.join(ROWS_COLUMNS)}): {reason}")
    missing = [name for name in ("instruction", "output") if name not in returned]
    if missing:
        return SqlFacts(problem=f"an sql transform must return instruction and output (and input if it keeps it); "
                                f"this one returns {', '.join(returned) or 'nothing'}")
    return SqlFacts()


def _parse(connection, sql: str) -> dict[str, Any]:
    """json_serialize_sql's document for `sql`'s one SELECT statement, or a _Refusal saying why not."""
    import duckdb

    if "\x00" in sql:
        raise _Refusal("the SQL contains a NUL character", sql.index("\x00"))
    try:
        text = connection.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
        tree = json.loads(text)
    except duckdb.Error as exc:
        raise _Refusal(f"DuckDB cannot parse the SQL: {_clean(str(exc))}", None) from exc
    except RecursionError:
        raise _Refusal("the SQL is nested too deeply to check", None) from None
    if tree.get("error"):
        message = _clean(tree.get("error_message", "unknown error"))
        if tree.get("error_type") == "not implemented":  # json_serialize_sql's word for "not a SELECT"
            raise _not_one_select(connection, sql, message)
        position = tree.get("position")
        offset = _char_offset(sql, int(position)) if str(position).isdigit() else None
        raise _Refusal(f"the SQL does not parse: {message}", offset)
    statements = tree["statements"]
    if len(statements) != 1:
        raise _not_one_select(connection, sql, "")
    return tree


def _not_one_select(connection, sql: str, serializer_message: str) -> _Refusal:
    """Say which statements the SQL holds, pointing at the first one that is not the one SELECT."""
    import duckdb

    try:
        statements = connection.extract_statements(sql)
    except duckdb.Error as exc:
        return _Refusal(f"the SQL does not parse: {_clean(str(exc))}", None)
    if not statements:
        return _Refusal("only one SELECT statement is allowed (the SQL is empty)", None)
    starts, offset = [], 0
    for statement in statements:
        starts.append(offset + len(statement.query) - len(statement.query.lstrip()))
        offset += len(statement.query)
    kinds = [_statement_kind(statement) for statement in statements]
    if len(statements) > 1:
        return _Refusal(f"only one SELECT statement is allowed (found {len(statements)} statements: "
                        f"{', '.join(kinds)})", starts[1])
    if kinds[0] != "SELECT":
        return _Refusal(f"only one SELECT statement is allowed (found {kinds[0]})", starts[0])
    return _Refusal(f"llmops cannot check this SELECT: DuckDB cannot serialize part of it ({serializer_message}); "
                    "PIVOT and UNPIVOT are not supported in Dataset SQL", starts[0])


def _statement_kind(statement) -> str:
    # The user's own first keyword: DuckDB files INSTALL under LOAD and PIVOT under MULTI.
    if statement.type.name == "SELECT":
        return "SELECT"
    words = statement.query.split()
    return words[0].upper().rstrip(";") if words else statement.type.name


def _clean(message: str) -> str:
    """DuckDB's message without its error-class prefix and the LINE/caret block we locate ourselves."""
    first = message.strip().split("\n\nLINE ")[0].strip()
    for prefix in ("Parser Error: ", "Binder Error: ", "Catalog Error: ", "Invalid Input Error: "):
        first = first.removeprefix(prefix)
    return first


def _char_offset(sql: str, location: int) -> int | None:
    """DuckDB's byte offset into the UTF-8 SQL as a character offset; None when it has none."""
    if location >= _NO_LOCATION or location < 0:
        return None
    return len(sql.encode("utf-8")[:location].decode("utf-8", errors="ignore"))


def _scan(tree: dict[str, Any], role: Role) -> _Scan:
    """Every file read and every refused construct in the parse tree (pure)."""
    scan = _Scan()
    stack: list[tuple[Any, frozenset[str], int]] = [(tree, frozenset(), _NO_LOCATION)]
    while stack:  # iterative: a deep query must not exhaust Python's recursion limit
        value, ctes, location = stack.pop()
        if isinstance(value, list):
            stack.extend((item, ctes, location) for item in value)
            continue
        if not isinstance(value, dict):
            continue
        own = value.get("query_location")
        if isinstance(own, int) and own != _NO_LOCATION:
            location = own
        ctes = ctes | _cte_names(value)
        _visit(value, ctes, role, location, scan)
        stack.extend((child, ctes, location) for child in _children(value))
    return scan


def _children(node: dict[str, Any]) -> list[Any]:
    children = [child for child in node.values() if isinstance(child, (dict, list))]
    if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
        # The call itself was judged as a table function; only its arguments are expressions.
        children.remove(node["function"])
        children.append(node["function"].get("arguments", []))
    return children


def _cte_names(node: dict[str, Any]) -> frozenset[str]:
    # A CTE is visible in the whole query that defines it (siblings included): a reference
    # DuckDB resolves differently fails on the locked connection, which knows no tables.
    cte_map = node.get("cte_map")
    if not isinstance(cte_map, dict):
        return frozenset()
    return frozenset(entry["key"].lower() for entry in cte_map.get("map", []))


def _visit(node: dict[str, Any], ctes: frozenset[str], role: Role, location: int, scan: _Scan) -> None:
    if "class" in node:  # an expression
        if node["class"] == "FUNCTION" and _refused_function(node["function_name"]):
            scan.problems.append((location, f"function {node['function_name']}() is not allowed in Dataset SQL: "
                                            "it reads outside the data"))
        elif node["class"] == "PARAMETER":
            scan.problems.append((location, "query parameters (?, $1, $name) are not supported in Dataset SQL"))
        return
    if not {"type", "alias", "sample", "query_location"} <= node.keys():  # not a table reference
        return
    kind = node["type"]
    if kind == "BASE_TABLE":
        _visit_table(node, ctes, role, location, scan)
    elif kind == "TABLE_FUNCTION":
        _visit_table_function(node, role, location, scan)
    elif kind == "SHOW_REF":
        scan.problems.append((location, "SHOW, DESCRIBE and SUMMARIZE are not allowed in Dataset SQL"))
    elif kind not in _STRUCTURAL_TABLE_REFS:
        scan.problems.append((location, f"a {kind} table reference is not allowed in Dataset SQL"))


def _refused_function(name: str) -> bool:
    name = name.lower()
    return (name in REFUSED_FUNCTIONS or name.startswith(REFUSED_FUNCTION_PREFIXES)
            or name.endswith(REFUSED_FUNCTION_SUFFIXES))


def _visit_table(node: dict[str, Any], ctes: frozenset[str], role: Role, location: int, scan: _Scan) -> None:
    name = node["table_name"]
    qualified = ".".join(part for part in (node.get("catalog_name"), node.get("schema_name"), name) if part)
    if qualified == name and name.lower() in ctes:
        return
    if role == "transform":
        if qualified.lower() != "rows":
            what = f"the file '{name}'" if _looks_like_file(name) and qualified == name else f"table '{qualified}'"
            scan.problems.append((location, f"{_TRANSFORM_ONLY_ROWS}; it reads {what}"))
        return
    if qualified != name or not _looks_like_file(name):
        scan.problems.append((location, f"an sql source reads files, and there is no table '{qualified}'; "
                                        f"use {_READERS_HINT}"))
        return
    if _replacement_reader(name) is None:
        scan.problems.append((location, f"'{name}' is not a file type DuckDB reads by name "
                                        f"({', '.join(REPLACEMENT_SCAN_READERS)}); use read_csv('{name}', ...) "
                                        "or read_json_auto(...)"))
        return
    _add_read(scan, location, (name,), node, named_file=True)


def _looks_like_file(name: str) -> bool:
    return "." in name or "/" in name


def _replacement_reader(name: str) -> str | None:
    suffix_name = name.lower()
    for compression in COMPRESSION_SUFFIXES:
        suffix_name = suffix_name.removesuffix(compression)
    return REPLACEMENT_SCAN_READERS.get(PurePosixPath(suffix_name).suffix)


def _visit_table_function(node: dict[str, Any], role: Role, location: int, scan: _Scan) -> None:
    function = node["function"]
    name = function["function_name"].lower()
    if name in HARMLESS_TABLE_FUNCTIONS:
        return
    if role == "transform":
        reads = "reads files" if name in FILE_READERS else "is not allowed"
        scan.problems.append((location, f"{_TRANSFORM_ONLY_ROWS}; {name}() {reads}"))
        return
    if name not in FILE_READERS:
        scan.problems.append((location, f"table function {name}() is not allowed in an sql source; "
                                        f"read files with {_READERS_HINT}"))
        return
    arguments = function.get("arguments", [])
    patterns = _constant_paths(arguments[0]) if arguments else None
    if patterns is None:
        scan.problems.append((location, f"{name}() must name its files with a string or a list of strings as its "
                                        f"first argument (e.g. {name}('data/*.jsonl')); computed paths cannot be "
                                        "confined to the repository"))
        return
    _add_read(scan, location, patterns, node, named_file=False)


def _constant_paths(argument: dict[str, Any]) -> tuple[str, ...] | None:
    """The strings of a positional constant string or list-of-strings argument; None otherwise."""
    if argument.get("name"):
        return None
    expression = argument["expression"]
    if _is_string(expression):
        return (expression["literal"]["text"],)
    if expression.get("class") == "FUNCTION" and expression.get("function_name") == "list_value":
        items = [item["expression"] for item in expression.get("arguments", []) if not item.get("name")]
        if items and len(items) == len(expression.get("arguments", [])) and all(_is_string(item) for item in items):
            return tuple(item["literal"]["text"] for item in items)
    return None


def _is_string(expression: dict[str, Any]) -> bool:
    return expression.get("class") == "CONSTANT" and expression.get("literal", {}).get("kind") == "STRING"


def _add_read(scan: _Scan, location: int, patterns: tuple[str, ...], table_ref: dict[str, Any], named_file: bool) -> None:
    for pattern in patterns:
        problem = _path_problem(pattern)
        if problem:
            scan.problems.append((location, problem))
            return
    scan.reads.append(_FileRead(location, patterns, table_ref, named_file))


def _path_problem(pattern: str) -> str | None:
    if "://" in pattern:
        return (f"'{pattern}' is a URL; SQL reads only repository files, so paths must be "
                "repository-relative (a database belongs in `source: {database_url_env, query}`)")
    return pattern_problem(pattern)  # its words already say "relative to the repository root"


def rewrite(sql: str, files: Mapping[str, Sequence[Path]]) -> str:
    """`sql` (an accepted source) with each path literal replaced by the list of files it matched.

    `files` maps every pattern `analyze` reported to its matched files (`paths.match_files`);
    they are written absolute, so the query no longer depends on DuckDB's globbing or working
    directory. Named files (`FROM 'x.jsonl'`) become the reader DuckDB would have used, under
    the alias DuckDB would have given them. Raises DataError if the SQL is refused or a pattern
    has no files.
    """
    import duckdb

    with duckdb.connect(":memory:") as connection:
        try:
            tree = _parse(connection, sql)
        except _Refusal as refusal:
            raise DataError(refusal.message) from None
        scan = _scan(tree, "source")
        if scan.problems:
            raise DataError(min(scan.problems, key=lambda problem: problem[0])[1])
        for read in scan.reads:
            paths = _matched_paths(read.patterns, files)
            if read.named_file:
                _replace_named_file(connection, read.table_ref, paths)
            else:
                arguments = read.table_ref["function"]["arguments"]
                arguments[0]["expression"] = _list_expression(connection, paths)
        printed = json.dumps(tree)
        return connection.execute("SELECT json_deserialize_sql(?::JSON)", [printed]).fetchone()[0]


def nestable(sql: str) -> str:
    """One accepted SELECT as DuckDB prints its parse tree: no trailing semicolon or comment, so it
    can be nested in a subquery. Raises DataError if it does not parse."""
    import duckdb

    with duckdb.connect(":memory:") as connection:
        return _printed(connection, sql)


def _printed(connection, sql: str) -> str:
    try:
        tree = _parse(connection, sql)
    except _Refusal as refusal:
        raise DataError(refusal.message) from None
    return connection.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchone()[0]


def _matched_paths(patterns: tuple[str, ...], files: Mapping[str, Sequence[Path]]) -> list[str]:
    # Not deduplicated: DuckDB reads a file listed twice twice, and the rewrite keeps its meaning.
    paths: list[str] = []
    for pattern in patterns:
        matched = files.get(pattern)
        if not matched:
            raise DataError(f"'{pattern}' in the SQL matches no file in the repository")
        for path in matched:
            absolute = str(Path(path).absolute())
            if is_glob(absolute):  # DuckDB would read the name as a pattern and list its directory
                raise DataError(f"file '{path}' has a glob character (*, ? or [) in its name, "
                                "which DuckDB cannot read by name; rename it")
            paths.append(absolute)
    return paths


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _list_expression(connection, paths: list[str]) -> dict[str, Any]:
    """DuckDB's own parse tree of the list literal `[path, ...]` (built by its parser, not by hand)."""
    literal = "[" + ", ".join(_sql_string(path) for path in paths) + "]"
    tree = json.loads(connection.execute("SELECT json_serialize_sql(?)", [f"SELECT {literal}"]).fetchone()[0])
    return tree["statements"][0]["node"]["select_list"][0]


def _replace_named_file(connection, table_ref: dict[str, Any], paths: list[str]) -> None:
    name = table_ref["table_name"]
    literal = "[" + ", ".join(_sql_string(path) for path in paths) + "]"
    template = f"SELECT * FROM {_replacement_reader(name)}({literal})"
    tree = json.loads(connection.execute("SELECT json_serialize_sql(?)", [template]).fetchone()[0])
    reader = tree["statements"][0]["node"]["from_table"]
    reader["alias"] = table_ref["alias"] or _named_file_alias(name)
    reader["sample"] = table_ref["sample"]
    reader["column_name_alias"] = table_ref["column_name_alias"]
    table_ref.clear()
    table_ref.update(reader)


def _named_file_alias(name: str) -> str:
    """The alias DuckDB gives `FROM 'name'`: a glob keeps its whole text, a file its name up to the first dot."""
    if is_glob(name):
        return name
    return PurePosixPath(name).name.split(".")[0]


def locked_connection(readable: Sequence[Path], temp_dir: Path, memory_limit: str = "256MB",
                      threads: int | None = None):
    """A DuckDB connection that may read only `readable` (and spill into `temp_dir`).

    External access is off with exactly these files allowed, extensions are neither installed
    nor loaded on demand, Python variables are not scanned by name, and the configuration is
    locked last, so no SQL run on it can widen any of this. Raises DataError if DuckDB refuses
    a setting.
    """
    import duckdb

    temp_dir.mkdir(parents=True, exist_ok=True)
    settings: list[tuple[str, object]] = [
        ("allowed_paths", [str(Path(path).absolute()) for path in readable]),
        ("allowed_directories", [str(temp_dir.absolute())]),
        ("temp_directory", str(temp_dir.absolute())),
        ("memory_limit", memory_limit),
        ("preserve_insertion_order", True),
        ("autoinstall_known_extensions", False),
        ("autoload_known_extensions", False),
        ("allow_community_extensions", False),
        ("python_enable_replacements", False),
    ]
    if threads is not None:
        settings.append(("threads", threads))
    # allowed_* can only be set while external access is on; locking must come last.
    settings += [("enable_external_access", False), ("lock_configuration", True)]
    connection = duckdb.connect(":memory:")
    try:
        for name, value in settings:
            connection.execute(f"SET {name} = ?", [value])
    except duckdb.Error as exc:
        connection.close()
        raise DataError(f"DuckDB refused its sandbox setting {name}={value!r}: {_clean(str(exc))}") from exc
    return connection


def main() -> int:
    """`python -m llmops_engine.data.sqlscan`: JSON [{"sql", "role"}, ...] on stdin → SqlFacts as JSON."""
    import duckdb

    try:
        items = json.load(sys.stdin)
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and isinstance(item.get("sql"), str) and item.get("role") in ("source", "transform")
            for item in items
        ):
            raise ValueError('expected a JSON list of {"sql": string, "role": "source" | "transform"}')
    except ValueError as exc:
        print(f"sqlscan: {exc}", file=sys.stderr)
        return 2
    with duckdb.connect(":memory:") as connection:
        answers = [asdict(_analyze(connection, item["sql"], item["role"])) for item in items]
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
