"""The spec language: one pydantic model per kind, and the loader that builds them from YAML."""

from __future__ import annotations

from .base import API_VERSION, Metadata, Reference
from .dataset import DatasetSpec
from .deployment import DeploymentSpec
from .evaluation import EvaluationSpec
from .guardrail import GuardrailSpec
from .knowledge_base import KnowledgeBaseSpec
from .prompt import PromptSpec
from .provider import ProviderSpec
from .tuning import TuningJobSpec

KINDS = {cls.kind: cls for cls in (
    DatasetSpec, PromptSpec, KnowledgeBaseSpec, ProviderSpec, TuningJobSpec, EvaluationSpec, GuardrailSpec,
    DeploymentSpec,
)}

__all__ = ["API_VERSION", "KINDS", "Metadata", "Reference"]
