"""Dataset stages in DVC: write them into dvc.yaml, run them, read what dvc.lock recorded.

DVC is driven through its CLI (its `Repo` class is not a stable API), one command at a
time per repository (a file lock under .dvc/tmp), with analytics and update checks off.

Each Dataset is one stage:

    dataset-<name>:
      cmd: llmops data build <name>
      deps: [<raw files>, <the spec file>]
      params: [{llmops.params.yaml: [datasets.<name>]}]   # sha256 of the normalized spec
      outs: data/processed/<name>/{train,eval}.jsonl, validation.{json,md}  (persist: true)

`persist: true` stops DVC from deleting the outputs before the command runs; the command
itself writes to a temporary directory and swaps files in only after validation passes,
so a failing run leaves the last good data (and dvc.lock) as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import yaml

from ..errors import DVCError
from ..project import Project
from ..specs.resource import Resource
from .pipeline import OUTPUT_FILES
from .sources import source_files

DVC_YAML, DVC_LOCK, PARAMS_FILE = "dvc.yaml", "dvc.lock", "llmops.params.yaml"
PROCESSED_DIR = "data/processed"
STAGE_CMD = "llmops data build {name}"
_TIMEOUT_S = 1800


def stage_name(dataset: str) -> str:
    return f"dataset-{dataset}"


def processed_dir(root: Path, dataset: str) -> Path:
    return root / PROCESSED_DIR / dataset


def failure_dir(project: Project, dataset: str) -> Path:
    """Where a failed build leaves its reports (the published ones stay untouched)."""
    return project.state_dir / "data" / dataset / "failed"


def dvc_env(secrets: Sequence[str] = ()) -> dict[str, str]:
    """The environment of DVC and the stage it runs: without the secrets specs name (a database
    URL: the stage reads the extract, never the database)."""
    # The stage cmd says `llmops`: find the one installed beside the interpreter running the engine.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    kept = {name: value for name, value in os.environ.items() if name not in secrets}
    return {**kept, "PATH": path, "DVC_NO_ANALYTICS": "1"}


def run_dvc(root: Path, *args: str, check: bool = True, secrets: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """One DVC CLI call, serialized with every other engine DVC call on this repo."""
    from filelock import FileLock

    _check_rwlock(root)
    # Outside the repo: `dvc init` refuses a repo whose .dvc/ already exists.
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"llmops-dvc-{key}.lock"
    command = [sys.executable, "-m", "dvc", *args]
    with FileLock(str(lock_path)):
        try:
            done = subprocess.run(command, cwd=root, env=dvc_env(secrets), capture_output=True, text=True,
                                  timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise DVCError(f"`dvc {' '.join(args)}` did not finish in {_TIMEOUT_S}s") from exc
    if check and done.returncode != 0:
        raise DVCError(_failure_text(args, done))
    return done


def _failure_text(args: tuple[str, ...], done: subprocess.CompletedProcess) -> str:
    output = command_output(done)
    return f"`dvc {' '.join(args)}` failed (exit {done.returncode}):\n{output[-3000:]}{lock_hint(output)}"


def command_output(done: subprocess.CompletedProcess) -> str:
    return "\n".join(part.strip() for part in (done.stdout, done.stderr) if part and part.strip())


def lock_hint(output: str) -> str:
    """Advice for DVC's "busy" error, which a killed DVC process can leave behind."""
    if "is busy" not in output and "rwlock" not in output.lower():
        return ""
    return ("\nAnother DVC command holds this repository's lock (.dvc/tmp/rwlock). If no DVC command is "
            "running (a killed run can leave its entry behind), delete .dvc/tmp/rwlock and try again.")


def _check_rwlock(root: Path) -> None:
    """DVC drops entries of dead processes itself; a half-written file it cannot read."""
    path = root / ".dvc" / "tmp" / "rwlock"
    if not path.is_file():
        return
    try:
        json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError) as exc:
        raise DVCError(
            f"{path} is corrupt (a DVC process was probably killed while writing it). "
            "If no DVC command is running, delete it and try again."
        ) from exc


def ensure_repo(root: Path) -> None:
    """`dvc init` a repository that has no .dvc yet, with analytics and update checks off."""
    if (root / ".dvc").is_dir():
        return
    run_dvc(root, "init", "--quiet", *([] if (root / ".git").exists() else ["--no-scm"]))
    run_dvc(root, "config", "core.analytics", "false")
    run_dvc(root, "config", "core.check_update", "false")


# --- dvc.yaml ------------------------------------------------------------------------


def stage_definition(root: Path, resource: Resource, extract: Path | None = None) -> dict:
    """`extract`: a database source's extract (the stage's data dep, under the state directory)."""
    out_dir = f"{PROCESSED_DIR}/{resource.name}"
    data = [extract.relative_to(root).as_posix()] if extract else raw_deps(root, resource.spec)
    return {
        "cmd": STAGE_CMD.format(name=resource.name),
        "deps": [*data, resource.file],
        "params": [{PARAMS_FILE: [f"datasets.{resource.name}"]}],
        "outs": [{f"{out_dir}/{name}": {"persist": True}} for name in OUTPUT_FILES],
    }


def raw_deps(root: Path, spec) -> list[str]:
    """The files the source matches now (a path source's glob, the files an sql source's SQL
    names). DVC has no glob deps; a file added to a glob later is seen by `llmops plan` at once
    and by `dvc status` after the next apply rewrites this stage (a directory dep would be stale
    forever when the outputs live inside it)."""
    return [p.relative_to(root).as_posix() for p in source_files(root, spec.source, spec.sql_patterns())]


def spec_params(resource: Resource, extract_sha256: str | None = None) -> dict:
    """The stage's params: the spec's hash, and which extract a database source builds from
    (`llmops data build` reads it here)."""
    from ..fingerprint import canonical_json

    digest = hashlib.sha256(canonical_json(resource.normalized_spec()).encode()).hexdigest()
    return {"spec_sha256": digest} | ({"extract": extract_sha256} if extract_sha256 else {})


def stage_extract(root: Path, dataset: str) -> str | None:
    """The extract the stage's params name (a database source), or None."""
    path = root / PARAMS_FILE
    document = (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
    return ((document.get("datasets") or {}).get(dataset) or {}).get("extract")


def sync_stage(root: Path, resource: Resource, extract: Path | None = None, extract_sha256: str | None = None) -> bool:
    """Write this Dataset's stage and params; True if either file changed."""
    definition = stage_definition(root, resource, extract)
    changed = _update_yaml(root / DVC_YAML, ("stages", stage_name(resource.name)), definition)
    changed |= _update_yaml(root / PARAMS_FILE, ("datasets", resource.name), spec_params(resource, extract_sha256))
    return changed


def remove_stage(root: Path, dataset: str) -> None:
    _update_yaml(root / DVC_YAML, ("stages", stage_name(dataset)), None)
    _update_yaml(root / PARAMS_FILE, ("datasets", dataset), None)


def _update_yaml(path: Path, keys: tuple[str, str], value: dict | None) -> bool:
    from ..state.artifacts import atomic_write

    document = yaml.safe_load(path.read_text()) if path.is_file() else None
    document = document or {}
    section = document.setdefault(keys[0], {}) or {}
    document[keys[0]] = section
    if section.get(keys[1]) == value or (value is None and keys[1] not in section):
        return False
    if value is None:
        section.pop(keys[1])
    else:
        section[keys[1]] = value
    atomic_write(path, yaml.safe_dump(document, sort_keys=False))
    return True


# --- running and reading ----------------------------------------------------------


def repro(root: Path, dataset: str, secrets: Sequence[str] = ()) -> subprocess.CompletedProcess:
    return run_dvc(root, "repro", "--single-item", stage_name(dataset), check=False, secrets=secrets)


def stage_status(root: Path, dataset: str) -> list:
    """`dvc status` of the stage: [] when up to date, else DVC's list of what changed."""
    done = run_dvc(root, "status", "--json", stage_name(dataset))
    status = json.loads(done.stdout) if done.stdout.strip() else {}
    return status.get(stage_name(dataset), [])


def locked_md5(root: Path, dataset: str) -> dict[str, str]:
    """Output path → md5 as dvc.lock recorded it for this stage."""
    lock = yaml.safe_load((root / DVC_LOCK).read_text()) if (root / DVC_LOCK).is_file() else {}
    stage = ((lock or {}).get("stages") or {}).get(stage_name(dataset))
    if not stage:
        raise DVCError(f"dvc.lock has no stage {stage_name(dataset)}; run `dvc repro {stage_name(dataset)}`")
    return {out["path"]: out["md5"] for out in stage.get("outs", [])}


def read_stages(root: Path) -> dict:
    path = root / DVC_YAML
    return ((yaml.safe_load(path.read_text()) if path.is_file() else None) or {}).get("stages") or {}
