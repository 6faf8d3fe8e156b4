"""The spec reference in Markdown, generated from the pydantic models so it cannot drift."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .specs import KINDS
from .specs.base import Metadata

DEFAULT_PATH = "docs/spec-reference.md"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + (" \\| null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"map[{_type_name(args[0])}, {_type_name(args[1])}]" if args else "map"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _default(info) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()
    else:
        value = info.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(see below)"
    return f"`{json.dumps(value)}`"


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _nested(arg)
    return found


def _model_section(model: type[BaseModel], title: str, seen: set) -> list[str]:
    lines = [f"#### `{title}`", ""]
    if model.__doc__ and model.__doc__.strip() and model not in (BaseModel,):
        first_paragraph = model.__doc__.strip().split("\n\n")[0]
        lines += [" ".join(line.strip() for line in first_paragraph.splitlines()), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    children: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        description = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {description} |")
        for child in _nested(info.annotation):
            if child not in seen:
                seen.add(child)
                children.append((f"{title}.{key}", child))
    lines.append("")
    for child_title, child in children:
        lines += _model_section(child, child_title, seen)
    return lines


def render_reference() -> str:
    lines = [
        "# Spec reference",
        "",
        "Generated from the pydantic models by `llmops schema --format markdown`; do not edit by hand.",
        "Every document has `apiVersion: llmops/v1`, a `kind`, `metadata` and `spec`. Unknown keys are errors.",
        "",
        "## metadata",
        "",
    ]
    lines += _model_section(Metadata, "metadata", set())
    for kind, model in KINDS.items():
        lines += [f"## {kind}", ""]
        lines += _model_section(model, "spec", {model})
    return "\n".join(lines).rstrip() + "\n"
