"""Great Expectations validation of a row stream, chunk by chunk.

GX is imported only here, inside functions, and only when a Dataset has rules: it costs
seconds. It runs in an ephemeral context (nothing written to the repository) with
analytics and progress bars off.

Large data: "row" rules (catalog scope) run as one GX suite per chunk and their counts add
up exactly; "table" rules (row count, uniqueness, means) run once on a frame holding only
the columns they name, and uniqueness rules see an 8-byte digest per value instead of the
text. Memory stays bounded by the chunk size plus those narrow columns. A failed
uniqueness rule's example digests are turned back into values with one more pass.

Column-map expectations skip nulls (GX semantics): `column_values_to_match_regex` passes
a null value. Pair such rules with `column_values_to_not_be_null`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable, Iterable, Iterator

from ..errors import DataError
from ..specs.dataset import ValidationRule
from ..specs.expectations import CATALOG
from .reports import MAX_EXAMPLES, RuleResult, jsonable

CHUNK_ROWS = 50_000
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}


class ChunkValidator:
    """Feed rows through `tap`; call `finish` for the per-rule results.

    `reread` (optional) streams the same rows again; it is used only to turn the digests
    of failed uniqueness rules back into example values.
    """

    def __init__(self, rules: list[ValidationRule], data: str, columns: list[str] | None = None,
                 chunk_rows: int = CHUNK_ROWS, reread: Callable[[], Iterable[dict]] | None = None):
        self.data = data
        self.columns = columns
        self.chunk_rows = chunk_rows
        self.rows = 0
        self._reread = reread
        indexed = list(enumerate(rules))
        self._order = [i for i, _ in indexed]
        self._row_rules = [(i, r) for i, r in indexed if CATALOG[r.expect].scope == "row"]
        table = [(i, r) for i, r in indexed if CATALOG[r.expect].scope == "table"]
        self._digest_rules = [(i, r) for i, r in table if r.expect in _BY_DIGEST]
        self._value_rules = [(i, r) for i, r in table if r.expect not in _BY_DIGEST]
        self._digest_columns = _columns_of(self._digest_rules)
        # Row rules see only the columns they name (GX hashes every frame it is given),
        # unless a rule is about the set of columns itself.
        whole = any(r.expect == "table_columns_to_match_set" for _, r in self._row_rules)
        self._row_columns = None if whole else _columns_of(self._row_rules)
        self._value_columns = _columns_of(self._value_rules)
        self._results = {i: RuleResult(i, r.expect, r.kwargs(), data) for i, r in indexed}
        self._buffer: list[dict] = []
        self._digest_parts: list[Any] = []
        self._value_parts: list[Any] = []
        self._seen_columns: set[str] = set()
        self._flushed = False

    def tap(self, rows: Iterable[dict]) -> Iterator[dict]:
        for row in rows:
            self._buffer.append(row)
            if len(self._buffer) >= self.chunk_rows:
                self._flush()
            yield row

    def finish(self) -> list[RuleResult]:
        if self._buffer or not self._flushed:
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

        frame = pd.DataFrame.from_records(self._buffer, columns=self.columns)
        self._seen_columns.update(map(str, frame.columns))
        self._flushed = True
        self.rows += len(frame)
        if self._row_rules:
            narrow = frame if self._row_columns is None else frame[[c for c in self._row_columns if c in frame.columns]]
            for index, outcome in _run_suite(self._row_rules, narrow).items():
                _record(self._results[index], outcome, table=False)
        if self._value_rules:
            self._value_parts.append(frame[[c for c in self._value_columns if c in frame.columns]])
        if self._digest_rules:
            digests = {c: [_digest(row.get(c)) for row in self._buffer] for c in self._digest_columns}
            self._digest_parts.append(pd.DataFrame(digests, dtype="str", index=range(len(self._buffer))))
        self._buffer = []

    def _undigest_examples(self) -> None:
        """Replace digests in failed uniqueness rules' examples by the values (one more pass)."""
        wanted = {d for i, _ in self._digest_rules for d in _digests_in(self._results[i].examples)}
        if not wanted or self._reread is None:
            return
        found: dict[str, Any] = {}
        for row in self._reread():
            for column in self._digest_columns:
                digest = _digest(row.get(column))
                if digest in wanted:
                    found[digest] = row.get(column)
            if len(found) == len(wanted):
                break
        for index, _ in self._digest_rules:
            result = self._results[index]
            result.examples = [jsonable(_replace_digests(v, found)) for v in result.examples]


# Uniqueness only compares values for equality, so these rules see an 8-byte digest of each
# value instead of the value: the whole-table frame stays small however long the texts are.
_BY_DIGEST = {"column_values_to_be_unique", "compound_columns_to_be_unique",
              "column_proportion_of_unique_values_to_be_between"}


def _digest(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _digests_in(examples: list[Any]) -> list[str]:
    values = [v for e in examples for v in (e.values() if isinstance(e, dict) else [e])]
    return [v for v in values if isinstance(v, str)]


def _replace_digests(example: Any, found: dict[str, Any]) -> Any:
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
        asset = context.data_sources.add_pandas("llmops").add_dataframe_asset("rows")
        _GX_STATE["batch"] = asset.add_batch_definition_whole_dataframe("whole")
        _GX_STATE["version"] = gx.__version__
    return _GX_STATE["batch"]


def gx_version() -> str:
    batch_definition()
    return _GX_STATE["version"]
