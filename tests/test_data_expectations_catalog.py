"""The expectation catalog (checked without GX at `llmops validate` time) must match the
installed Great Expectations: every class exists, every argument we accept is accepted."""

from __future__ import annotations

import pytest

from llmops_engine.data.validation import build_expectation
from llmops_engine.errors import DataError
from llmops_engine.specs.dataset import ValidationRule
from llmops_engine.specs.expectations import CATALOG

SAMPLE_VALUES = {
    "column": "output",
    "column_list": ["instruction", "input"],
    "column_set": ["instruction", "input", "output"],
    "regex": "^a",
    "value_set": ["a", "b"],
    "value": 3,
    "min_value": 1,
    "max_value": 5,
    "mostly": 0.9,
    "exact_match": True,
}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_catalog_entry_matches_installed_gx(name):
    import great_expectations.expectations as gxe

    entry = CATALOG[name]
    gx_class = getattr(gxe, entry.gx_class)  # the class exists under its documented name
    fields = set(getattr(gx_class, "__fields__", {}))
    for argument in entry.arguments():
        assert argument in fields, f"{entry.gx_class} has no argument {argument}"
    kwargs = {arg: SAMPLE_VALUES[arg] for arg in entry.arguments()}
    rule = ValidationRule.model_validate({"expect": name, **kwargs})  # our checks accept the sample
    built = build_expectation(rule)  # and GX accepts every argument we allow
    assert type(built) is gx_class
    assert {k: getattr(built, k) for k in kwargs} == kwargs


def test_gx_rejects_what_the_catalog_would_let_through_unchecked():
    # build_expectation must raise, not drop the expectation silently (ExpectationSuite would).
    rule = ValidationRule.model_construct(expect="column_values_to_not_be_null")  # no 'column'
    with pytest.raises(DataError, match="not accepted by Great Expectations"):
        build_expectation(rule)
