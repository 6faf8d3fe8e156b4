"""Test-only controllers: they do trivial, observable work so the reconciler can be tested
without ML dependencies. Each apply appends a line to <root>/calls.log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmops_engine import controllers
from llmops_engine.controllers.base import BaseController
from llmops_engine.errors import ControllerError


class RecordingController(BaseController):
    def __init__(self, kind: str, sleep_s: float = 0.0, fail: bool = False):
        self.kind = kind
        self.sleep_s = sleep_s
        self.fail = fail

    def apply(self, resource, ctx, staging: Path):
        log = ctx.root / "calls.log"
        with log.open("a") as handle:
            handle.write(f"start {resource.key}\n")
        if self.sleep_s:
            (ctx.root / f"running-{resource.kind}").write_text(str(os.getpid()))
            time.sleep(self.sleep_s)
        if self.fail:
            raise ControllerError(f"{resource.key} failed on purpose")
        upstream = {dep.name: ctx.outputs_of(f"{dep.kind}/{dep.name}") for dep in resource.references()}
        (staging / "result.json").write_text(json.dumps({"upstream": upstream}))
        with log.open("a") as handle:
            handle.write(f"done {resource.key}\n")
        return {"fingerprint": ctx.fingerprint(resource.key)[:12], "upstream": sorted(upstream)}


def install(kinds=("Prompt", "Dataset", "TuningJob", "Evaluation", "Deployment"), **options) -> None:
    for kind in kinds:
        controllers.register(kind, RecordingController(kind, **options.get(kind, {})))


def uninstall(kinds=("Prompt", "Dataset", "TuningJob", "Evaluation", "Deployment")) -> None:
    for kind in kinds:
        controllers.unregister(kind)
