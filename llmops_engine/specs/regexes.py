"""Refuse regular expressions that can backtrack catastrophically, before they ever run.

A spec's regex (a `filter_regex`, a metric's `regex`, a validation rule's `regex`) runs over
every row with Python's backtracking engine, where `(a+)+$` takes seconds at 26 characters
and four times longer per two more. `llmops validate` rejects the shapes behind nearly
all such blow-ups, read from the parse tree that `re` itself builds:

* a quantifier nested inside another one (`(a+)+`, `(\\w+\\s?)*`, `(a?){30}`), where one
  string can be split between the iterations in exponentially many ways;
* an alternation under a quantifier whose branches can start with the same character
  (`(a|a)*`, `(a|ab|b)*`), which gives the same choice at every iteration;
* three or more unbounded quantifiers in a row over overlapping characters (`a*a*a*b`,
  `.*.*.*=`), polynomial rather than exponential but already minutes at a few hundred
  characters.

Possessive quantifiers (`a++`) and atomic groups (`(?>...)`) never backtrack, so they are
the suggested rewrite and are exempt. The check is structural and deliberately cautious;
`data/transforms.py` also runs each search under a time limit, for what it cannot see.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from re import _constants as sre  # the parse tree's opcodes; stable across 3.11+
from re import _parser

_PROBES = [chr(code) for code in range(256)] + ["\u0100", "\u0394", "\u4e00", "\U0001f600"]
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s", sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
}
_BACKTRACKING_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)
_ANY_CHAR = frozenset(_PROBES)
# Checking costs up to ~50 µs per pattern character (half of it `re`'s own parser), so the
# loader bounds the total per spec file, not only per pattern; spec regexes are a line or two.
MAX_PATTERN_CHARS = 5_000
MAX_CHARS_PER_FILE = 20_000
_chars_left: ContextVar[list[int] | None] = ContextVar("regex_chars_left", default=None)


@contextmanager
def per_file_budget() -> Iterator[None]:
    """While active, the patterns checked share MAX_CHARS_PER_FILE (the loader opens one per file)."""
    token = _chars_left.set([MAX_CHARS_PER_FILE])
    try:
        yield
    finally:
        _chars_left.reset(token)


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` is refused (does not compile, or can backtrack catastrophically); None if fine."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"regular expression is {len(pattern):,} characters long; the limit is {MAX_PATTERN_CHARS:,}"
    left = _chars_left.get()
    if left is not None:
        left[0] -= len(pattern)
        if left[0] < 0:
            return f"regular expressions in this file exceed {MAX_CHARS_PER_FILE:,} characters in all; split the file"
    try:
        re.compile(pattern)
        tree = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"not a valid regular expression: {exc}"
    ignore_case = bool(tree.state.flags & re.IGNORECASE)
    try:
        danger = _danger(list(tree), ignore_case, in_repeat=False, follow=set())
    except RecursionError:
        return "regular expression nests groups too deeply to check; simplify it"
    if danger:
        return f"regular expression can backtrack catastrophically, taking seconds per row: {danger}"
    return None


def _danger(items: list, ignore_case: bool, in_repeat: bool, follow: set[str]) -> str | None:
    """The first dangerous shape in a sequence. `in_repeat`: whether a backtracking quantifier
    that repeats more than once encloses it; `follow`: characters that can come right after
    the sequence (including, inside such a quantifier, the start of its next iteration)."""
    if _overlapping_run(items, ignore_case) >= 3:
        return "three or more quantifiers in a row that can match the same text; merge them into one"
    for (op, value), after in zip(items, _followers(items, ignore_case, follow)):
        if op in _BACKTRACKING_REPEATS:
            low, high, body = value[0], value[1], list(value[2])
            starts = _first_chars(body, ignore_case)
            # A varying count is ambiguous when what comes next can also continue it: the
            # same text then splits between this quantifier and the enclosing one in many ways.
            if in_repeat and high > low and starts & after:
                return ("a quantifier nested inside another quantifier; make the inner one possessive ('a++') "
                        "or the group atomic ('(?>...)'), or remove the nesting")
            if high > 1:
                found = _danger(body, ignore_case, True, starts | after)
            else:
                found = _danger(body, ignore_case, in_repeat, after)
        elif op == sre.BRANCH:
            branches = [list(branch) for branch in value[1]]
            if in_repeat and _branches_overlap(branches, ignore_case):
                return ("alternatives under a quantifier that can match the same text; make them start "
                        "differently, or the group atomic ('(?>...)')")
            found = next(filter(None, (_danger(b, ignore_case, in_repeat, after) for b in branches)), None)
        elif op == sre.SUBPATTERN:
            found = _danger(list(value[3]), ignore_case, in_repeat, after)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            found = _danger(list(value[1]), ignore_case, False, set())
        elif op == sre.GROUPREF_EXISTS:
            arms = [list(arm) for arm in value[1:] if arm is not None]
            found = next(filter(None, (_danger(arm, ignore_case, in_repeat, after) for arm in arms)), None)
        else:  # literals, classes, anchors, backreferences; possessive and atomic parts never backtrack
            found = None
        if found:
            return found
    return None


def _followers(items: list, ignore_case: bool, follow: set[str]) -> list[set[str]]:
    """For each item, the characters that can come right after it."""
    after = set(follow)
    result: list[set[str]] = []
    for op, value in reversed(items):
        result.append(after)
        first = _item_first(op, value, ignore_case)
        first = {c.lower() for c in first} if ignore_case else first
        after = first | after if _item_nullable(op, value) else first
    return result[::-1]


def _overlapping_run(items: list, ignore_case: bool) -> int:
    """The longest run of unbounded quantifiers whose characters overlap their neighbour's,
    with nothing but optional items between them."""
    longest = run = 0
    previous: set[str] = set()
    for op, value in items:
        if op in _BACKTRACKING_REPEATS and value[1] == sre.MAXREPEAT:
            chars = _first_chars(list(value[2]), ignore_case)
            run = run + 1 if run and chars & previous else 1
            previous = chars
            longest = max(longest, run)
        elif not _item_nullable(op, value):
            run, previous = 0, set()
    return longest


def _branches_overlap(branches: list[list], ignore_case: bool) -> bool:
    seen: set[str] = set()
    empty_branches = 0
    for branch in branches:
        if _nullable(branch):
            empty_branches += 1
        first = _first_chars(branch, ignore_case)
        if seen & first or empty_branches > 1:
            return True
        seen |= first
    return False


def _nullable(items: list) -> bool:
    """Whether a sequence can match the empty string."""
    return all(_item_nullable(op, value) for op, value in items)


def _item_nullable(op, value) -> bool:
    if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT, sre.GROUPREF):
        return True
    if op in (*_BACKTRACKING_REPEATS, sre.POSSESSIVE_REPEAT):
        return value[0] == 0 or _nullable(list(value[2]))
    if op == sre.SUBPATTERN:
        return _nullable(list(value[3]))
    if op == sre.ATOMIC_GROUP:
        return _nullable(list(value))
    if op == sre.BRANCH:
        return any(_nullable(list(branch)) for branch in value[1])
    if op == sre.GROUPREF_EXISTS:
        return any(arm is None or _nullable(list(arm)) for arm in value[1:])
    return False


def _first_chars(items: list, ignore_case: bool) -> set[str]:
    """Probe characters a sequence can start with (an over-approximation is fine: it only refuses more)."""
    first: set[str] = set()
    for op, value in items:
        first |= _item_first(op, value, ignore_case)
        if not _item_nullable(op, value):
            break
    return {c.lower() for c in first} if ignore_case else first


def _item_first(op, value, ignore_case: bool) -> set[str]:
    if op == sre.LITERAL:
        return {chr(value)}
    if op in (sre.NOT_LITERAL, sre.ANY, sre.GROUPREF):
        return set(_ANY_CHAR)
    if op == sre.IN:
        return set(_class_chars(tuple(value)))
    if op in (*_BACKTRACKING_REPEATS, sre.POSSESSIVE_REPEAT):
        return _first_chars(list(value[2]), ignore_case)
    if op == sre.SUBPATTERN:
        return _first_chars(list(value[3]), ignore_case)
    if op == sre.ATOMIC_GROUP:
        return _first_chars(list(value), ignore_case)
    if op == sre.BRANCH:
        return set().union(*(_first_chars(list(b), ignore_case) for b in value[1]))
    if op == sre.GROUPREF_EXISTS:
        return set().union(*(_first_chars(list(a), ignore_case) for a in value[1:] if a is not None))
    return set()  # anchors and lookarounds consume nothing


@lru_cache(maxsize=256)
def _class_chars(members: tuple) -> frozenset[str]:
    return frozenset(c for c in _PROBES if _class_matches(members, c))


def _class_matches(members: tuple, char: str) -> bool:
    negate = False
    hit = False
    for op, value in members:
        if op == sre.NEGATE:
            negate = True
        elif op == sre.LITERAL:
            hit = hit or char == chr(value)
        elif op == sre.RANGE:
            hit = hit or value[0] <= ord(char) <= value[1]
        elif op == sre.CATEGORY:
            pattern = _CATEGORIES.get(value)
            hit = hit or pattern is None or re.match(pattern, char) is not None
    return hit != negate
