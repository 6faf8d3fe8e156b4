"""Quoting for the SQL llmops writes itself (identifiers and string literals, never user SQL)."""

from __future__ import annotations

from pathlib import Path


def quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_list(files: list[Path]) -> str:
    return "[" + ", ".join(sql_literal(str(path)) for path in files) + "]"
