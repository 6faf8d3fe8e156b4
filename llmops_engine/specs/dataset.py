"""Dataset: raw files → declarative transforms → validated, split train/eval data."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, PositiveInt, PrivateAttr, model_validator

from .base import EnvVarName, FieldError, KindSpec, PathInput, StrictModel
from .expectations import check_rule
from .regexes import regex_problem


def _unset(value: Any) -> bool:
    return value is None


class Source(StrictModel):
    """Where a Dataset's rows come from: exactly one of files (`path`), a DuckDB query over
    repository files (`sql`), or a query against a database (`database_url_env` + `query`)."""

    # Fields added after the first release are left out of the normalized spec while unset, so
    # existing Datasets keep their fingerprints.
    path: str | None = Field(
        default=None, exclude_if=_unset, description="Repository-relative file or glob (e.g. data/*.jsonl)."
    )
    format: Literal["jsonl", "csv", "parquet"] | None = Field(
        default=None, description="Inferred from the file extension when omitted (path sources only)."
    )
    sql: str | None = Field(
        default=None, exclude_if=_unset,
        description="One DuckDB SELECT over repository files, e.g. SELECT question, answer FROM "
        "read_json_auto('data/*.jsonl'). Paths are repository-relative; they are the stage's inputs.",
    )
    database_url_env: EnvVarName | None = Field(
        default=None, exclude_if=_unset, description="Environment variable holding the database URL (never written anywhere)."
    )
    query: str | None = Field(default=None, exclude_if=_unset, description="The SELECT run on that database.")
    refresh: Literal["on_apply", "manual"] | None = Field(
        default=None, exclude_if=_unset,
        description="Database sources: on_apply (default) queries at every plan; manual reuses the last "
        "extract of the same query.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "Source":
        given = [name for name in ("path", "sql", "database_url_env") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of: path (files), sql (DuckDB over files), "
                             f"database_url_env + query (a database); got {', '.join(given) or 'none'}")
        problems = []
        if self.format is not None and self.path is None:
            problems.append(("format", "format applies to path sources only; DuckDB reads the files an sql source names"))
        if self.database_url_env is None:
            problems += [(name, f"{name} belongs to a database source (database_url_env + query)")
                         for name in ("query", "refresh") if getattr(self, name) is not None]
        elif not (self.query or "").strip():
            problems.append(("query", "a database source needs the SELECT to run: query: \"SELECT ...\""))
        if self.sql is not None and not self.sql.strip():
            problems.append(("sql", "sql is empty; write one SELECT"))
        if self.path is not None and self.inferred_format() is None:
            problems.append(("path", "cannot infer format from the extension; set format: jsonl | csv | parquet"))
        if problems:
            raise FieldError(*problems)
        return self

    def kind(self) -> Literal["files", "sql", "database"]:
        return "files" if self.path is not None else "sql" if self.sql is not None else "database"

    def refresh_policy(self) -> str:
        return self.refresh or "on_apply"

    def inferred_format(self) -> str | None:
        if self.format:
            return self.format
        for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".csv", "csv"), (".parquet", "parquet")):
            if (self.path or "").endswith(ext):
                return fmt
        return None


class Columns(StrictModel):
    """Map source columns onto the Alpaca fields, or name one chat `messages` column."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: str | None = Field(default=None, description="Column holding [{role, content}] turns.")

    @model_validator(mode="after")
    def _one_shape(self) -> "Columns":
        if self.messages:
            if self.instruction or self.input or self.output:
                raise FieldError(("messages", "use either 'messages' (chat) or instruction/input/output, not both"))
        elif not (self.instruction and self.output):
            raise ValueError("map at least 'instruction' and 'output' (or give a chat 'messages' column)")
        return self


class FilterRegex(StrictModel):
    column: str
    pattern: str
    keep: bool = Field(default=True, description="true keeps matching rows; false drops them.")


class Sample(StrictModel):
    n: PositiveInt
    seed: int = 0


EXAMPLE_FIELDS = ("instruction", "input", "output")


class Transform(StrictModel):
    """Exactly one operation per list item. Transforms run in order on the mapped rows, so
    the columns they name are the example fields: instruction, input, output."""

    strip_whitespace: dict[str, Any] | list[str] | None = Field(
        default=None, description="{} for every text column, or a list of columns."
    )
    drop_empty: list[str] | None = None
    dedupe: list[str] | None = None
    max_chars: dict[str, PositiveInt] | None = None
    min_chars: dict[str, PositiveInt] | None = None
    filter_regex: FilterRegex | None = None
    sample: Sample | None = None
    sql: str | None = Field(
        default=None, exclude_if=_unset,
        description="One DuckDB SELECT over the relation `rows` (instruction, input, output), e.g. "
        "SELECT * FROM rows WHERE length(output) < 2000. Its result (instruction, output, optional "
        "input) replaces the rows, in its order.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "Transform":
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            ops = ", ".join(type(self).model_fields)
            raise ValueError(f"each transform is exactly one of: {ops} (got {len(chosen)})")
        if self.filter_regex is not None and (problem := regex_problem(self.filter_regex.pattern)):
            raise FieldError(("filter_regex.pattern", problem))
        if self.sql is not None and not self.sql.strip():
            raise FieldError(("sql", "sql is empty; write one SELECT over rows"))
        unknown = [(field, column) for field, column in self._named_columns() if column not in EXAMPLE_FIELDS]
        if unknown:
            fields = ", ".join(EXAMPLE_FIELDS)
            raise FieldError(*((field, f"transforms work on {fields}; unknown column '{column}'")
                               for field, column in unknown))
        return self

    def _named_columns(self) -> list[tuple[tuple, str]]:
        """Each column the operation names, with the field path (below the transform) naming it."""
        name, value = self.operation()
        if name == "filter_regex":
            return [((name, "column"), value.column)]
        if name == "sql":
            return []
        if isinstance(value, dict):
            return [((name, column), column) for column in value]
        return [((name, index), column) for index, column in enumerate(value)] if isinstance(value, list) else []

    def operation(self) -> tuple[str, Any]:
        name = next(n for n in type(self).model_fields if getattr(self, n) is not None)
        return name, getattr(self, name)


class Split(StrictModel):
    eval_fraction: float = Field(
        default=0.1, gt=0, le=1, description="1.0: an eval-only Dataset (a benchmark or regression set), no train rows."
    )
    seed: int = 42

    def eval_only(self) -> bool:
        return self.eval_fraction >= 1


class ValidationRule(StrictModel):
    """A Great Expectations expectation by its snake_case name, plus its arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)

    expect: str = Field(description="e.g. column_values_to_not_be_null")

    @model_validator(mode="after")
    def _known_rule(self) -> "ValidationRule":
        problems = check_rule(self.expect, self.kwargs())
        if problems:
            raise FieldError(*(((argument,) if argument else (), message) for argument, message in problems))
        return self

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DatasetSpec(KindSpec):
    kind: ClassVar[str] = "Dataset"

    source: Source
    columns: Columns
    transforms: list[Transform] = Field(default_factory=list)
    split: Split = Field(default_factory=Split)
    validation: list[ValidationRule] = Field(default_factory=list)
    validate_on: Literal["raw", "processed", "both"] = Field(
        default="processed", alias="validate", description="Which data the rules run on."
    )

    # The files an `sql` source reads, as its SQL names them (found by DuckDB's parser when the
    # specs are checked: specs/checks.py); they are inputs like a `path` source's files.
    _sql_patterns: tuple[str, ...] = PrivateAttr(default=())

    def path_inputs(self) -> list[PathInput]:
        if self.source.path is not None:
            return [PathInput(self.source.path, ("source", "path"), must_exist=True)]
        return [PathInput(pattern, ("source", "sql"), must_exist=True) for pattern in self._sql_patterns]

    def sql_texts(self) -> list[tuple[tuple, str, str]]:
        """Each SQL string the spec holds: (field path below `spec`, role, text)."""
        texts = [(("source", "sql"), "source", self.source.sql)] if self.source.sql is not None else []
        return texts + [(("transforms", index, "sql"), "transform", transform.sql)
                        for index, transform in enumerate(self.transforms) if transform.sql is not None]

    def set_sql_patterns(self, patterns: tuple[str, ...]) -> None:
        self._sql_patterns = tuple(patterns)

    def sql_patterns(self) -> tuple[str, ...]:
        return self._sql_patterns

    def secret_env(self) -> list[str]:
        return [self.source.database_url_env] if self.source.database_url_env else []
