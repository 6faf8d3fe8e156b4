"""Test-only controllers: they do trivial, observable work so the reconciler can be tested
without ML dependencies. Each apply appends a line to <root>/calls.log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmops_engine.controllers import BUILTIN, BaseController, Registry
from llmops_engine.errors import ControllerError


class RecordingController(BaseController):
    """`hold`: after writing <root>/running-<kind>, wait until the test creates
    <root>/release-<kind> (a lock-race test decides when the step ends, no timing window)."""

    def __init__(self, kind: str, sleep_s: float = 0.0, fail: bool = False, hold: bool = False):
        self.kind = kind
        self.sleep_s = sleep_s
        self.fail = fail
        self.hold = hold

    def apply(self, resource, ctx, staging: Path):
        log = ctx.root / "calls.log"
        with log.open("a") as handle:
            handle.write(f"start {resource.key}\n")
        if self.sleep_s or self.hold:
            (ctx.root / f"running-{resource.kind}").write_text(str(os.getpid()))
            time.sleep(self.sleep_s)
        if self.hold:
            wait_for_file(ctx.root / f"release-{resource.kind}")
        if self.fail:
            raise ControllerError(f"{resource.key} failed on purpose")
        upstream = {dep.name: ctx.outputs_of(f"{dep.kind}/{dep.name}") for dep in resource.references()}
        (staging / "result.json").write_text(json.dumps({"upstream": upstream}))
        with log.open("a") as handle:
            handle.write(f"done {resource.key}\n")
        return {"fingerprint": ctx.fingerprint(resource.key)[:12], "upstream": sorted(upstream)}


def wait_for_file(path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise ControllerError(f"{path} never appeared")
        time.sleep(0.02)


KINDS = ("Prompt", "Dataset", "TuningJob", "Evaluation", "Deployment")


def registry(kinds=KINDS, builtin=BUILTIN, **options) -> Registry:
    """A controller registry with recording controllers for `kinds` (`builtin` ones for the rest)."""
    return Registry({kind: RecordingController(kind, **options.get(kind, {})) for kind in kinds}, builtin)
