"""Great Expectations validation of a stream of Arrow batches, chunk by chunk (never the whole
table in pandas).

GX is imported only here, inside functions, and only when a Dataset has rules: it costs
seconds. It runs in an ephemeral context (nothing written to the repository) with
analytics and progress bars off.

Large data: "row" rules (catalog scope) run as one GX suite per chunk and their counts add
up exactly; "table" rules (row count, uniqueness, means) run once on a frame holding only
the columns they name, and uniqueness rules see an 8-byte digest per value (an integer
column) instead of the text. Memory stays bounded by the chunk size plus those narrow columns. A failed
uniqueness rule's example digests are turned back into values with one more pass.

Column-map expectations skip nulls (GX semantics): `column_values_to_match_regex` passes
a null value. Pair such rules with `column_values_to_not_be_null`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

from ..errors import DataError
from ..specs.dataset import ValidationRule
from ..specs.expectations import CATALOG
from .reports import MAX_EXAMPLES, RuleResult, jsonable

CHUNK_ROWS = 200_000
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}


class ChunkValidator:
    """Feed frames through `add`; call `finish` for the per-rule results.

    The caller reads only `needed_columns()` (all columns when None) and passes, for each of
    `digest_columns()`, the digest of each value (`value_digests`). `lookup(column, digests)`
    (optional) finds the values behind digests again; it is used only to show the examples of
    failed uniqueness rules as values.
    """

    def __init__(self, rules: list[ValidationRule], data: str, chunk_rows: int = CHUNK_ROWS,
                 lookup: Callable[[str, list[int]], dict[int, Any]] | None = None):
        self.data = data
        self.chunk_rows = chunk_rows
        self.rows = 0
        self._lookup = lookup
        indexed = list(enumerate(rules))
        self._order = [i for i, _ in indexed]
        self._row_rules = [(i, r) for i, r in indexed if CATALOG[r.expect].scope == "row"]
        table = [(i, r) for i, r in indexed if CATALOG[r.expect].scope == "table"]
        self._digest_rules = [(i, r) for i, r in table if r.expect in _BY_DIGEST]
        self._value_rules = [(i, r) for i, r in table if r.expect not in _BY_DIGEST]
        self._digest_columns = _columns_of(self._digest_rules)
        # Row rules see only the columns they name (GX hashes every frame it is given),
        # unless a rule is about the set of columns itself.
        self._whole = any(r.expect == "table_columns_to_match_set" for _, r in self._row_rules)
        self._row_columns = _columns_of(self._row_rules)
        self._value_columns = _columns_of(self._value_rules)
        self._results = {i: RuleResult(i, r.expect, r.kwargs(), data) for i, r in indexed}
        self._frames: list[Any] = []
        self._buffered = 0
        self._digest_parts: list[Any] = []
        self._value_parts: list[Any] = []
        self._seen_columns: set[str] = set()
        self._flushed = False

    def needed_columns(self) -> list[str] | None:
        """The value columns the rules read (None: every column)."""
        return None if self._whole else sorted(set(self._row_columns) | set(self._value_columns))

    def digest_columns(self) -> list[str]:
        return list(self._digest_columns)

    def add(self, frame: Any, digests: Mapping[str, Any], columns: Sequence[str] = ()) -> None:
        """One piece of the data: `frame` holds the value columns, `digests` the digest columns;
        `columns` names every column the data has (for rules about missing columns)."""
        import pandas as pd

        self._seen_columns.update(map(str, columns or frame.columns))
        if self._digest_rules:
            self._digest_parts.append(pd.DataFrame({c: pd.array(digests[c], dtype="Int64")
                                                    for c in self._digest_columns if c in digests},
                                                   index=range(len(frame))))  # Int64: nulls stay nulls
        self._frames.append(frame)
        self._buffered += len(frame)
        if self._buffered >= self.chunk_rows:
            self._flush()

    def finish(self) -> list[RuleResult]:
        if self._frames or not self._flushed:
            self._flush()
        for rules, parts in ((self._value_rules, self._value_parts), (self._digest_rules, self._digest_parts)):
            if rules:
                frame = _concat(parts, self._seen_columns)
                parts.clear()
                for index, outcome in _run_suite(rules, frame).items():
                    _record(self._results[index], outcome, table=True)
        self._undigest_examples()
        for index, rule in self._row_rules:
            _settle(self._results[index], rule)
        return [self._results[i] for i in self._order]

    def _flush(self) -> None:
        import pandas as pd

        frame = pd.concat(self._frames, ignore_index=True) if len(self._frames) > 1 else (
            self._frames[0] if self._frames else pd.DataFrame())
        self._frames, self._buffered, self._flushed = [], 0, True
        self.rows += len(frame)
        if self._row_rules:
            narrow = frame if self._whole else frame[[c for c in self._row_columns if c in frame.columns]]
            for index, outcome in _run_suite(self._row_rules, narrow).items():
                _record(self._results[index], outcome, table=False)
        if self._value_rules:
            self._value_parts.append(frame[[c for c in self._value_columns if c in frame.columns]])

    def _undigest_examples(self) -> None:
        """Replace digests in failed uniqueness rules' examples by the values they stand for."""
        wanted = sorted({d for i, _ in self._digest_rules for d in _digests_in(self._results[i].examples)})
        if not wanted or self._lookup is None:
            return
        found: dict[int, Any] = {}
        for column in self._digest_columns:
            found.update(self._lookup(column, wanted))
        for index, _ in self._digest_rules:
            result = self._results[index]
            result.examples = [jsonable(_replace_digests(v, found)) for v in result.examples]


# Uniqueness only compares values for equality, so these rules see an 8-byte digest of each
# value instead of the value: the whole-table frame stays small however long the texts are.
_BY_DIGEST = {"column_values_to_be_unique", "compound_columns_to_be_unique",
              "column_proportion_of_unique_values_to_be_between"}


def value_digests(batch: Any, columns: Sequence[str]) -> dict[str, Any]:
    """The digest of each value of the named columns of an Arrow batch, as a nullable Int64 pandas
    array: pandas' vectorized 64-bit hash of the value's text (a string, or the JSON of anything
    else); null for a null."""
    return {column: _digests(batch.column(column)) for column in columns}


def _digests(column: Any) -> Any:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        texts = column.to_numpy(zero_copy_only=False)
    else:
        texts = np.array([None if value is None else _text_of(value) for value in column.to_pylist()], dtype=object)
    missing = pd.isna(texts)
    hashed = pd.util.hash_array(np.where(missing, "", texts), categorize=False).view(np.int64)
    return pd.arrays.IntegerArray(hashed, missing)


def _text_of(value: Any) -> str | None:
    if isinstance(value, float) and math.isnan(value):
        return None
    return json.dumps(value, sort_keys=True, default=str)


def _digests_in(examples: list[Any]) -> list[int]:
    values = [v for e in examples for v in (e.values() if isinstance(e, dict) else [e])]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _replace_digests(example: Any, found: dict[int, Any]) -> Any:
    if isinstance(example, dict):
        return {k: found.get(v, v) for k, v in example.items()}
    return found.get(example, example)


def _columns_of(rules: list[tuple[int, ValidationRule]]) -> list[str]:
    return sorted({c for _, r in rules for c in _rule_columns(r)})


def _concat(parts: list[Any], seen: set[str]) -> Any:
    import pandas as pd

    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    # A column that no chunk had must stay absent, so GX reports it as missing.
    return frame[[c for c in frame.columns if c in seen]]


def _rule_columns(rule: ValidationRule) -> list[str]:
    kwargs = rule.kwargs()
    return [kwargs["column"]] if "column" in kwargs else list(kwargs.get("column_list") or kwargs.get("column_set") or [])


def _run_suite(rules: list[tuple[int, ValidationRule]], frame: Any) -> dict[int, dict]:
    """Several GX expectations on one frame in one pass (GX shares their metrics)."""
    import great_expectations as gx

    expectations = [build_expectation(rule, meta={"llmops_rule": index}) for index, rule in rules]
    batch = batch_definition().get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"llmops-{len(rules)}", expectations=expectations)
    outcomes = batch.validate(suite, result_format=_RESULT_FORMAT).results
    by_index = {}
    for outcome in outcomes:
        by_index[outcome.expectation_config.meta["llmops_rule"]] = {
            "success": bool(outcome.success), "result": dict(outcome.result or {}),
            "error": _exception_message(outcome.exception_info or {}),
        }
    if len(by_index) != len(rules):  # a suite silently drops what it cannot build
        raise DataError(f"Great Expectations ran {len(by_index)} of {len(rules)} rules")
    return by_index


def _exception_message(info: dict) -> str | None:
    """GX reports an exception either at the top level or keyed by the failing metric."""
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            return str(candidate.get("exception_message") or "unknown Great Expectations error")
    return None


def _record(target: RuleResult, outcome: dict, table: bool) -> None:
    result = outcome["result"]
    target.success = target.success and outcome["success"]
    if outcome["error"] and not target.error:
        target.error = outcome["error"]
    target.element_count += int(result.get("element_count", 0) or 0)
    target.missing_count += int(result.get("missing_count", 0) or 0)
    if "unexpected_count" in result:
        target.unexpected_count = (target.unexpected_count or 0) + int(result["unexpected_count"] or 0)
        room = MAX_EXAMPLES - len(target.examples)
        target.examples.extend(jsonable(v) for v in (result.get("partial_unexpected_list") or [])[:room])
    if "observed_value" in result:
        target.observed_value = jsonable(result["observed_value"])
    if table:
        target.unexpected_percent = result.get("unexpected_percent")


def _settle(target: RuleResult, rule: ValidationRule) -> None:
    """Turn summed chunk counts into the whole-data percent and, for `mostly`, the verdict."""
    if target.unexpected_count is None:
        return
    checked = target.element_count - target.missing_count
    target.unexpected_percent = 100.0 * target.unexpected_count / checked if checked else 0.0
    mostly = rule.kwargs().get("mostly")
    if mostly is not None and not target.error:
        target.success = checked == 0 or (checked - target.unexpected_count) / checked >= mostly


def build_expectation(rule: ValidationRule, meta: dict | None = None) -> Any:
    """A GX expectation object, built so that bad kwargs raise instead of being dropped."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    gx_type = "expect_" + rule.expect
    try:
        return ExpectationConfiguration(type=gx_type, kwargs=rule.kwargs(), meta=meta).to_domain_obj()
    except Exception as exc:  # pydantic.v1 ValidationError and GX's own errors
        raise DataError(f"validation rule '{rule.expect}' is not accepted by Great Expectations: {exc}") from exc


_GX_STATE: dict[str, Any] = {}


def batch_definition() -> Any:
    """GX's batch definition for "a whole pandas DataFrame", in an ephemeral context made once."""
    if "batch" not in _GX_STATE:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx
        from great_expectations.execution_engine import pandas_execution_engine
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        # GX fingerprints every frame under this size (a hash of all its values) as batch metadata
        # that nothing here reads: it cost ~1 s per million rows of chunks.
        pandas_execution_engine.HASH_THRESHOLD = 0
        asset = context.data_sources.add_pandas("llmops").add_dataframe_asset("rows")
        _GX_STATE["batch"] = asset.add_batch_definition_whole_dataframe("whole")
        _GX_STATE["version"] = gx.__version__
    return _GX_STATE["batch"]


def gx_version() -> str:
    batch_definition()
    return _GX_STATE["version"]
