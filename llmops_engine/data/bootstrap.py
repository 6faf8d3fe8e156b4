"""Get DVC-tracked raw data in place on a fresh clone, without importing DVC in-process.

For each DVC record the repository holds (`dvcrecords.py` finds and checks them; the demo has
`data.dvc`), every tracked file that is missing is recreated:
  1. by the builtin generator the file names in `meta: {llmops_generator: <name>}`, then
     checked byte for byte against the recorded md5 (a mismatch is an error, never
     silently accepted), and committed to the DVC cache (`dvc commit`, a subprocess);
  2. otherwise by `dvc pull <file>.dvc` from the configured remote.
Files already present are left alone (DVC and the planner's content hashes judge them).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..dvcrecords import DvcRecord, records
from ..errors import DataError


def ensure_raw_data(root: Path) -> list[str]:
    """Make every file a DVC record tracks present; return what was restored."""
    restored: list[str] = []
    for record in records(root):
        restored += _restore_record(root, record)
    return restored


def _restore_record(root: Path, record: DvcRecord) -> list[str]:
    restored = []
    for out in record.outs:
        target = root.resolve() / out.path
        if target.exists():
            continue
        if record.generator and out.md5:
            _generate(record.generator, target, out.md5, record.file)
            _commit_to_cache(root, record.file)
        else:
            _pull(root, record.file, target)
        restored.append(out.path)
    return restored


def _generate(generator: str, target: Path, md5: str, record: Path) -> None:
    from .demo import GENERATORS

    write = GENERATORS.get(generator)
    if write is None:
        raise DataError(f"{record.name}: unknown llmops_generator '{generator}'; known: {', '.join(GENERATORS)}")
    partial = target.with_name(f".{target.name}.partial")
    write(partial)
    actual = hashlib.md5(partial.read_bytes()).hexdigest()
    if actual != md5:
        partial.unlink()
        raise DataError(
            f"{record.name}: regenerated {target.name} has md5 {actual}, but the record says {md5}; "
            "the generator changed. Regenerate with scripts/make_demo_data.py and `dvc add` it again."
        )
    os.replace(partial, target)


def _commit_to_cache(root: Path, record: Path) -> None:
    """Put the regenerated file into DVC's cache, so `dvc status` sees the record satisfied."""
    if (root / ".dvc").is_dir():
        from .dvc_stage import run_dvc

        run_dvc(root, "commit", "--force", "--quiet", _relative(root, record))


def _pull(root: Path, record: Path, target: Path) -> None:
    from .dvc_stage import run_dvc

    done = run_dvc(root, "pull", _relative(root, record), check=False)
    if done.returncode != 0 or not target.exists():
        raise DataError(
            f"{target.relative_to(root)} (tracked by {record.name}) is missing and `dvc pull` could not fetch it:\n"
            f"{(done.stderr or done.stdout).strip()[-1500:]}\nConfigure a DVC remote or put the file in place."
        )


def _relative(root: Path, record: Path) -> str:
    return record.relative_to(root.resolve()).as_posix()
