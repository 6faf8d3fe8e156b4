"""The compiled form of each check kind: what it finds in a text, and what it replaces a find with.

Two families. A span check (regex, deny_list, pii) finds spans that a mask replaces; for a
streamed answer it also says where a match could still be in progress at the end of the text
(`pending`), which is what the stream holds back, and which spans its patterns matched (valid or
not), which the stream never cuts through (see stream.py). A whole-text check (max_chars,
max_tokens, json_schema) judges the text as a whole.
Compiled once from the policy JSON (`compile_check`), then pure and thread-safe.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import GuardrailError
from ..specs.guardrail import UNMASKABLE, schema_problem
from ..specs.regexes import regex_problem
from . import pii, tokens
from .fold import fold

REDACTED = "[REDACTED]"
_WORD = re.compile(r"\w")
# How far back a user pattern's look-behind or word boundary may look, before the position a
# stream scans from (Python's look-behinds are fixed-width; the built-in patterns need one character).
REGEX_CONTEXT_CHARS = 64


@dataclass(frozen=True)
class Hit:
    start: int
    end: int
    entity: str | None  # pii: the entity; other checks: None
    replacement: str


Matched = tuple[int, int]  # the span a pattern matched, whether or not it makes a hit


@dataclass(frozen=True)
class SpanCheck:
    id: str
    kind: str
    action: str
    context: int  # how far before its start position a scan looks (look-behinds, word boundaries)
    _scan: Any = field(repr=False, compare=False)  # (text, pos) -> (hits, matched spans)
    _pending: Any = field(repr=False, compare=False)  # (text, pos) -> int

    def hits(self, text: str, pos: int = 0) -> list[Hit]:
        """Non-overlapping hits that start at `pos` or later, by position (the text before `pos`
        is only looked at, up to `context` characters)."""
        return self._scan(text, pos)[0]

    def scan(self, text: str, pos: int = 0) -> tuple[list[Hit], list[Matched]]:
        """`hits`, and every span the check's patterns matched from `pos` on."""
        return self._scan(text, pos)

    def pending(self, text: str, pos: int = 0) -> int:
        """The earliest position (≥ pos) where a match could still be in progress at the end of
        `text`, so that text arriving later could change what is found from there on; len(text)
        when nothing is."""
        return self._pending(text, pos)


@dataclass(frozen=True)
class WholeCheck:
    id: str
    kind: str
    action: str
    _violated: Any = field(repr=False, compare=False)
    limit: int | None = None  # max_chars / max_tokens
    tokenizer: str | None = None  # max_tokens: the tokenizer it loads on first use

    def violated(self, text: str) -> bool:
        return self._violated(text)


def compile_check(entry: dict[str, Any]) -> SpanCheck | WholeCheck:
    """A check from its policy JSON entry ({"id", "check", "action", ...params}); GuardrailError if unusable."""
    try:
        check_id, kind, action = entry["id"], entry["check"], entry["action"]
        builder = _BUILDERS[kind]
    except (KeyError, TypeError) as exc:
        raise GuardrailError(f"not a guardrail check entry: {str(entry)[:120]}") from exc
    if action not in ("block", "mask", "flag") or (action == "mask" and kind in UNMASKABLE):
        raise GuardrailError(f"check {check_id}: action '{action}' is not possible for a {kind} check")
    try:
        return builder(check_id, action, entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardrailError(f"check {check_id}: malformed {kind} entry ({type(exc).__name__}: {exc})") from exc


def _regex(check_id: str, action: str, entry: dict) -> SpanCheck:
    pattern = entry["pattern"]
    if problem := regex_problem(pattern):  # the policy may come from outside the loader: check it again
        raise GuardrailError(f"check {check_id}: {problem}")
    compiled = re.compile(pattern)
    window = int(entry.get("max_match_chars", 256)) + 1  # a match, and the character after it for a look-ahead

    def scan(text: str, pos: int) -> tuple[list[Hit], list[Matched]]:
        # an empty match masks nothing (the spec refuses patterns matching "")
        spans = [m.span() for m in compiled.finditer(text, pos) if m.end() > m.start()]
        return [Hit(start, end, None, REDACTED) for start, end in spans], spans

    # What a user pattern may still match cannot be read from it in general: a stream holds back
    # its max_match_chars (+1), so a regex check on output delays each chunk by that much text.
    return SpanCheck(check_id, "regex", action, REGEX_CONTEXT_CHARS, scan,
                     lambda text, pos: max(pos, len(text) - window))


def _deny_list(check_id: str, action: str, entry: dict) -> SpanCheck:
    words = [w for w in entry["words"] if w]
    case_sensitive = bool(entry.get("case_sensitive", False))
    entries = words if case_sensitive else [fold(w) for w in words]
    prefixes = _trie(entries)
    # Whole words: not inside a longer word on either side.
    compiled = re.compile(rf"(?<!\w){_trie_pattern(prefixes)}(?!\w)")
    longest = max(map(len, entries))

    def scan(text: str, pos: int) -> tuple[list[Hit], list[Matched]]:
        spans = [m.span() for m in compiled.finditer(text if case_sensitive else fold(text), pos)]
        return [Hit(start, end, None, REDACTED) for start, end in spans], spans

    def pending(text: str, pos: int) -> int:
        """The start of the longest suffix that begins a word and is the start of an entry (a whole
        entry included: the next character decides whether it stands as a word)."""
        end = len(text)
        floor = max(pos, end - longest)
        offset = max(floor - 1, 0)  # and the character before, for the word boundary
        searched = text[offset:] if case_sensitive else fold(text[offset:])
        for start in range(floor, end):
            at = start - offset
            if (start == 0 or not _WORD.match(searched, at - 1)) and _continues(prefixes, searched, at):
                return start
        return end

    return SpanCheck(check_id, "deny_list", action, 1, scan, pending)


def _trie(words: list[str]) -> dict:
    """A prefix tree: char -> subtree, with "" marking where a word ends."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return trie


def _continues(trie: dict, text: str, start: int) -> bool:
    """Whether text[start:] is the start of an entry (or a whole one)."""
    node = trie
    for position in range(start, len(text)):
        node = node.get(text[position])
        if node is None:
            return False
    return True


def _trie_pattern(trie: dict) -> str:
    """One regex alternation as a prefix tree: each character is tried once per position, not
    once per word (three times faster than a flat alternation at 50 words)."""

    def emit(node: dict) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return f"(?:{emit(trie)})"


def _pii(check_id: str, action: str, entry: dict) -> SpanCheck:
    entities = tuple(entry["entities"])
    unknown = [e for e in entities if e not in pii.MASKS]
    if unknown or not entities:
        raise GuardrailError(f"check {check_id}: unknown pii entities {unknown or entities}")
    def scan(text: str, pos: int) -> tuple[list[Hit], list[Matched]]:
        spans, matched = pii.scan_pii(text, entities, pos)
        return [Hit(start, end, entity, pii.MASKS[entity]) for start, end, entity in spans], matched

    return SpanCheck(check_id, "pii", action, 1, scan, lambda text, pos: pii.pending_start(text, entities, pos))


def _max_chars(check_id: str, action: str, entry: dict) -> WholeCheck:
    limit = int(entry["limit"])
    return WholeCheck(check_id, "max_chars", action, lambda text: len(text) > limit, limit=limit)


def _max_tokens(check_id: str, action: str, entry: dict) -> WholeCheck:
    limit, ref = int(entry["limit"]), entry["tokenizer"]
    return WholeCheck(check_id, "max_tokens", action, lambda text: tokens.exceeds(ref, text, limit),
                      limit=limit, tokenizer=ref)


def _json_schema(check_id: str, action: str, entry: dict) -> WholeCheck:
    schema = entry.get("schema")
    if schema is None:
        raise GuardrailError(f"check {check_id}: schema_path '{entry.get('schema_path')}' was not resolved into the "
                             "policy; build it with the Guardrail's published outputs")
    if problem := schema_problem(schema):
        raise GuardrailError(f"check {check_id}: {problem}")
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)

    def violated(text: str) -> bool:
        try:
            return not validator.is_valid(json.loads(_unfenced(text)))
        except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
            return True

    return WholeCheck(check_id, "json_schema", action, violated)


def _unfenced(text: str) -> str:
    """The JSON inside a ```json fence, as models often write it; the text itself otherwise."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6:
        body = stripped[3:-3]
        return body[body.index("\n") + 1:] if "\n" in body else body
    return stripped


_BUILDERS = {"regex": _regex, "deny_list": _deny_list, "pii": _pii, "max_chars": _max_chars,
             "max_tokens": _max_tokens, "json_schema": _json_schema}
