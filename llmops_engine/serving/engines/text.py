"""Answer text as tokens arrive: decoded incrementally, stop strings held back until they cannot start.

A token can end halfway through a UTF-8 character (byte-level BPE), and a stop string can
span tokens: text leaves only once no later token can change it.
"""

from __future__ import annotations

from typing import Callable

REPLACEMENT = "\ufffd"


class AnswerText:
    """Feed token ids one at a time; `feed` returns the text that became final (maybe "")."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.tokens: list[int] = []
        self.prefix = self.read = 0  # decode a window: tokens[prefix:read] are decoded into `text` already
        self.text = ""  # decoded so far (complete characters only)
        self.sent = 0  # characters of `text` already returned
        self.stopped = False  # a stop string was found: the answer ends before it

    def feed(self, token: int) -> str:
        self.tokens.append(token)
        if self.stopped:
            return ""
        # Decoding the window, not every token so far: a token's text can depend on the one before
        # it (a leading space), so the window starts one step back and only its new tail is taken.
        known = self.decode(self.tokens[self.prefix:self.read])
        window = self.decode(self.tokens[self.prefix:])
        if len(window) <= len(known) or window.endswith(REPLACEMENT):  # nothing complete yet
            return ""
        self.text += window[len(known):]
        self.prefix, self.read = self.read, len(self.tokens)
        cut = min((at for at in (self.text.find(s) for s in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.text = True, self.text[:cut]
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def finish(self) -> str:
        """The rest of the text once no token follows (as a whole-text decode ends it)."""
        if not self.stopped and self.read < len(self.tokens):
            known = self.decode(self.tokens[self.prefix:self.read])
            self.text += self.decode(self.tokens[self.prefix:])[len(known):]
            self.read = len(self.tokens)
        return self._release(len(self.text))

    def _held(self) -> int:
        """How many trailing characters could be the start of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self.sent)
        piece, self.sent = self.text[self.sent:end], end
        return piece
