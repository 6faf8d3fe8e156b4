"""Prompt: how an example becomes model input. Shared by training, evaluation and serving.

A template is literal text with plain `{instruction}` / `{input}` / `{context}` placeholders and `{{` /
`}}` for literal braces — nothing else of Python's format language. Rendering substitutes
the parsed placeholders itself instead of calling `str.format`, so a request's text can never
act as a format spec, a conversion or an attribute lookup; for every template the validator
accepts, the output is byte-for-byte what `template.format(instruction=..., input=..., context=...)` gives,
which keeps the prompt hash that ties serving to training meaningful.

`format: chat` makes the template the user turn of a conversation (after `system`), rendered
through the base model's own chat template (models/chat.py), which callers pass in: this module
imports no tokenizer. Its hash then also covers that chat template's text, so a tuned model
served through another template is caught. `format: text` (the default) renders and hashes
exactly as before chat prompts existed, and leaves the spec's fingerprint as it was.

`{context}` is filled with the chunks a knowledge base retrieved for the question (RAG); a Prompt
that uses it is served or evaluated with a `knowledge_base:` (checks.py holds the pairing).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import ClassVar, Literal, Protocol

from pydantic import Field, field_validator

from ..errors import ChatTemplateError
from .base import KindSpec

FIELDS = ("instruction", "input", "context")
# Base models known from their reference alone to have no chat template: validate reports a chat
# Prompt on them before anything runs (any other model is checked when its tokenizer is loaded).
REFS_WITHOUT_CHAT_TEMPLATE = ("builtin:tiny-llama",)
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SHOWN_CHARS = 40


class ChatRenderer(Protocol):
    """A model's chat template bound to its tokenizer (models/chat.py ChatTemplate)."""

    text: str  # the template's source

    def render(self, messages: list[dict[str, str]]) -> str: ...


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
                             "({instruction}, {input} or {context}); write a literal brace as '{{'")
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
            raise ValueError(f"placeholder {shown} uses {what}; templates allow only plain {{instruction}}, {{input}} and {{context}}")
    raise ValueError(f"unknown placeholder {shown}; use {{instruction}}, {{input}} and {{context}}")


@lru_cache(maxsize=16)
def _parsed(template: str) -> tuple[str | Placeholder, ...]:
    return parse_template(template)


def render_template(template: str, values: dict[str, str]) -> str:
    """Substitute a validated template's placeholders; values are inserted as text, never parsed."""
    return "".join(format(values[part]) if isinstance(part, Placeholder) else part for part in _parsed(template))


def split_history(history: list[dict]) -> tuple[str, list[dict[str, str]]]:
    """How a chat prompt takes a conversation's turns before its last user message: system
    messages are the context ({input}, as an instruction/input row's input column is), the
    user and assistant turns stay turns."""
    context = "\n".join(str(turn.get("content") or "") for turn in history if turn.get("role") == "system")
    turns = [{"role": str(turn.get("role")), "content": str(turn.get("content") or "")}
             for turn in history if turn.get("role") != "system"]
    return context, turns


class PromptSpec(KindSpec):
    kind: ClassVar[str] = "Prompt"

    # Left out of the dump when "text", so prompts written before chat prompts keep their fingerprint.
    format: Literal["text", "chat"] = Field(
        default="text", exclude_if=lambda value: value == "text",
        description="text: `system` and the template are the whole prompt. chat: `system` and the template "
                    "(the user turn) render through the base model's own chat template.",
    )
    template: str = Field(description="Text before the response (chat: the user turn); placeholders {instruction}, {input} "
                                      "and, with a knowledge base, {context}.")
    template_no_input: str | None = Field(
        default=None, description="Used for rows whose input is empty; defaults to `template`."
    )
    system: str | None = Field(default=None, description="text: a line prepended to every prompt; chat: the system message.")

    @field_validator("template", "template_no_input")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return value
        names = {part for part in parse_template(value) if isinstance(part, Placeholder)}
        if "instruction" not in names:
            raise ValueError("template must contain {instruction}")
        return value

    def render(self, instruction: str, input: str = "", chat: ChatRenderer | None = None, context: str = "") -> str:
        """The prompt for one example; a chat prompt needs the model's chat template. `context`
        fills {context}: the chunks a knowledge base retrieved for the question."""
        if self.format == "chat":
            return self.render_turns([], instruction, input, chat, context)
        text = self.user_turn(instruction, input, context)
        return f"{self.system}\n{text}" if self.system else text

    def render_example(self, example: dict, chat: ChatRenderer | None = None) -> str:
        """The prompt for an example row (data/examples.py), as training, evaluation and serving
        all render it: a chat prompt takes a conversation's earlier turns as turns (`history`);
        `context` is what a knowledge base retrieved for it, if any."""
        history, retrieved = example.get("history"), example.get("context") or ""
        if self.format != "chat" or history is None:
            return self.render(example["instruction"], example.get("input") or "", chat, retrieved)
        system_text, turns = split_history(history)
        return self.render_turns(turns, example["instruction"], system_text, chat, retrieved)

    def messages_for(self, example: dict) -> list[dict[str, str]]:
        """An example as chat messages for a hosted model (a provider renders its own chat template):
        the system message, a conversation's earlier turns, then the user turn — the same parts,
        in the same order, that `render_example` puts through a local model's chat template."""
        history, retrieved = example.get("history"), example.get("context") or ""
        system = [{"role": "system", "content": self.system}] if self.system else []
        if self.format != "chat" or history is None:
            user = self.user_turn(example["instruction"], example.get("input") or "", retrieved)
            return system + [{"role": "user", "content": user}]
        system_text, turns = split_history(history)
        user = self.user_turn(example["instruction"], system_text, retrieved)
        return system + turns + [{"role": "user", "content": user}]

    def render_turns(self, history: list[dict[str, str]], instruction: str, input: str,
                     chat: ChatRenderer | None, context: str = "") -> str:
        """A chat prompt: the system message, earlier turns as given, then the user turn."""
        if chat is None:
            raise ChatTemplateError("a Prompt with format: chat renders through a model's chat template, and none was given")
        system = [{"role": "system", "content": self.system}] if self.system else []
        user = {"role": "user", "content": self.user_turn(instruction, input, context)}
        return chat.render(system + list(history) + [user])

    def user_turn(self, instruction: str, input: str = "", context: str = "") -> str:
        chosen = self.template_no_input if (not input and self.template_no_input) else self.template
        return render_template(chosen, {"instruction": instruction, "input": input, "context": context})

    def uses_context(self) -> bool:
        """Whether the template takes retrieved chunks ({context}): it needs a knowledge base."""
        return any(part == "context" and isinstance(part, Placeholder)
                   for template in (self.template, self.template_no_input) if template
                   for part in _parsed(template))

    def saved(self, chat: ChatRenderer | None = None) -> dict:
        """The form saved with artifacts (template.json): what serving and evaluation render with.
        A chat prompt saved with a tuned model carries the chat template it was tuned through."""
        saved = {"system": self.system, "template": self.template, "template_no_input": self.template_no_input}
        if self.format == "text":
            return {**saved, "template_hash": self.template_hash()}
        chat_template = chat.text if chat else None
        digest = text_sha256(chat_template) if chat_template is not None else None
        return {"format": "chat", **saved, "chat_template": chat_template, "template_hash": self.template_hash(digest)}

    @classmethod
    def from_saved(cls, saved: dict) -> "PromptSpec":
        fields = ("format", "system", "template", "template_no_input")
        return cls.model_validate({k: saved[k] for k in fields if saved.get(k) is not None})

    def template_hash(self, chat_template_sha256: str | None = None) -> str:
        """The prompt's identity. A chat prompt's covers the chat template it renders through
        (its sha256) when one is known: the Prompt alone has none, a tuned model's has."""
        if self.format == "text":
            canonical = "\x00".join([self.system or "", self.template, self.template_no_input or ""])
        else:  # JSON never holds a raw NUL, so no chat canonical form equals a text one
            canonical = json.dumps({"format": "chat", "system": self.system, "template": self.template,
                                    "template_no_input": self.template_no_input,
                                    "chat_template_sha256": chat_template_sha256}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()
