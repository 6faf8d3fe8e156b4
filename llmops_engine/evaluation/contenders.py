"""Which models an Evaluation scores: the candidate, its baselines (base, champion) and variants.

Every contender is rendered with one template so that the comparison is fair: the
candidate's own (a tuned model's template.json, or the spec's Prompt for a base: model),
except the champion, which is asked the way it was tuned to be asked, and a variant, which
is asked with its own Prompt when it names one (and retrieves {context} from its knowledge base).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..controllers.base import ApplyContext
from ..errors import EvaluationError
from ..specs.resource import Resource

TEMPLATE_KEYS = ("format", "system", "template", "template_no_input", "chat_template")


@dataclass(frozen=True)
class Contender:
    role: str  # candidate | base | champion | a variant's name
    label: str  # TuningJob fingerprint, or the base model ref
    template: dict  # TEMPLATE_KEYS, as in template.json (a chat prompt's carries its chat template)
    template_hash: str
    model_dir: str | None = None  # a TuningJob artifact dir ...
    base_ref: str | None = None  # ... or an untuned base model (builtin:, hf:, path:)
    store_url: str | None = None  # where a worker without model_dir fetches it (by label = fingerprint)
    knowledge: dict | None = None  # a knowledge base's published index (controllers/knowledge_base.published_index)
    upstream: dict | None = None  # ... or a provider's model (providers.client.Upstream), asked over HTTP


def provider_label(upstream) -> str:
    """A provider model's identity in gates and reports: its ref and the upstream id it is pinned to
    (what a Deployment checks its gate's result against)."""
    return f"{upstream.label}@{upstream.model}"


def candidate(resource: Resource, ctx: ApplyContext) -> Contender:
    spec = resource.spec
    if spec.is_provider_model():
        prompt = ctx.resources[f"Prompt/{spec.prompt}"].spec
        return _hosted("candidate", spec.model, prompt.saved(), prompt.template_hash(), ctx)
    if spec.model.startswith("base:"):
        prompt = ctx.resources[f"Prompt/{spec.prompt}"].spec
        template = prompt.saved()
        ref = _absolute_ref(spec.model.removeprefix("base:"), ctx)
        return Contender("candidate", spec.model, template, prompt.template_hash(), base_ref=ref)
    key = f"TuningJob/{spec.model}"
    return _trained("candidate", ctx.fingerprint(key), ctx.artifact_dir(key), ctx.store.url)


def baselines(resource: Resource, ctx: ApplyContext, cand: Contender) -> tuple[list[Contender], dict[str, str]]:
    """The baselines to score beside the candidate, and those skipped (name -> why)."""
    found, skipped = [], {}
    for name in resource.spec.baselines():
        if name == "base":
            found.append(base_of(cand, ctx))
            continue
        champion = live_champion(resource.name, ctx)
        if champion is None:
            skipped[name] = "no live deployment uses this gate yet"
        elif champion.label == cand.label:
            skipped[name] = "the candidate is already the live champion"
        else:
            found.append(champion)
    return found, skipped


def variants(resource: Resource, ctx: ApplyContext, cand: Contender) -> list[Contender]:
    """The spec's variants as contenders, in spec order."""
    from ..controllers.knowledge_base import published_index
    from ..specs.tuning import is_model_ref

    found = []
    for variant in resource.spec.variants:
        if variant.model == "base":
            contender = replace(base_of(cand, ctx), role=variant.name)
        elif variant.provider() is not None:
            contender = _hosted(variant.name, variant.model, {**cand.template, "chat_template": None},
                                cand.template_hash, ctx)
        elif is_model_ref(variant.model):
            # Another model: asked with the candidate's prompt, through its own chat template.
            ref = _absolute_ref(variant.model, ctx)
            template = {**cand.template, "chat_template": None}
            contender = Contender(variant.name, f"base:{ref}", template, cand.template_hash, base_ref=ref)
        else:
            key = f"TuningJob/{variant.model}"
            contender = _trained(variant.name, ctx.fingerprint(key), ctx.artifact_dir(key), ctx.store.url)
        if variant.prompt is not None:
            prompt = ctx.resources[f"Prompt/{variant.prompt}"].spec
            chat_template = contender.template.get("chat_template") if prompt.format == "chat" else None
            template = {**prompt.saved(), "chat_template": chat_template}
            contender = replace(contender, template={k: template.get(k) for k in TEMPLATE_KEYS},
                                template_hash=prompt.template_hash())
        if variant.knowledge_base is not None:
            contender = replace(contender, knowledge=published_index(variant.knowledge_base, ctx))
        found.append(contender)
    return found


def live_champion(gate: str, ctx: ApplyContext) -> Contender | None:
    """The model version served by the newest ready Deployment gated by this Evaluation."""
    serving = [
        r for r in ctx.records.values()
        if r.kind == "Deployment" and r.status == "ready" and r.spec.get("gate") == gate
        and r.outputs.get("model_fingerprint")
    ]
    if not serving:
        return None
    record = max(serving, key=lambda r: r.applied_at)
    fingerprint = record.outputs["model_fingerprint"]
    model_dir = ctx.store.local_path(fingerprint)
    if not model_dir.is_dir():
        raise EvaluationError(
            f"{record.key} serves model {fingerprint[:12]}, but its artifacts are not in the store "
            f"({model_dir}); restore the store or use compare_to: base"
        )
    return _trained("champion", fingerprint, model_dir, ctx.store.url)


def _trained(role: str, fingerprint: str, model_dir: Path, store_url: str) -> Contender:
    try:
        template = json.loads((model_dir / "template.json").read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"model {fingerprint[:12]} has no readable template.json in {model_dir}") from exc
    if not isinstance(template, dict) or not template.get("template"):
        raise EvaluationError(f"{model_dir / 'template.json'} has no 'template'; re-run its TuningJob")
    return Contender(
        role, fingerprint, {k: template.get(k) for k in TEMPLATE_KEYS}, template.get("template_hash", ""),
        model_dir=str(model_dir), store_url=store_url,
    )


def _hosted(role: str, ref: str, template: dict, template_hash: str, ctx: ApplyContext) -> Contender:
    """A provider's model, asked over HTTP with `template` rendered as chat messages."""
    from ..providers.catalog import upstream_of

    upstream = upstream_of(ref, ctx.resources)
    return Contender(role, provider_label(upstream), {k: template.get(k) for k in TEMPLATE_KEYS}, template_hash,
                     upstream=upstream.to_json())


def base_of(cand: Contender, ctx: ApplyContext) -> Contender:
    """The untuned base model, asked with the candidate's template (a chat prompt through the
    base's own chat template, which is the one the candidate was tuned through)."""
    if cand.base_ref is not None:
        ref = cand.base_ref
    else:
        try:
            ref = json.loads(Path(cand.model_dir, "model.json").read_text())["base_model"]
        except (OSError, ValueError, KeyError) as exc:
            raise EvaluationError(f"cannot tell the base model of {cand.label[:12]}: no model.json") from exc
        ref = _absolute_ref(ref, ctx)
    return Contender("base", f"base:{ref}", cand.template, cand.template_hash, base_ref=ref)


def _absolute_ref(ref: str, ctx: ApplyContext) -> str:
    # Ray workers do not run in the project root: make path: refs absolute.
    if ref.startswith("path:") and not Path(ref.removeprefix("path:")).is_absolute():
        return "path:" + str(ctx.root / ref.removeprefix("path:"))
    return ref
