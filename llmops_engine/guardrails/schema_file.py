"""Read a json_schema check's `schema_path` file: one JSON file in the repository, checked like an
inline schema. `llmops validate` reads it (specs/checks.py) so that a bad file is reported at the
spec line naming it; the Guardrail controller reads it again at apply to embed it in the policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import GuardrailError
from ..paths import one_file
from ..specs.guardrail import schema_problem

MAX_SCHEMA_FILE_BYTES = 1024 * 1024


def read_schema(root: Path, path: str) -> dict[str, Any]:
    """A json_schema check's schema file: one JSON file in the repository, checked like an inline schema."""
    try:
        file = one_file(root, path, "schema_path", "JSON", MAX_SCHEMA_FILE_BYTES)
    except ValueError as exc:
        raise GuardrailError(str(exc)) from None
    try:
        schema = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise GuardrailError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise GuardrailError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    except RecursionError as exc:
        raise GuardrailError(f"{path}: nested too deeply to be a schema") from exc
    if problem := schema_problem(schema):
        raise GuardrailError(f"{path}: {problem}")
    return schema
