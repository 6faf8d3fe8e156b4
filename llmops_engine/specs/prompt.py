"""Prompt: how an example becomes model input. Shared by training, evaluation and serving.

A template is literal text with plain `{instruction}` / `{input}` placeholders and `{{` /
`}}` for literal braces — nothing else of Python's format language. Rendering substitutes
the parsed placeholders itself instead of calling `str.format`, so a request's text can never
act as a format spec, a conversion or an attribute lookup; for every template the validator
accepts, the output is byte-for-byte what `template.format(instruction=..., input=...)` gives,
which keeps the prompt hash that ties serving to training meaningful.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import ClassVar

from pydantic import Field, field_validator

from .base import KindSpec

FIELDS = ("instruction", "input")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SHOWN_CHARS = 40


class Placeholder(str):
    """A parsed `{field}` in a template, as opposed to literal text."""


def parse_template(template: str) -> tuple[str | Placeholder, ...]:
    """Split a template into literal text and placeholders; ValueError says what is not allowed."""
    parts: list[str | Placeholder] = []
    literal: list[str] = []
    position = 0
    for token in _TOKEN.finditer(template):
        literal.append(template[position:token.start()])
        position = token.end()
        text = token.group()
        if text in ("{{", "}}"):
            literal.append(text[0])
        elif text == "{":
            raise ValueError(f"'{{' at character {token.start() + 1} does not start a plain placeholder "
                             "({instruction} or {input}); write a literal brace as '{{'")
        elif text == "}":
            raise ValueError(f"single '}}' at character {token.start() + 1}; write a literal brace as '}}}}'")
        else:
            parts.extend(["".join(literal), Placeholder(_field_name(text))])
            literal = []
    literal.append(template[position:])
    parts.append("".join(literal))
    return tuple(part for part in parts if part)


def _field_name(placeholder: str) -> str:
    name = placeholder[1:-1]
    if name in FIELDS:
        return name
    shown = placeholder if len(placeholder) <= _SHOWN_CHARS else placeholder[:_SHOWN_CHARS] + "…"
    for mark, what in ((":", "a format spec"), ("!", "a conversion"), (".", "attribute access"), ("[", "index access")):
        if mark in name:
            raise ValueError(f"placeholder {shown} uses {what}; templates allow only plain {{instruction}} and {{input}}")
    raise ValueError(f"unknown placeholder {shown}; use {{instruction}} and {{input}}")


@lru_cache(maxsize=16)
def _parsed(template: str) -> tuple[str | Placeholder, ...]:
    return parse_template(template)


def render_template(template: str, values: dict[str, str]) -> str:
    """Substitute a validated template's placeholders; values are inserted as text, never parsed."""
    return "".join(format(values[part]) if isinstance(part, Placeholder) else part for part in _parsed(template))


class PromptSpec(KindSpec):
    kind: ClassVar[str] = "Prompt"

    template: str = Field(description="Text before the response; placeholders {instruction} and {input}.")
    template_no_input: str | None = Field(
        default=None, description="Used for rows whose input is empty; defaults to `template`."
    )
    system: str | None = Field(default=None, description="Optional text prepended to every prompt.")

    @field_validator("template", "template_no_input")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return value
        names = {part for part in parse_template(value) if isinstance(part, Placeholder)}
        if "instruction" not in names:
            raise ValueError("template must contain {instruction}")
        return value

    def render(self, instruction: str, input: str = "") -> str:
        chosen = self.template_no_input if (not input and self.template_no_input) else self.template
        text = render_template(chosen, {"instruction": instruction, "input": input})
        return f"{self.system}\n{text}" if self.system else text

    def saved(self) -> dict:
        """The form saved with artifacts (template.json): what serving and evaluation render with."""
        return {"system": self.system, "template": self.template, "template_no_input": self.template_no_input,
                "template_hash": self.template_hash()}

    @classmethod
    def from_saved(cls, saved: dict) -> "PromptSpec":
        fields = ("system", "template", "template_no_input")
        return cls.model_validate({k: saved[k] for k in fields if saved.get(k) is not None})

    def template_hash(self) -> str:
        canonical = "\x00".join([self.system or "", self.template, self.template_no_input or ""])
        return hashlib.sha256(canonical.encode()).hexdigest()
