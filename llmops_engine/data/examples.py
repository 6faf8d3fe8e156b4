"""Map a chat conversation onto the example fields every later stage uses: instruction, input, output.

Alpaca-style sources name their columns in `columns:` and are mapped in SQL (data/pipeline.py:
a missing or null `input` becomes "", a missing instruction/output stays null so validation can
see it, a non-string value becomes its JSON text). A chat source names one column of
turns, `[{role, content}, ...]` (a list, or a JSON string of one, as CSV stores it), and
is normalized like this, one example per conversation:
  - output      = the content of the LAST assistant turn;
  - instruction = the content of the last user turn before it;
  - input       = every earlier turn, in order: a system prompt's content as it is
                  (it is the context), other turns one "role: content" line each;
                  "" when there are none.
  - history     = those earlier turns as given, for `format: chat` Prompts, which render
                  them as turns through the model's chat template (system messages fill
                  {input}: specs/prompt.py split_history).
The server maps OpenAI chat requests with this same function, so a model is always
asked in the format it was trained on, a text prompt and a chat prompt alike.
A conversation without an assistant or user turn gets output/instruction None, which
`drop_empty` removes and a not-null rule reports.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import DataError

Example = dict[str, Any]  # instruction, input, output: str | None; history: list of turns


def chat_to_example(turns: list[dict]) -> Example:
    last_assistant = _last_index(turns, "assistant", len(turns))
    last_user = _last_index(turns, "user", last_assistant if last_assistant is not None else len(turns))
    output = _text(turns[last_assistant].get("content")) if last_assistant is not None else None
    instruction = _text(turns[last_user].get("content")) if last_user is not None else None
    history = turns[:last_user] if last_user is not None else []
    lines = [_history_line(turn) for turn in history]
    turns_as_given = [{"role": _text(turn.get("role")) or "", "content": _text(turn.get("content")) or ""}
                      for turn in history]
    return {"instruction": instruction, "input": "\n".join(lines), "output": output, "history": turns_as_given}


def turns_before_last_user(turns: list[dict]) -> list[dict]:
    """The turns a conversation had before its last user turn, in order, as given."""
    last_user = _last_index(turns, "user", len(turns))
    return turns[:last_user] if last_user is not None else []


def _history_line(turn: dict) -> str:
    content = _text(turn.get("content")) or ""
    return content if turn.get("role") == "system" else f"{turn.get('role', '')}: {content}"


def _last_index(turns: list[dict], role: str, before: int) -> int | None:
    for index in range(before - 1, -1, -1):
        if turns[index].get("role") == role:
            return index
    return None


def turns_of(value: Any) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"chat 'messages' value is not a JSON list of turns: {value[:80]!r}") from exc
    if not isinstance(value, list) or not all(isinstance(turn, dict) for turn in value):
        raise DataError("chat 'messages' must be a list of {role, content} objects")
    return value


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:  # NaN from a numeric column means missing
        return None
    return str(value)
