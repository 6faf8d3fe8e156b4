"""Evaluation: score a model on a Dataset's eval split and gate promotion on thresholds."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from .base import FieldError, KindSpec, Reference, StrictModel, reference
from .provider import is_provider_ref, provider_ref
from .regexes import regex_problem
from .tuning import MODEL_REF, is_model_ref

METRICS = (
    "exact_match",
    "contains",
    "regex_match",
    "rouge_l",
    "bleu",
    "chrf",
    "eval_loss",
    "perplexity",
    "latency_p50_ms",
    "latency_p95_ms",
    "output_tokens_mean",
)
Metric = Literal[METRICS]  # type: ignore[valid-type]
Baseline = Literal["base", "champion"]
ROLES = ("candidate", "base", "champion")
VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$"
# A provider answers with text only: no token losses to score the expected answers with.
LOSS_METRICS = ("eval_loss", "perplexity")


class Threshold(StrictModel):
    metric: Metric
    min: float | None = None
    max: float | None = None
    min_delta_vs_baseline: float | None = Field(
        default=None, description="At least this much better than the baseline (lower is better for losses/latency)."
    )
    min_ratio_vs_baseline: float | None = Field(
        default=None, description="At least this many times as good as the baseline (1.0 = no worse)."
    )
    baseline: str | None = Field(
        default=None, description="Which baseline a relative bound uses: base, champion or a variant's name "
                                  "(default: every one in compare_to).",
    )

    @model_validator(mode="after")
    def _has_bound(self) -> "Threshold":
        bounds = (self.min, self.max, self.min_delta_vs_baseline, self.min_ratio_vs_baseline)
        if all(b is None for b in bounds):
            raise ValueError("give at least one of min, max, min_delta_vs_baseline, min_ratio_vs_baseline")
        return self

    def is_relative(self) -> bool:
        return self.min_delta_vs_baseline is not None or self.min_ratio_vs_baseline is not None


class Generation(StrictModel):
    max_new_tokens: PositiveInt = 64
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    batch_size: PositiveInt = 16


class MetricOptions(StrictModel):
    ignore_case: bool = True
    ignore_punctuation: bool = True
    normalize_whitespace: bool = True
    regex: str | None = Field(default=None, description="Pattern for regex_match (defaults to the expected text).")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None and (problem := regex_problem(value)):
            raise ValueError(problem)
        return value


class Regression(StrictModel):
    """A gate against forgetting: general knowledge the base model has, which tuning must keep."""

    dataset: str = Field(
        description="A Dataset (usually eval-only: split: {eval_fraction: 1.0}); its eval split is used."
    )
    thresholds: list[Threshold] = Field(
        default_factory=list, description="Judged on the regression set; relative bounds compare with the base model. "
                                          "None: the set is scored and reported (`metrics`), not gated.",
    )
    metrics: list[Metric] = Field(default_factory=list, description="Extra metrics to report (not gated).")

    @model_validator(mode="after")
    def _against_base(self) -> "Regression":
        if not self.thresholds and not self.metrics:
            raise FieldError(("thresholds", "give thresholds to gate on the regression set, or metrics to report on it"))
        for index, t in enumerate(self.thresholds):
            if t.baseline not in (None, "base"):
                message = f"regression thresholds compare with the base model, not '{t.baseline}'; drop 'baseline'"
                raise FieldError((f"thresholds.{index}.baseline", message))
        return self

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys([t.metric for t in self.thresholds] + list(self.metrics)))


class Variant(StrictModel):
    """Another system scored on the same examples and reported beside the candidate: the same
    or another model, another prompt, a knowledge base ("is fine-tuning worth it here?")."""

    name: str = Field(pattern=VARIANT_NAME, description="Its column in the report, e.g. base+rag.")
    model: str = Field(description="base (the candidate's base model), a TuningJob, a model ref (builtin:…, hf:…), "
                                   "or a provider's model (provider:<name>/<alias>).")
    prompt: str | None = Field(default=None, description="Default: the candidate's prompt (a TuningJob's: its own).")
    knowledge_base: str | None = Field(default=None, description="Retrieve chunks for the prompt's {context}.")

    @model_validator(mode="after")
    def _known_model(self) -> "Variant":
        if self.name in ROLES:
            raise FieldError(("name", f"'{self.name}' is taken by the evaluation itself; name the variant e.g. '{self.name}+rag'"))
        if ":" in self.model and not (is_model_ref(self.model) or is_provider_ref(self.model)):
            raise FieldError(("model", f"'{self.model}' is not base, a TuningJob name, a model ref or provider:<name>/<alias>"))
        return self

    def tuning_job(self) -> str | None:
        return None if self.model == "base" or is_model_ref(self.model) or is_provider_ref(self.model) else self.model

    def provider(self) -> str | None:
        named = provider_ref(self.model)
        return named[0] if named else None


class EvaluationSpec(KindSpec):
    kind: ClassVar[str] = "Evaluation"

    model: str = Field(description="A TuningJob name, base:<model ref> for an untuned base model, or "
                                   "provider:<name>/<alias> for a hosted model.")
    dataset: str
    prompt: str | None = Field(default=None, description="Only for base: and provider: models; tuned models use their own.")
    compare_to: list[Baseline] | Baseline | Literal["none"] = "base"
    thresholds: list[Threshold] = Field(min_length=1)
    metrics: list[Metric] = Field(default_factory=list, description="Extra metrics to report (not gated).")
    metric_options: MetricOptions = Field(default_factory=MetricOptions)
    generation: Generation = Field(default_factory=Generation)
    repeats: PositiveInt = 1
    aggregate: Literal["mean", "min"] = "mean"
    max_examples: PositiveInt | None = Field(default=None, description="Cap on examples scored (per dataset).")
    regression: Regression | None = Field(
        default=None,
        description="A second dataset scored for the candidate and the base; its thresholds join the gate.",
    )
    variants: list[Variant] = Field(
        default_factory=list, description="More systems scored on the same examples (and regression set), side by side."
    )
    gpus: float = Field(default=0, ge=0)
    cpus: int = Field(default=2, ge=1, le=64, description="CPUs of the evaluation task, and its torch threads.")

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluationSpec":
        import re

        if self.model.startswith("base:"):
            if not re.match(MODEL_REF, self.model.removeprefix("base:")):
                message = "base: models are written base:builtin:tiny-llama | base:hf:org/name | base:path:dir"
                raise FieldError(("model", message))
            if self.prompt is None:
                raise FieldError(("prompt", "an Evaluation of a base: model needs 'prompt' (tuned models bring their own)"))
        if self.is_provider_model():
            self._provider_candidate()
        self._provider_losses()
        baselines = set(self.baselines())
        variants = [v.name for v in self.variants]
        duplicate = next((i for i, name in enumerate(variants) if name in variants[:i]), None)
        if duplicate is not None:
            raise FieldError((f"variants.{duplicate}.name", f"variant name '{variants[duplicate]}' is used twice"))
        for index, t in enumerate(self.thresholds):
            if t.baseline is not None and t.baseline not in {"base", "champion", *variants}:
                message = f"baseline '{t.baseline}' is not base, champion or a variant ({', '.join(variants) or 'none'})"
                raise FieldError((f"thresholds.{index}.baseline", message))
            if t.is_relative() and t.baseline not in variants:
                wanted = t.baseline or (sorted(baselines)[0] if baselines else None)
                if wanted is None or wanted not in baselines:
                    message = f"threshold on {t.metric} is relative but compare_to has no '{wanted or 'baseline'}'"
                    raise FieldError((f"thresholds.{index}", message))
        if self.repeats > 1 and not self.generation.do_sample:
            raise FieldError(("repeats", "repeats > 1 only makes sense with generation.do_sample: true"))
        return self

    def _provider_candidate(self) -> None:
        if self.prompt is None:
            raise FieldError(("prompt", "an Evaluation of a provider: model needs 'prompt' (a hosted model brings none)"))
        if self.baselines():
            message = ("a provider model has no base model or champion to compare with; write compare_to: none and "
                       "name what to compare it with in variants (a TuningJob, a model ref, another provider model)")
            raise FieldError(("compare_to", message))
        if self.regression is not None:
            raise FieldError(("regression", "the regression set compares tuning with its base model; a provider "
                                            "model has none (score the set in a separate Evaluation)"))
        for index, variant in enumerate(self.variants):
            if variant.model == "base":
                raise FieldError((f"variants.{index}.model", "a provider model has no base model; name the variant's "
                                                             "model (a TuningJob, a model ref, a provider model)"))

    def _provider_losses(self) -> None:
        """eval_loss and perplexity need token losses, which a provider does not give."""
        asked = set(self.metric_names()) | (set(self.regression.metric_names()) if self.regression else set())
        losses = sorted(asked & set(LOSS_METRICS))
        if not losses:
            return
        need = f"{', '.join(losses)} need{'s' if len(losses) == 1 else ''}"
        if self.is_provider_model():
            raise FieldError(("model", f"{need} token losses, which a provider model does not "
                                       "give; score it with text metrics (rouge_l, exact_match, …)"))
        for index, variant in enumerate(self.variants):
            if is_provider_ref(variant.model):
                raise FieldError((f"variants.{index}.model", f"{need} token losses, which a "
                                                             "provider model does not give"))

    def is_provider_model(self) -> bool:
        return is_provider_ref(self.model)

    def baselines(self) -> list[str]:
        if self.compare_to == "none" or (self.is_provider_model() and "compare_to" not in self.model_fields_set):
            # A provider model has no base to compare with: unless the spec says otherwise, it has no baseline.
            return []
        return [self.compare_to] if isinstance(self.compare_to, str) else list(self.compare_to)

    def metric_names(self) -> list[str]:
        names = [t.metric for t in self.thresholds] + list(self.metrics)
        return list(dict.fromkeys(names))

    def resource_summary(self) -> str | None:
        return f"{self.gpus:g} GPU" if self.gpus else f"{self.cpus} CPU"

    def references(self) -> list[Reference]:
        model = None if self.model.startswith("base:") or self.is_provider_model() else self.model
        provider = provider_ref(self.model)
        return (
            reference("spec.model", "TuningJob", model)
            + reference("spec.model", "Provider", provider[0] if provider else None)
            + reference("spec.dataset", "Dataset", self.dataset)
            + reference("spec.prompt", "Prompt", self.prompt)
            + reference("spec.regression.dataset", "Dataset", self.regression.dataset if self.regression else None)
            + [ref for i, v in enumerate(self.variants) for ref in (
                reference(f"spec.variants.{i}.model", "TuningJob", v.tuning_job())
                + reference(f"spec.variants.{i}.model", "Provider", v.provider())
                + reference(f"spec.variants.{i}.prompt", "Prompt", v.prompt)
                + reference(f"spec.variants.{i}.knowledge_base", "KnowledgeBase", v.knowledge_base))]
        )
