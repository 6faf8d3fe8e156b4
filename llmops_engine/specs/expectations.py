"""The Great Expectations rules a Dataset may name, with the arguments each accepts.

This table lets `llmops validate` reject a bad rule without importing GX (which takes
seconds). `tests/test_data_expectations_catalog.py` checks it against the installed GX, so
it cannot drift from the library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .regexes import regex_problem

Check = Callable[[Any], str | None]


def _str(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if ok else "must be a number"


def _fraction(value: Any) -> str | None:
    return _number(value) or (None if 0 <= value <= 1 else "must be between 0 and 1")


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "must be a non-negative integer"


def _list(value: Any) -> str | None:
    return None if isinstance(value, list) and value else "must be a non-empty list"


def _str_list(value: Any) -> str | None:
    ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    return None if ok else "must be a non-empty list of column names"


def _regex(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a regular expression string"
    return regex_problem(value)


@dataclass(frozen=True)
class Expectation:
    gx_class: str
    required: tuple[str, ...]
    optional: dict[str, Check] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    # "row": each row passes or fails on its own, so the rule can run chunk by chunk and
    # the counts add up; "table": the rule needs the whole column(s) at once.
    scope: str = "row"

    def arguments(self) -> dict[str, Check]:
        return {**self.checks, **self.optional}


_MOSTLY = {"mostly": _fraction}
_RANGE = {"min_value": _number, "max_value": _number}


def _column_rule(gx_class: str, **extra: Check) -> Expectation:
    required = ("column", *extra)
    return Expectation(gx_class, required, dict(_MOSTLY), {"column": _str, **extra})


def _column_range(gx_class: str, mostly: bool = True) -> Expectation:
    optional = {**_RANGE, **(_MOSTLY if mostly else {})}
    return Expectation(gx_class, ("column",), optional, {"column": _str}, scope="row" if mostly else "table")


CATALOG: dict[str, Expectation] = {
    "column_to_exist": Expectation("ExpectColumnToExist", ("column",), {}, {"column": _str}),
    "column_values_to_not_be_null": _column_rule("ExpectColumnValuesToNotBeNull"),
    "column_values_to_be_null": _column_rule("ExpectColumnValuesToBeNull"),
    "column_values_to_be_unique": Expectation(
        "ExpectColumnValuesToBeUnique", ("column",), dict(_MOSTLY), {"column": _str}, scope="table"
    ),
    "column_values_to_match_regex": _column_rule("ExpectColumnValuesToMatchRegex", regex=_regex),
    "column_values_to_not_match_regex": _column_rule("ExpectColumnValuesToNotMatchRegex", regex=_regex),
    "column_values_to_be_in_set": _column_rule("ExpectColumnValuesToBeInSet", value_set=_list),
    "column_values_to_not_be_in_set": _column_rule("ExpectColumnValuesToNotBeInSet", value_set=_list),
    "column_values_to_be_between": _column_range("ExpectColumnValuesToBeBetween"),
    "column_value_lengths_to_be_between": _column_range("ExpectColumnValueLengthsToBeBetween"),
    "column_value_lengths_to_equal": _column_rule("ExpectColumnValueLengthsToEqual", value=_int),
    "column_mean_to_be_between": _column_range("ExpectColumnMeanToBeBetween", mostly=False),
    "column_proportion_of_unique_values_to_be_between": _column_range(
        "ExpectColumnProportionOfUniqueValuesToBeBetween", mostly=False
    ),
    "column_distinct_values_to_be_in_set": Expectation(
        "ExpectColumnDistinctValuesToBeInSet",
        ("column", "value_set"),
        {},
        {"column": _str, "value_set": _list},
        scope="table",
    ),
    "compound_columns_to_be_unique": Expectation(
        "ExpectCompoundColumnsToBeUnique", ("column_list",), dict(_MOSTLY), {"column_list": _str_list}, scope="table"
    ),
    "table_row_count_to_be_between": Expectation("ExpectTableRowCountToBeBetween", (), dict(_RANGE), scope="table"),
    "table_row_count_to_equal": Expectation(
        "ExpectTableRowCountToEqual", ("value",), {}, {"value": _int}, scope="table"
    ),
    "table_columns_to_match_set": Expectation(
        "ExpectTableColumnsToMatchSet", ("column_set",), {"exact_match": _bool}, {"column_set": _str_list}
    ),
}


def check_rule(name: str, kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (argument, message) problems for one rule; '' names the rule itself."""
    from difflib import get_close_matches

    rule = CATALOG.get(name)
    if rule is None:
        hint = get_close_matches(name, CATALOG, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(sorted(CATALOG))}"
        return [("expect", f"unknown expectation '{name}'{suggestion}")]
    allowed = rule.arguments()
    problems = []
    for key, value in kwargs.items():
        if key not in allowed:
            hint = get_close_matches(key, allowed, n=1)
            extra = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(sorted(allowed)) or 'none'}"
            problems.append((key, f"'{name}' takes no argument '{key}'; {extra}"))
        elif (message := allowed[key](value)) is not None:
            problems.append((key, message))
    for key in rule.required:
        if key not in kwargs:
            problems.append(("", f"'{name}' needs '{key}'"))
    return problems
