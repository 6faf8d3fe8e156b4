"""Collect every problem found in a knowledge base's inputs, then raise them once.

A user fixing a knowledge base should see all its bad files and lines in one run, like the
spec loader's errors, but a million-line file of garbage must not build a million-line
message: after LIMIT problems only the count grows.
"""

from __future__ import annotations

from ..errors import KnowledgeBaseError

LIMIT = 50


class Problems:
    def __init__(self, what: str):
        self.what = what  # e.g. "reading knowledge base documents"
        self.messages: list[str] = []
        self.unlisted = 0

    @property
    def full(self) -> bool:
        """Whether a further problem would only be counted (so callers can skip building its message)."""
        return len(self.messages) >= LIMIT

    def add(self, message: str) -> None:
        if self.full:
            self.unlisted += 1
        else:
            self.messages.append(message)

    def raise_if_any(self) -> None:
        count = len(self.messages) + self.unlisted
        if not count:
            return
        lines = self.messages + ([f"... and {self.unlisted} more"] if self.unlisted else [])
        raise KnowledgeBaseError(f"{count} problem{'s' if count != 1 else ''} {self.what}:\n" + "\n".join(lines))
