"""Prompt controller: a prompt has no side effects; its output is the template identity."""

from __future__ import annotations

import json
from pathlib import Path

from ..specs.resource import Resource
from .base import ApplyContext, BaseController, Outputs


class PromptController(BaseController):
    kind = "Prompt"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        spec = resource.spec
        (staging / "template.json").write_text(json.dumps(spec.saved(), indent=2))
        return {"template_hash": spec.template_hash()}
