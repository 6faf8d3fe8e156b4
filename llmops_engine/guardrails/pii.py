"""Find personal data and secrets in text: what a `pii` check masks, blocks or flags.

Presidio's pattern recognizers are the model (a pattern finds candidates, a checksum or a
rule confirms them), without spaCy or any download: e-mail addresses; phone numbers written
with a country code, parentheses or separators (bare digit runs are too often ids); credit
card numbers that pass the Luhn check and start like a card (2-6); IBANs of a known country,
of that country's length, that pass the ISO 13616 mod-97 check; and common secret shapes
(OpenAI/Anthropic `sk-…`, AWS `AKIA…`, GitHub `ghp_…`/`github_pat_…`, Slack `xox?-…`,
Google `AIza…`, PEM private keys, and `api_key|secret|token|password = <long value>`).

Every pattern is bounded (MAX_CHARS per entity) and made of a known set of characters, which is
what lets a streamed answer hold back only what could still grow into a match (`pending_start`,
used by guardrails/stream.py). The finders take a start position (`pos`): they scan from there
while their look-behinds still see the character before it, so a stream re-scans only what it has
not released. A text with no '@' runs no e-mail pattern. Pure functions, no state.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator

from ..specs.guardrail import PII_ENTITIES
from .fold import fold

Span = tuple[int, int, str]  # start, end, entity
# What a finder yields: the span its pattern matched (which may fail a checksum, and for
# `api_key = value` includes the key name), and the span to act on, or None when invalid.
Candidate = tuple[int, int, "tuple[int, int] | None"]

MASKS = {"email": "[EMAIL]", "phone": "[PHONE]", "credit_card": "[CREDIT_CARD]", "iban": "[IBAN]", "api_key": "[API_KEY]"}
# The longest text each entity's patterns match (an IBAN may have a single space between any two
# of its 34 characters). A PEM key body is the exception: it grows while the body streams, so a
# stream holds a PEM key from its header until it ends (`pending_start`).
MAX_CHARS = {"email": 64 + 1 + 4 * 64 + 24, "phone": 40, "credit_card": 19 + 18, "iban": 2 * 34 - 4, "api_key": 256}
# Overlapping findings in one check keep the first entity in this order (a 15-digit Amex number
# also looks like a phone number).
PRIORITY = ("api_key", "credit_card", "iban", "email", "phone")

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,4}"
                    r"[A-Za-z]{2,24}(?![\w-])")
# Look-behinds come after the first character: a pattern that starts with a character (class)
# lets `re` skip ahead to candidates, twice as fast as one that starts with a look-behind.
_CARD = re.compile(r"\d(?<![\w-]\d)(?:[ -]?\d){12,18}(?![\w-])")
# E.164 (+14155550100), or groups with separators: +44 20 7946 0958, (415) 555-0100, 020 7946 0958.
_PHONE = re.compile(r"(?:\+(?<![\w+]\+)(?:\d{8,15}|\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4})"
                    r"|\((?<![\w+]\()\d{1,4}\)[ .-]?\d{1,4}(?:[ .-]\d{2,4}){1,4}|\d(?<![\w+]\d)\d{0,3}(?:[ .-]\d{2,4}){1,4})(?!\w)")
_DIGIT = re.compile(r"\d")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_IBAN_START = re.compile(r"([A-Z]{2})\d{2}(?= ?[A-Z0-9])")  # and no letter or digit before it (checked in _ibans)
_KEY_PREFIXED = re.compile(  # and no key character before it (checked in _api_keys)
    r"(?:sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,200}|(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,200}|github_pat_[A-Za-z0-9_]{22,200}|xox[abposr]-[A-Za-z0-9-]{10,200}"
    r"|AIza[0-9A-Za-z_-]{35})(?![A-Za-z0-9_-])")
_PEM = re.compile(r"-----BEGIN[A-Z ]{0,32} PRIVATE KEY-----[A-Za-z0-9+/=\s]{0,16384}(?:-----END[A-Z ]{0,32} PRIVATE KEY-----)?")
# Matched on folded text (checks.fold: lower case, same positions); the value (group 1) is what is
# masked, so the key name stays readable.
_KEY_ASSIGNED = re.compile(r"\b(?:api[_-]?key|apikey|secret|token|password)\b[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
                           r"([a-z0-9_\-./+=]{16,200})(?![a-z0-9_\-./+=])")
_KEY_WORDS = ("api", "secret", "token", "password")  # where _KEY_ASSIGNED can start
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")

# ISO 13616 lengths per country (the SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """ISO 13616: a known country, that country's length, and the mod-97 check (= 1)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _emails(text: str, folded: str, pos: int) -> Iterator[Candidate]:
    """Matches of _EMAIL, found from each '@' (a text without one costs a `find`)."""
    at = text.find("@", pos)
    while at != -1:
        start = at
        while start > pos and at - start <= 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        match = _EMAIL.match(text, start) if at - start <= 64 else None
        if match:
            yield *match.span(), match.span()
        at = text.find("@", match.end() if match else at + 1)


def _cards(text: str, folded: str, pos: int) -> Iterator[Candidate]:
    for match in _CARD.finditer(text, pos):
        digits = re.sub(r"\D", "", match.group())
        yield *match.span(), match.span() if digits[0] in "23456" and luhn_valid(digits) else None


def _phones(text: str, folded: str, pos: int) -> Iterator[Candidate]:
    for match in _PHONE.finditer(text, pos):
        found = match.group()
        digits = sum(char.isdigit() for char in found)
        valid = (8 if found.startswith("+") else 10) <= digits <= 15 and not _IPV4.fullmatch(found)
        yield *match.span(), match.span() if valid else None


def _ibans(text: str, folded: str, pos: int) -> Iterator[Candidate]:
    for match in _IBAN_START.finditer(text, pos):
        length = IBAN_LENGTHS.get(match.group(1))
        if length is None or (match.start() and text[match.start() - 1].isalnum()):
            continue
        compact, end = [match.group().replace(" ", "")], match.end()
        size = 4
        while size < length and end < len(text):  # single spaces between groups, as IBANs are printed
            char = text[end]
            if char == " " and end + 1 < len(text) and text[end + 1] != " ":
                end += 1
                continue
            if not ("A" <= char <= "Z" or "0" <= char <= "9"):
                break
            compact.append(char)
            size, end = size + 1, end + 1
        valid = size == length and not (end < len(text) and text[end].isalnum()) and iban_valid("".join(compact))
        yield match.start(), end, (match.start(), end) if valid else None


def _api_keys(text: str, folded: str, pos: int) -> Iterator[Candidate]:
    for match in _KEY_PREFIXED.finditer(text, pos):
        secret, before = match.group(), text[match.start() - 1] if match.start() else " "
        # `sk-learn-style-names` are words; real keys mix letters and digits
        valid = not (before.isalnum() or before in "_-") and (
            not secret.startswith("sk-") or (any(c.isdigit() for c in secret) and any(c.isalpha() for c in secret[3:])))
        yield *match.span(), match.span() if valid else None
    if text.find("-----BEGIN", pos) != -1:
        yield from ((*m.span(), m.span()) for m in _PEM.finditer(text, pos))
    for word in _KEY_WORDS:
        at = folded.find(word, pos)
        while at != -1:
            if match := _KEY_ASSIGNED.match(folded, at):
                yield *match.span(), match.span(1)
            at = folded.find(word, at + 1)


_FINDERS: dict[str, Callable[[str, str, int], Iterator[Candidate]]] = {
    "email": _emails, "phone": _phones, "credit_card": _cards, "iban": _ibans, "api_key": _api_keys,
}
assert set(_FINDERS) == set(PII_ENTITIES) == set(MASKS) == set(MAX_CHARS) == set(PRIORITY)


def find_pii(text: str, entities: tuple[str, ...], pos: int = 0) -> list[Span]:
    """Non-overlapping (start, end, entity) spans of the given entities that start at `pos` or later, by position."""
    return scan_pii(text, entities, pos)[0]


def scan_pii(text: str, entities: tuple[str, ...], pos: int = 0) -> tuple[list[Span], list[tuple[int, int]]]:
    """`find_pii`, and the span of every candidate the patterns matched, valid or not (what a
    stream must not cut through: a later finder's scan depends on where earlier matches ended)."""
    has_digits = _DIGIT.search(text, pos) is not None
    folded = fold(text)
    starts: list[int] = []  # of the spans taken so far, sorted, with their spans alongside
    taken: list[Span] = []
    matched: list[tuple[int, int]] = []
    for entity in PRIORITY:
        if entity not in entities or (entity in ("phone", "credit_card", "iban") and not has_digits):
            continue
        for match_start, match_end, hit in _FINDERS[entity](text, folded, pos):
            matched.append((match_start, match_end))
            if hit is None:
                continue
            start, end = hit
            at = bisect.bisect_left(starts, start)
            overlaps_next = at < len(taken) and taken[at][0] < end
            overlaps_previous = at > 0 and taken[at - 1][1] > start
            if not (overlaps_next or overlaps_previous):
                starts.insert(at, start)
                taken.insert(at, (start, end, entity))
    return taken, matched


# --- what a stream must hold back --------------------------------------------------------------

def _in(chars: str) -> Callable[[str], bool]:
    allowed = frozenset(chars)
    return allowed.__contains__


_ASCII_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Per entity: (a character its matches may contain, a character one may start with). Every
# character of every match of the entity's patterns is in the first set (checked by the tests),
# so a match still in progress at the end of a text lies in the text's trailing run of them.
# isdecimal is what `\d` matches in a str pattern: any script's digits.
RUNS: dict[str, tuple[Callable[[str], bool], Callable[[str], bool]]] = {
    "email": (_in(_EMAIL_LOCAL | {"@"}), _in(_EMAIL_LOCAL)),
    "credit_card": (lambda c: c.isdecimal() or c in " -", str.isdecimal),
    "phone": (lambda c: c.isdecimal() or c in "+()-. ", lambda c: c.isdecimal() or c in "+("),
    "iban": (lambda c: c.isdecimal() or "A" <= c <= "Z" or c == " ", lambda c: "A" <= c <= "Z"),
    "api_key": (_in(_ASCII_ALNUM + "_-"), _in(_ASCII_ALNUM + "_-")),
}
# A key assignment still being written: the key name, then a prefix of what may follow it.
_KEY_ASSIGNING = re.compile(r"\b(?:api[_-]?key|apikey|secret|token|password)[\"']?\s{0,3}"
                            r"(?:[:=]\s{0,3}[\"']?[a-z0-9_\-./+=]{0,200})?\Z")  # on folded text
_KEY_ASSIGNING_CHARS = 8 + 1 + 3 + 1 + 3 + 1 + 200
_PEM_HEADER_CHARS = len("-----BEGIN") + 32 + len(" PRIVATE KEY-----")
# Past a match's end, a pattern reads at most this many more characters (its look-ahead, the
# IBAN walk's "is the next character a space followed by a non-space").
LOOKAHEAD_CHARS = 2


def pending_start(text: str, entities: tuple[str, ...], pos: int = 0) -> int:
    """The earliest position (≥ pos) where a match of one of `entities` could still be in
    progress at the end of `text`: no text arriving later can change a match that starts before
    it, nor make one appear there. len(text) when nothing is pending."""
    end = len(text)
    earliest = end
    for entity in entities:
        contains, starts = RUNS[entity]
        floor = max(pos, end - MAX_CHARS[entity] - LOOKAHEAD_CHARS)
        start = end
        while start > floor and contains(text[start - 1]):
            start -= 1
        while start < end and not starts(text[start]):
            start += 1
        earliest = min(earliest, start)
    if "api_key" in entities:
        earliest = min(earliest, _pending_key(text, max(pos, end - _KEY_ASSIGNING_CHARS), pos))
    return earliest


def _pending_key(text: str, window: int, pos: int) -> int:
    """Where a PEM private key or an `api_key = value` still being written starts, if one is."""
    end = len(text)
    pem = text.rfind("-----BEGIN", pos)
    if pem != -1:  # a PEM body holds no '-': a key in progress starts at the last header
        match = _PEM.match(text, pem)
        # held while its header, its body or its footer may still be arriving
        if end - (match.end() if match else pem) <= _PEM_HEADER_CHARS:
            return pem
    offset = max(window - 1, 0)  # and the character before, for the word boundary
    match = _KEY_ASSIGNING.search(fold(text[offset:]), window - offset)
    return offset + match.start() if match else end
