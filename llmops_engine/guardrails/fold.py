"""Case folding that keeps every character where it was, for case-insensitive matching.

A deny list and the `api_key = value` pattern match on folded text without IGNORECASE (several
times faster with `re`). Folding must map each character to one character on its own, whatever
surrounds it: a streamed answer is scanned piece by piece and must find what a scan of the whole
answer finds, at the same positions.
"""

from __future__ import annotations


def fold(text: str) -> str:
    """Lower case, character by character: 'İ' (the one character whose lower() is two) folds to
    'i', and every sigma to 'σ' (lower() picks the final form by what follows it)."""
    return text.replace("\u0130", "i").replace("\u03a3", "\u03c3").replace("\u03c2", "\u03c3").lower()
