"""Dataset controller: one DVC stage per Dataset, validated by Great Expectations.

apply = make sure the raw data is there → write the stage into dvc.yaml → `dvc repro`
it (DVC skips it when nothing changed) → copy the processed files and reports into
staging → return row counts and the md5 of each split as dvc.lock recorded it. A database
source's stage builds from the extract the plan observed (data/extracts.py), named in the
stage's params; the stage's process gets no secret a spec names (it never sees the database).

A failed validation raises ValidationFailed with each failed rule; the stage's command
never replaced the previous processed files, and the reconciler discards staging, so the
last good data stays published and downstream resources are not touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..data import dvc_stage
from ..data.bootstrap import ensure_raw_data
from ..data.extracts import NOT_EXTRACTED, extract_dir, extract_path, input_key
from ..data.extracts import prune as prune_extracts
from ..data.pipeline import EVAL, OUTPUT_FILES, REPORT_JSON, REPORT_MD, TRAIN
from ..data.reports import failure_message
from ..errors import DataError, DVCError, ValidationFailed
from ..specs.resource import Resource
from ..state.records import ResourceRecord
from .base import ApplyContext, BaseController, Outputs


class DatasetController(BaseController):
    kind = "Dataset"

    def apply(self, resource: Resource, ctx: ApplyContext, staging: Path) -> Outputs:
        root, name = ctx.project.root, resource.name
        dvc_stage.ensure_repo(root)
        for path in ensure_raw_data(root):
            ctx.report(f"Dataset {name}: restored raw file {path}")
        extract_sha256 = _planned_extract(resource, ctx)
        extract = extract_path(ctx.project.state_dir, name, extract_sha256) if extract_sha256 else None
        dvc_stage.sync_stage(root, resource, extract, extract_sha256)
        failures = dvc_stage.failure_dir(ctx.project, name)
        shutil.rmtree(failures, ignore_errors=True)
        ctx.report(f"Dataset {name}: dvc repro {dvc_stage.stage_name(name)}")
        secrets = sorted({env for other in ctx.resources.values() for env in other.spec.secret_env()})
        done = dvc_stage.repro(root, name, secrets)
        if done.returncode != 0:
            raise _stage_error(name, done, failures)
        outputs = _publish(root, name, staging)
        if extract_sha256:
            prune_extracts(ctx.project.state_dir, name, keep={extract_sha256})
        return outputs | ({"extract": extract_sha256} if extract_sha256 else {})

    def delete(self, record: ResourceRecord, ctx: ApplyContext) -> None:
        root = ctx.project.root
        if dvc_stage.stage_name(record.name) in (dvc_stage.read_stages(root)):
            dvc_stage.run_dvc(root, "remove", "--outs", dvc_stage.stage_name(record.name))
        dvc_stage.remove_stage(root, record.name)
        prune_extracts(ctx.project.state_dir, record.name, keep=set())


def _planned_extract(resource: Resource, ctx: ApplyContext) -> str | None:
    """The extract this apply's plan observed (a database source), which the stage must build."""
    if resource.spec.source.kind() != "database":
        return None
    sha256 = ctx.inputs.get(resource.key, {}).get(input_key(resource))
    if not sha256 or sha256 == NOT_EXTRACTED or not extract_path(ctx.project.state_dir, resource.name, sha256).is_file():
        raise DataError(f"Dataset {resource.name}: the extract the plan observed ({sha256 or 'none'}) is not in "
                        f"{extract_dir(ctx.project.state_dir, resource.name)}; run llmops plan/apply again")
    return sha256


def _stage_error(name: str, done, failures: Path) -> Exception:
    report = failures / REPORT_JSON
    if report.is_file():
        return ValidationFailed(failure_message(name, json.loads(report.read_text()), failures / REPORT_MD))
    output = dvc_stage.command_output(done)
    hint = dvc_stage.lock_hint(output)
    error = DVCError if hint else DataError
    return error(f"Dataset {name}: the DVC stage {dvc_stage.stage_name(name)} failed:\n{output[-3000:]}{hint}")


def _publish(root: Path, name: str, staging: Path) -> Outputs:
    source = dvc_stage.processed_dir(root, name)
    locked = dvc_stage.locked_md5(root, name)
    hashes = {}
    for file_name in OUTPUT_FILES:
        shutil.copy2(source / file_name, staging / file_name)
        relative = f"{dvc_stage.PROCESSED_DIR}/{name}/{file_name}"
        actual = hashlib.md5((staging / file_name).read_bytes()).hexdigest()
        if locked.get(relative) != actual:
            raise DVCError(f"{relative} does not match dvc.lock (md5 {actual} vs {locked.get(relative)}); "
                           f"run `dvc status` and `dvc repro {dvc_stage.stage_name(name)}`")
        hashes[file_name] = actual
    rows = json.loads((staging / REPORT_JSON).read_text())["rows"]
    return {
        "train_rows": rows["train"],
        "eval_rows": rows["eval"],
        "raw_rows": rows["raw"],
        "content_hash": {"train": hashes[TRAIN], "eval": hashes[EVAL]},
        "dvc_stage": dvc_stage.stage_name(name),
        "files": list(OUTPUT_FILES),
    }
