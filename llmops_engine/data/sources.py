"""A Dataset's source as DuckDB SQL: the files it names, the relation its rows come from.

Every source becomes a relation that DuckDB streams out of core: files through its
readers (JSONL, CSV, Parquet; a glob is expanded by `paths.match_files`, sorted, so rows
arrive in the same order on every machine and no match lies outside the repository), an
`sql` source through its own SELECT with each file pattern replaced by the files llmops
confined (`sqlscan.rewrite`), a database source through the extract the plan made
(`warehouse.py`). The pipeline maps columns in SQL, so a mapped column is read as text
whatever type its reader would infer (JSON numbers become their JSON text).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..paths import excluding, match_files
from ..specs.dataset import Columns, Source
from .sqltext import quoted, sql_list, sql_literal


def source_files(root: Path, source: Source, patterns: tuple[str, ...] = ()) -> list[Path]:
    """The files a source reads, sorted per pattern; an error if a pattern matches none, or if
    any match lies outside the repository. `patterns`: an sql source's file patterns (found in
    its SQL); a database source reads no file."""
    files: list[Path] = []
    for matched in pattern_files(root, source, patterns).values():
        files += [path for path in matched if path not in files]
    return files


def pattern_files(root: Path, source: Source, patterns: tuple[str, ...] = ()) -> dict[str, list[Path]]:
    """Each pattern the source names → its files. The engine's own output (its state, a local
    store) is never a source."""
    from ..project import load_project

    named = [source.path] if source.path is not None else list(patterns)
    field = "spec.source.path" if source.path is not None else "spec.source.sql"
    engine_dirs = load_project(root).engine_dirs()
    by_pattern: dict[str, list[Path]] = {}
    for pattern in named:
        matches = match_files(root, pattern)
        if matches.problem:
            raise DataError(f"{field}: {matches.problem}")
        by_pattern[pattern] = excluding(matches.files, engine_dirs)
        if not by_pattern[pattern]:
            raise DataError(f"source '{pattern}' matches no file under {root}; check {field}")
    return by_pattern


def raw_relation(root: Path, source: Source, patterns: tuple[str, ...] = (), extract: Path | None = None) -> str:
    """SQL for the source's rows as they are (each column with the type its reader infers)."""
    if source.kind() == "database":
        return f"read_parquet({sql_literal(str(extract))})"
    if source.kind() == "sql":
        from .sqlscan import rewrite

        return f"({rewrite(source.sql, pattern_files(root, source, patterns))})"
    listed = sql_list(source_files(root, source))
    fmt = source.inferred_format()
    if fmt == "jsonl":  # every row's keys, not a sample's: a column may first appear late
        return f"read_json_auto({listed}, format='newline_delimited', union_by_name=true, sample_size=-1)"
    if fmt == "csv":
        return f"read_csv({listed}, header=true, all_varchar=true, union_by_name=true)"
    return f"read_parquet({listed}, union_by_name=true)"


def text_relation(root: Path, source: Source, columns: Columns, raw: str, have: list[str]) -> str:
    """SQL for the source's rows with the mapped columns as text. JSONL is read with those columns
    declared VARCHAR (a value of another JSON type arrives as its JSON text), so no type
    inference can fail on a later row; other sources cast what their reader gives."""
    names = [name for name in mapped_columns(columns) if name in have]
    if source.kind() == "files" and source.inferred_format() == "jsonl":
        declared = ", ".join(f"{sql_literal(name)}: 'VARCHAR'" for name in names)
        listed = sql_list(source_files(root, source))
        return f"read_json({listed}, format='newline_delimited', columns={{{declared}}})"
    projected = ", ".join(f"{_as_text(name)} AS {quoted(name)}" for name in names)
    return f"(SELECT {projected} FROM {raw})"


def mapped_columns(columns: Columns) -> list[str]:
    if columns.messages:
        return [columns.messages]
    return [name for name in (columns.instruction, columns.input, columns.output) if name]


def _as_text(name: str) -> str:
    column = quoted(name)
    # Nested values (a chat column of structs, a list) become JSON text, scalars their text; a
    # floating-point NaN is missing, as pandas writes a null.
    return (f"CASE WHEN {column} IS NULL THEN NULL "
            f"WHEN typeof({column}) IN ('DOUBLE', 'FLOAT') AND isnan(TRY_CAST({column} AS DOUBLE)) THEN NULL "
            f"WHEN typeof({column}) LIKE '%[]' OR typeof({column}) LIKE 'STRUCT%' OR typeof({column}) LIKE 'MAP%' "
            f"THEN to_json({column})::VARCHAR ELSE {column}::VARCHAR END")
