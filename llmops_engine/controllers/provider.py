"""Provider controller: check a hosted endpoint's pinned models, and watch them from `plan`.

Apply asks the provider's `/v1/models` and refuses an alias whose pinned upstream id is not
listed, so neither a Deployment nor an Evaluation is switched to a model the provider does not
serve. `observe` (every `plan` and `status`) asks the same question, bounded to a few seconds
and cached briefly under the state dir: a pinned model the provider stopped listing is drift on
the Provider and on each Deployment serving it, before the provider turns it off. An unreachable
provider, or a key not in this environment (a CI plan job), is reported, never a failed plan.
Plain HTTP (httpx) only: `plan` imports this module (the listing itself: providers/catalog.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..project import Project
from ..providers.catalog import require_listed, unlisted_drift, upstream_of, where
from ..providers.client import Upstream
from ..specs.resource import Resource
from ..state.records import ResourceRecord
from .base import ApplyContext, BaseController, Outputs


class ProviderController(BaseController):
    kind = "Provider"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        spec = resource.spec
        upstreams = [upstream_of(f"provider:{resource.name}/{alias}", ctx.resources) for alias in spec.models]
        listed = require_listed(upstreams)
        (staging / "models.json").write_text(json.dumps({"pinned": spec.models, "listed": listed}, indent=2))
        pinned = ", ".join(f"{alias} → {model}" for alias, model in spec.models.items())
        ctx.report(f"{resource.key}: {where(spec.base_url)} lists {len(listed)} models, every pinned one among them ({pinned})")
        return {"base_url": spec.base_url, "models": dict(spec.models), "listed": len(listed)}

    def observe(self, record: ResourceRecord, project: Project) -> str | None:
        spec = record.spec
        upstreams = [Upstream(record.name, alias, spec["base_url"], model, spec.get("api_key_env"))
                     for alias, model in spec["models"].items()]
        return unlisted_drift(upstreams, project)
