"""Controller registry. Modules are imported only when a resource of their kind is applied,
so `plan` and `validate` never pay for torch, Ray or Great Expectations."""

from __future__ import annotations

import importlib

from ..errors import NoControllerError
from .base import ApplyContext, BaseController, Controller, Outputs

BUILTIN = {
    "Prompt": "llmops_engine.controllers.prompt:PromptController",
    "Dataset": "llmops_engine.controllers.dataset:DatasetController",
    "TuningJob": "llmops_engine.controllers.tuning:TuningController",
    "Evaluation": "llmops_engine.controllers.evaluation:EvaluationController",
    "Deployment": "llmops_engine.controllers.deployment:DeploymentController",
}

_registered: dict[str, Controller] = {}


def register(kind: str, controller: Controller) -> None:
    """Install a controller for a kind (tests use this for test-only controllers)."""
    _registered[kind] = controller


def unregister(kind: str) -> None:
    _registered.pop(kind, None)


def controller_for(kind: str) -> Controller:
    if kind in _registered:
        return _registered[kind]
    target = BUILTIN.get(kind)
    if target is None:
        raise NoControllerError(f"no controller for kind {kind} yet")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise NoControllerError(f"no controller for kind {kind} yet") from exc
        raise
    controller = getattr(module, attr)()
    _registered[kind] = controller
    return controller


__all__ = ["ApplyContext", "BaseController", "Controller", "Outputs", "controller_for", "register"]
