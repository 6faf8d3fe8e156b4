"""Guardrail: input and output checks a Deployment runs on every request, tested at apply.

A Deployment names guardrails (`guardrails: [support-safety]`); its replicas run the input
checks on each request (and on a knowledge base's retrieved chunks) and the output checks on
each answer, streamed or not (runtime: `llmops_engine/guardrails/`). The optional `tests:` file
of labelled cases is a gate run at apply (`controllers/guardrail.py`). Everything that can be
checked without running a model is checked here, so a bad pattern, entity or schema is a
`validate` error at its line rather than a failed replica.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .base import FieldError, KindSpec, PathInput, StrictModel
from .regexes import regex_problem

CHECK_KINDS = ("max_chars", "max_tokens", "regex", "deny_list", "pii", "json_schema")
PII_ENTITIES = ("email", "phone", "credit_card", "iban", "api_key")
# The keys each check reads besides check, name and action; any other key is an error at its line.
CHECK_KEYS: dict[str, tuple[str, ...]] = {
    "max_chars": ("limit",),
    "max_tokens": ("limit", "tokenizer"),
    "regex": ("pattern", "max_match_chars"),
    "deny_list": ("words", "case_sensitive"),
    "pii": ("entities",),
    "json_schema": ("schema", "schema_path"),
}
REQUIRED_KEYS = {"max_chars": ("limit",), "max_tokens": ("limit",), "regex": ("pattern",), "deny_list": ("words",),
                 "pii": ("entities",)}
# A whole-text check has no span to replace, so it can block or flag but not mask.
UNMASKABLE = ("max_chars", "max_tokens", "json_schema")
# Tokenizers whose every token is at least one UTF-8 byte (byte-level BPE, no normalizer), so a
# text of at most `limit` bytes is within `limit` tokens without tokenizing it (tests check it).
TOKENIZERS = ("builtin:smollm2-135m-instruct", "builtin:tiny-llama")
DEFAULT_TOKENIZER = TOKENIZERS[0]
CHECK_ID = r"^[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?$"
MAX_CHECKS_PER_STAGE = 64
MAX_DENY_WORDS = 10_000
MAX_SCHEMA_CHARS = 200_000  # a response schema is a few KB; this bounds what every replica holds and walks
Action = Literal["block", "mask", "flag"]


class Check(StrictModel):
    """One check, chosen by `check`, with `name` and `action` and its own keys only: max_chars: limit;
    max_tokens: limit, tokenizer; regex: pattern, max_match_chars; deny_list: words, case_sensitive;
    pii: entities; json_schema: schema or schema_path (output only)."""

    check: str = Field(description="max_chars | max_tokens | regex | deny_list | pii | json_schema")
    name: str | None = Field(default=None, pattern=CHECK_ID, description=(
        "The check's id in findings, metrics and test cases (default: <stage>-<check>, suffixed -2, -3 when repeated)."))
    action: Action | None = Field(default=None, description=(
        "block | mask | flag (default: mask for pii, block otherwise); max_chars, max_tokens and json_schema cannot mask."))
    limit: int | None = Field(default=None, gt=0, le=10_000_000, description="max_chars / max_tokens: the most allowed.")
    tokenizer: str | None = Field(default=None, description=f"max_tokens: {' | '.join(TOKENIZERS)} (default {DEFAULT_TOKENIZER}).")
    pattern: str | None = Field(default=None, description="regex: a Python regular expression, searched anywhere in the text.")
    max_match_chars: int | None = Field(default=None, ge=1, le=4096, description=(
        "regex: the longest text the pattern matches (default 256); streamed output holds back this many characters "
        "so that a match split across chunks is still caught."))
    words: list[str] | None = Field(default=None, max_length=MAX_DENY_WORDS,
                                    description="deny_list: words or phrases, matched as whole words.")
    case_sensitive: bool | None = Field(default=None, description="deny_list: default false.")
    entities: list[str] | None = Field(default=None, description=f"pii: any of {', '.join(PII_ENTITIES)}.")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema", description="json_schema: the schema, inline.")
    schema_path: str | None = Field(default=None, description="json_schema: a JSON file in the repository holding the schema.")

    @field_validator("check")
    @classmethod
    def _known_check(cls, value: str) -> str:
        if value not in CHECK_KINDS:
            hint = difflib.get_close_matches(value, CHECK_KINDS, n=1)
            known = f"did you mean '{hint[0]}'?" if hint else f"one of: {', '.join(CHECK_KINDS)}"
            raise ValueError(f"unknown check '{value[:60]}'; {known}")
        return value

    @field_validator("words")
    @classmethod
    def _plain_words(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("the deny list is empty; list at least one word, or remove the check")
        for word in value:
            if not word.strip() or len(word) > 200 or word != word.strip():
                raise ValueError(f"'{word[:60]}' is not a deny-list word: non-empty, at most 200 characters, "
                                 "no leading or trailing spaces")
        return value

    @model_validator(mode="after")
    def _fits_its_kind(self) -> "Check":
        problems = self._key_problems() or self._value_problems()
        if problems:
            raise FieldError(*problems)
        return self

    def _key_problems(self) -> list[tuple[str, str]]:
        own = CHECK_KEYS[self.check]
        keys = {(info.alias or name) for name, info in type(self).model_fields.items() if name in self.model_fields_set}
        problems = [(key, f"'{key}' does not apply to a {self.check} check; its keys: {', '.join(('action', 'name') + own)}")
                    for key in sorted(keys - {"check", "name", "action", *own})]
        problems += [(key, f"a {self.check} check needs '{key}'") for key in REQUIRED_KEYS.get(self.check, ())
                     if key not in keys]
        if self.check == "json_schema" and (self.json_schema is None) == (self.schema_path is None):
            problems.append(("check", "a json_schema check needs exactly one of 'schema' (inline) or 'schema_path'"))
        if self.check in UNMASKABLE and self.action == "mask":
            problems.append(("action", f"a {self.check} check cannot mask (it judges the whole text, there is no span "
                                       "to replace); use block or flag"))
        return problems

    def _value_problems(self) -> list[tuple[str, str]]:
        if self.check == "regex":
            problem = regex_problem(self.pattern)
            if problem is None and re.match(self.pattern, ""):
                problem = "the pattern matches empty text, so it would act on every text; make it match something"
            return [("pattern", problem)] if problem else []
        if self.check == "max_tokens" and self.tokenizer is not None and self.tokenizer not in TOKENIZERS:
            return [("tokenizer", f"unknown tokenizer '{self.tokenizer[:60]}'; one of: {', '.join(TOKENIZERS)}")]
        if self.check == "pii":
            return [(f"entities.{i}", _unknown_entity(entity)) for i, entity in enumerate(self.entities)
                    if entity not in PII_ENTITIES] or ([("entities", "list at least one entity")] if not self.entities else [])
        if self.check == "json_schema" and self.json_schema is not None:
            return [("schema", problem) for problem in [schema_problem(self.json_schema)] if problem]
        return []

    def effective_action(self) -> str:
        return self.action or ("mask" if self.check == "pii" else "block")

    def params(self) -> dict[str, Any]:
        """The kind's own settings with their defaults filled in, as the runtime reads them."""
        if self.check == "max_chars":
            return {"limit": self.limit}
        if self.check == "max_tokens":
            return {"limit": self.limit, "tokenizer": self.tokenizer or DEFAULT_TOKENIZER}
        if self.check == "regex":
            return {"pattern": self.pattern, "max_match_chars": self.max_match_chars or 256}
        if self.check == "deny_list":
            return {"words": list(self.words), "case_sensitive": bool(self.case_sensitive)}
        if self.check == "pii":
            return {"entities": list(dict.fromkeys(self.entities))}
        return {"schema": self.json_schema} if self.json_schema is not None else {"schema_path": self.schema_path}


def _unknown_entity(entity: str) -> str:
    hint = difflib.get_close_matches(entity, PII_ENTITIES, n=1)
    return f"unknown entity '{entity[:60]}'; " + (f"did you mean '{hint[0]}'?" if hint else f"one of: {', '.join(PII_ENTITIES)}")


def schema_problem(schema: Any) -> str | None:
    """Why a JSON Schema is refused (invalid, too large, a remote $ref, a catastrophic pattern); None if fine.

    Remote `$ref`s would need the network at serving time; a schema's `pattern` runs on every answer
    with Python's backtracking engine, so it gets the same check as a regex check.
    """
    if not isinstance(schema, dict):
        return "a JSON Schema must be an object"
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        return f"the schema is {len(text):,} characters as JSON; the limit is {MAX_SCHEMA_CHARS:,}"
    for key, value in _schema_items(schema):
        if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            return f"'$ref: {value[:60]}' points outside the schema; only local references (#/...) work offline"
        patterns = [value] if key == "pattern" else list(value) if key == "patternProperties" and isinstance(value, dict) else []
        for pattern in patterns:
            if isinstance(pattern, str) and (problem := regex_problem(pattern)):
                return f"pattern '{pattern[:60]}': {problem}"
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        return f"not a valid JSON Schema: {exc.message[:200]}" + (f" (at {where})" if where else "")
    return None


def _schema_items(node: Any):
    """Every (key, value) pair anywhere in a schema."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                yield key, value
                stack.append(value)
        elif isinstance(current, list):
            stack.extend(current)


class Tests(StrictModel):
    path: str = Field(description='JSONL lines {"stage": "input|output", "text": "...", "expect": "block|mask|flag|pass", '
                                  '"check": "<check id>" (optional)}.')


class GuardrailSpec(KindSpec):
    kind: ClassVar[str] = "Guardrail"

    input: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS_PER_STAGE,
                               description="Checks on each request's text (and on retrieved chunks), in order.")
    output: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS_PER_STAGE,
                                description="Checks on each answer, in order; streamed answers are checked before each chunk leaves.")
    tests: Tests | None = Field(default=None, description="Labelled cases run as a gate at apply.")

    @model_validator(mode="after")
    def _a_sound_policy(self) -> "GuardrailSpec":
        if not self.input and not self.output:
            raise FieldError(((), "the policy has no checks; add at least one under input or output"))
        problems = [(f"input.{i}.check", "json_schema checks the model's answer; move it under output")
                    for i, check in enumerate(self.input) if check.check == "json_schema"]
        seen: dict[str, str] = {}
        for stage, check_id, index in self._ids():
            where = f"{stage}.{index}"
            if check_id in seen:
                problems.append((f"{where}.name", f"check id '{check_id}' is used twice (also {seen[check_id]}); "
                                                  "give each check its own name"))
            seen.setdefault(check_id, where)
        if problems:
            raise FieldError(*problems)
        return self

    def _ids(self) -> list[tuple[str, str, int]]:
        """(stage, id, index) of every check: its name, or <stage>-<check> suffixed -2, -3 when repeated."""
        ids = []
        for stage in ("input", "output"):
            counts: dict[str, int] = {}
            for index, check in enumerate(getattr(self, stage)):
                counts[check.check] = counts.get(check.check, 0) + 1
                default = f"{stage}-{check.check}".replace("_", "-")
                ids.append((stage, check.name or (default if counts[check.check] == 1 else f"{default}-{counts[check.check]}"), index))
        return ids

    def check_stages(self) -> dict[str, str]:
        """Each check's id -> its stage, as test cases name them."""
        return {check_id: stage for stage, check_id, _ in self._ids()}

    def schema_paths(self) -> list[tuple[int, str]]:
        """(index under output, path) of each json_schema check that reads its schema from a file."""
        return [(index, check.schema_path) for index, check in enumerate(self.output) if check.schema_path]

    def path_inputs(self) -> list[PathInput]:
        paths = [PathInput(check.schema_path, (stage, index, "schema_path"), must_exist=True)
                 for stage, _, index in self._ids() for check in [getattr(self, stage)[index]] if check.schema_path]
        if self.tests is not None:
            paths.append(PathInput(self.tests.path, ("tests", "path"), must_exist=True))
        return paths

    def policy(self, name: str, schemas: dict[str, Any] | None = None) -> dict[str, Any]:
        """The compact, JSON-serializable policy the runtime compiles (`guardrails.Policy.from_json`).

        `schemas` maps a schema_path to its parsed content (the controller reads the files); a
        schema_path left unresolved stays a path, which the runtime refuses.
        """
        stages: dict[str, list[dict]] = {"input": [], "output": []}
        for stage, check_id, index in self._ids():
            check = getattr(self, stage)[index]
            params = check.params()
            if "schema_path" in params and schemas and params["schema_path"] in schemas:
                params = {"schema": schemas[params["schema_path"]]}
            stages[stage].append({"id": check_id, "check": check.check, "action": check.effective_action(), **params})
        return {"name": name, **stages}
