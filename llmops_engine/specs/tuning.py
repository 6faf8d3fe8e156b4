"""TuningJob: QLoRA / LoRA / full fine-tuning of a base model on a Dataset, via Ray Train."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from .base import FieldError, KindSpec, PathInput, Reference, StrictModel, check_custom_resources, custom_resources_field, reference

MODEL_REF = r"^(builtin:[a-z0-9-]+|hf:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|gguf:.+\.gguf|path:.+)$"
BUILTIN_MODELS = ("tiny-llama", "smollm2-135m-instruct")  # models/builtin.py BUILTIN_NAMES
GGUF_BUILTINS = ("smollm2-135m-instruct",)  # shipped as GGUF files (models/builtin.py PACKAGED_MODELS)


def is_model_ref(value: str) -> bool:
    """Whether a `model:` value names a base model (builtin:, hf:, gguf:, path:) rather than a resource."""
    return re.match(MODEL_REF, value) is not None


class Quantization(StrictModel):
    bits: Literal[4, 8] = 4
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


class Lora(StrictModel):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full beside the adapter (e.g. lm_head)."
    )


class Training(StrictModel):
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = Field(default=None, description="Stop after this many steps (overrides epochs).")
    learning_rate: PositiveFloat = 2e-4
    batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    max_seq_len: PositiveInt = 256
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 0.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    save_every_steps: PositiveInt = Field(default=50, description="Checkpoint interval (resume point).")
    seed: int = 42


class Resources(StrictModel):
    workers: PositiveInt = 1
    gpus_per_worker: NonNegativeFloat = 0
    cpus_per_worker: PositiveFloat = 1
    custom: dict[str, PositiveFloat] = custom_resources_field("training worker")

    @model_validator(mode="after")
    def _custom_names(self) -> "Resources":
        check_custom_resources(self.custom)
        return self

    def summary(self) -> str:
        each = f"{self.gpus_per_worker:g} GPU" if self.gpus_per_worker else f"{self.cpus_per_worker:g} CPU"
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} × {each}"


class TuningJobSpec(KindSpec):
    kind: ClassVar[str] = "TuningJob"
    env_inputs: ClassVar[tuple[str, ...]] = ("LLMOPS_MAX_STEPS",)

    base_model: str = Field(pattern=MODEL_REF, description="builtin:smollm2-135m-instruct | builtin:tiny-llama | gguf:file.gguf | hf:org/name | path:dir")
    dataset: str
    prompt: str
    method: Literal["qlora", "lora", "full"] = "qlora"
    quantization: Quantization | None = None
    lora: Lora = Field(default_factory=Lora)
    training: Training = Field(default_factory=Training)
    resources: Resources = Field(default_factory=Resources)
    export: list[Literal["adapter", "merged", "gguf"]] = Field(
        default_factory=lambda: ["adapter"],
        description="adapter: the LoRA adapter (or model/ for method full); merged: fp16 weights with the adapter "
                    "folded in; gguf: a Llama-family GGUF file for llama.cpp, verified against the merged model.",
    )
    # Left out of the dump when "f16" (the default), so jobs written before GGUF export keep their fingerprint.
    gguf_type: Literal["f16", "q8_0"] = Field(
        default="f16", exclude_if=lambda value: value == "f16",
        description="Tensor type of the gguf export: f16, or q8_0 (8-bit blocks, about half the size).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "TuningJobSpec":
        if self.base_model.startswith("builtin:"):
            name = self.base_model.removeprefix("builtin:")
            if name not in BUILTIN_MODELS:
                message = f"unknown builtin model '{name}'; available: {', '.join(BUILTIN_MODELS)}"
                raise FieldError(("base_model", message))
        if self.method == "qlora":
            quant = self.quantization or Quantization()
            if quant.bits != 4:
                message = "method qlora needs quantization.bits: 4 (use method: lora for 8-bit or none)"
                raise FieldError(("quantization.bits", message))
        elif self.method == "lora" and self.quantization is not None and self.quantization.bits == 4:
            message = "4-bit quantization with LoRA is QLoRA: write method: qlora (lora allows bits: 8)"
            raise FieldError(("quantization.bits", message))
        elif self.method == "full" and self.quantization is not None:
            message = "method full cannot train quantized weights; remove 'quantization' or use qlora"
            raise FieldError(("quantization", message))
        gpus = self.resources.gpus_per_worker
        if gpus > 1 and gpus != int(gpus):
            message = "resources.gpus_per_worker above 1 must be a whole number (fractions only below 1)"
            raise FieldError(("resources.gpus_per_worker", message))
        if "gguf_type" in self.model_fields_set and "gguf" not in self.export:
            raise FieldError(("gguf_type", "gguf_type applies to the gguf export; add gguf to export or remove gguf_type"))
        if "merged" in self.export and self.method == "full":
            raise FieldError(("export", "export 'merged' applies to adapters; a full fine-tune is already merged"))
        return self

    def effective_quantization(self) -> Quantization | None:
        if self.method == "qlora":
            return self.quantization or Quantization()
        return self.quantization if self.method == "lora" else None

    def references(self) -> list[Reference]:
        return reference("spec.dataset", "Dataset", self.dataset) + reference("spec.prompt", "Prompt", self.prompt)

    def path_inputs(self) -> list[PathInput]:
        kind, _, path = self.base_model.partition(":")
        if kind not in ("path", "gguf"):
            return []
        return [PathInput(path, ("base_model",), must_exist=kind == "gguf")]

    def resource_summary(self) -> str | None:
        return self.resources.summary()
