"""Declarative transforms: each spec entry becomes a generator stage over examples.

No user string is ever evaluated; the only "code" a spec can carry is a regular
expression, which `llmops validate` checks for catastrophic backtracking and which runs
here under a per-row time limit for what that check cannot see. Stages stream (constant
memory) except `dedupe`, which remembers a 16-byte digest per distinct key, and `sample`,
which keeps the n chosen rows.

Semantics, in the order written in the spec:
  strip_whitespace  {} = every field, or a list of fields; strips both ends.
  drop_empty        drop a row whose named field is None or only whitespace.
  dedupe            keep the first row of each distinct key (the named fields).
  max_chars/min_chars  drop rows whose field is longer/shorter than the limit
                    (dropped, never truncated: a cut answer is a wrong answer).
                    A None field is kept; drop_empty is the rule for those.
  filter_regex      keep (keep: true) or drop (keep: false) rows where re.search matches.
  sample            keep n rows chosen by a seeded hash of their content: the same rows
                    on every machine and whatever the file order; original order kept.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import signal
import threading
from typing import Any, Callable, Iterable, Iterator

from ..errors import DataError
from ..specs.dataset import EXAMPLE_FIELDS, FilterRegex, Sample, Transform
from .examples import Example

Stage = Callable[[Iterable[Example]], Iterator[Example]]
REGEX_SECONDS_PER_ROW = 1.0  # a sane pattern takes microseconds per row; this only stops a runaway one


def apply_transforms(rows: Iterable[Example], transforms: list[Transform]) -> Iterator[Example]:
    stream: Iterable[Example] = rows
    for transform in transforms:
        name, argument = transform.operation()
        stream = _STAGES[name](stream, argument)
    return iter(stream)


def content_hash(salt: Any, example: Example) -> int:
    """A stable 64-bit number for a row: same on every machine, Python version and run."""
    key = json.dumps([salt, example.get("instruction"), example.get("input"), example.get("output")])
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def strip_whitespace(rows: Iterable[Example], fields: dict | list) -> Iterator[Example]:
    names = list(fields) if isinstance(fields, list) and fields else list(EXAMPLE_FIELDS)
    for row in rows:
        yield {k: (v.strip() if k in names and isinstance(v, str) else v) for k, v in row.items()}


def drop_empty(rows: Iterable[Example], fields: list[str]) -> Iterator[Example]:
    for row in rows:
        if all(row.get(f) is not None and row[f].strip() for f in fields):
            yield row


def dedupe(rows: Iterable[Example], fields: list[str]) -> Iterator[Example]:
    seen: set[bytes] = set()
    for row in rows:
        key = hashlib.blake2b(json.dumps([row.get(f) for f in fields]).encode("utf-8"), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            yield row


def max_chars(rows: Iterable[Example], limits: dict[str, int]) -> Iterator[Example]:
    for row in rows:
        if all(row.get(f) is None or len(row[f]) <= n for f, n in limits.items()):
            yield row


def min_chars(rows: Iterable[Example], limits: dict[str, int]) -> Iterator[Example]:
    for row in rows:
        if all(row.get(f) is None or len(row[f]) >= n for f, n in limits.items()):
            yield row


def filter_regex(rows: Iterable[Example], rule: FilterRegex) -> Iterator[Example]:
    pattern = re.compile(rule.pattern)
    search = _time_limited_search if _alarm_is_free() else _search
    for number, row in enumerate(rows, start=1):
        try:
            matched = search(pattern, row.get(rule.column) or "") is not None
        except _Overrun:
            raise DataError(
                f"filter_regex '{rule.pattern}' ran longer than {REGEX_SECONDS_PER_ROW:g} s on row {number} "
                f"({rule.column}); the pattern backtracks catastrophically on this text, simplify it"
            ) from None
        if matched == rule.keep:
            yield row


class _Overrun(Exception):
    """A regex search ran past REGEX_SECONDS_PER_ROW; filter_regex turns it into a DataError."""


def _alarm_is_free() -> bool:
    """SIGALRM can bound a search only in the main thread, and only if nobody else uses it."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN)
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


def _search(pattern: re.Pattern, text: str) -> re.Match | None:
    return pattern.search(text)


def _time_limited_search(pattern: re.Pattern, text: str) -> re.Match | None:
    """Search, raising _Overrun past the limit: CPython's regex engine checks for signals as it
    backtracks, so the alarm's handler interrupts even a runaway match."""
    previous = signal.signal(signal.SIGALRM, _raise_overrun)
    signal.setitimer(signal.ITIMER_REAL, REGEX_SECONDS_PER_ROW)
    try:
        return pattern.search(text)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _raise_overrun(signum, frame) -> None:
    raise _Overrun()


def sample(rows: Iterable[Example], rule: Sample) -> Iterator[Example]:
    # Bottom-n by hash: one pass, n rows of memory, independent of input order.
    chosen: list[tuple[int, int, Example]] = []  # max-heap via negated hash
    for position, row in enumerate(rows):
        entry = (-content_hash(["sample", rule.seed], row), position, row)
        if len(chosen) < rule.n:
            heapq.heappush(chosen, entry)
        elif entry > chosen[0]:
            heapq.heapreplace(chosen, entry)
    for _, _, row in sorted(chosen, key=lambda item: item[1]):
        yield row


_STAGES: dict[str, Callable[[Iterable[Example], Any], Iterator[Example]]] = {
    "strip_whitespace": strip_whitespace,
    "drop_empty": drop_empty,
    "dedupe": dedupe,
    "max_chars": max_chars,
    "min_chars": min_chars,
    "filter_regex": filter_regex,
    "sample": sample,
}
