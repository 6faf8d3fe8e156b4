"""The controller registry: which controller reconciles which kind.

A `Registry` is handed to observation and execution (tests pass one holding their own
controllers; nothing global is mutated). Builtin controller modules are imported only when a
resource of their kind is observed or applied, so `plan` and `validate` never pay for torch,
Ray or Great Expectations.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from ..errors import NoControllerError
from .base import ApplyContext, BaseController, Controller, Outputs

BUILTIN = {
    "Prompt": "llmops_engine.controllers.prompt:PromptController",
    "Dataset": "llmops_engine.controllers.dataset:DatasetController",
    "KnowledgeBase": "llmops_engine.controllers.knowledge_base:KnowledgeBaseController",
    "Provider": "llmops_engine.controllers.provider:ProviderController",
    "TuningJob": "llmops_engine.controllers.tuning:TuningController",
    "Evaluation": "llmops_engine.controllers.evaluation:EvaluationController",
    "Guardrail": "llmops_engine.controllers.guardrail:GuardrailController",
    "Deployment": "llmops_engine.controllers.deployment:DeploymentController",
}


class Registry:
    """Controllers by kind: the given ones first, then the builtin ones (imported on first use)."""

    def __init__(self, controllers: Mapping[str, Controller] | None = None, builtin: Mapping[str, str] = BUILTIN):
        self._controllers: dict[str, Controller] = dict(controllers or {})
        self._builtin = dict(builtin)

    def controller_for(self, kind: str) -> Controller:
        if kind not in self._controllers:
            self._controllers[kind] = self._import(kind)
        return self._controllers[kind]

    def _import(self, kind: str) -> Controller:
        target = self._builtin.get(kind)
        if target is None:
            raise NoControllerError(f"no controller for kind {kind} yet")
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise NoControllerError(f"no controller for kind {kind} yet") from exc
            raise
        return getattr(module, attr)()


__all__ = ["ApplyContext", "BaseController", "Controller", "Outputs", "Registry"]
