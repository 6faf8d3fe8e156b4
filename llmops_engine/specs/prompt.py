"""Prompt: how an example becomes model input. Shared by training, evaluation and serving."""

from __future__ import annotations

import hashlib
import string
from typing import ClassVar

from pydantic import Field, field_validator

from .base import KindSpec

FIELDS = ("instruction", "input")


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


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
        try:
            names = _placeholders(value)
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}; write literal braces as '{{{{' and '}}}}'") from None
        unknown = sorted(names - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {{instruction}} and {{input}}")
        if "instruction" not in names:
            raise ValueError("template must contain {instruction}")
        return value

    def render(self, instruction: str, input: str = "") -> str:
        chosen = self.template_no_input if (not input and self.template_no_input) else self.template
        text = chosen.format(instruction=instruction, input=input)
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
