"""JSON Schema of every kind, for editors (yaml-language-server) and `llmops schema`."""

from __future__ import annotations

import json

from .specs import API_VERSION, KINDS
from .specs.base import Metadata

DEFAULT_PATH = "schema/llmops.schema.json"


def build_schema() -> dict:
    defs: dict = {}
    branches = []
    for kind, model in KINDS.items():
        spec_schema = model.model_json_schema(ref_template="#/$defs/{model}", by_alias=True)
        defs.update(spec_schema.pop("$defs", {}))
        defs[model.__name__] = spec_schema
        branches.append(
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {"properties": {"spec": {"$ref": f"#/$defs/{model.__name__}"}}},
            }
        )
    meta = Metadata.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(meta.pop("$defs", {}))
    defs["Metadata"] = meta
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llmops spec",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"enum": list(KINDS)},
            "metadata": {"$ref": "#/$defs/Metadata"},
            "spec": {"type": "object"},
        },
        "allOf": branches,
        "$defs": dict(sorted(defs.items())),
    }


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=False) + "\n"
