"""Which repository files a spec's path or glob names, confined to the repository.

Specs arrive in pull requests, so a path written in one must never make the engine read,
hash or report a file outside the repository: not through an absolute path, not through
`..`, and not through a match (a glob hit or the path itself) that is a symlink pointing
elsewhere. Validation (`specs/checks.py`), fingerprinting (`fingerprint.py`) and the data
readers (`data/sources.py`) all expand patterns here, so they cannot disagree about which
files a pattern names, and none of them can be talked out of the repository.

Globs follow pathlib: `*`, `?` and `[...]` within one path segment, `**` for any number of
directories (symlinked directories are not descended by `**`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath, PureWindowsPath

GLOB_CHARS = "*?["


def is_glob(pattern: str) -> bool:
    return any(char in pattern for char in GLOB_CHARS)


def pattern_problem(pattern: str) -> str | None:
    """Why a repo-relative path or glob is refused before anything is read; None if it is fine."""
    if not pattern.strip():
        return f"path '{pattern}' is empty"
    if "\x00" in pattern:
        return "path contains a NUL character"
    if PurePosixPath(pattern).is_absolute() or PureWindowsPath(pattern).anchor:
        return f"path '{pattern}' is absolute; write it relative to the repository root"
    if ".." in pattern.replace("\\", "/").split("/"):
        return f"path '{pattern}' contains '..'; write it from the repository root (paths may not leave the repository)"
    if PurePosixPath(pattern).parts.count("**") > 1:
        # Each extra '**' multiplies the directory walk; one already matches any depth.
        return f"path '{pattern}' uses '**' more than once; one '**' already matches any depth"
    return None


@dataclass(frozen=True)
class Matches:
    """The regular files a pattern names, or why the pattern is refused (then `files` is empty)."""

    files: tuple[Path, ...]
    problem: str | None = None


def excluding(files: Iterable[Path], folders: Sequence[Path]) -> list[Path]:
    """`files` without those under `folders`, compared resolved (a symlink into one is under it)."""
    skipped = [folder.resolve() for folder in folders]
    return [path for path in files if not any(path.resolve().is_relative_to(folder) for folder in skipped)]


def match_files(root: Path, pattern: str) -> Matches:
    """Sorted regular files under `root` named by `pattern`, each resolved and confined.

    Paths are returned as `root / relative` (not resolved), so their repository-relative
    names are the ones the spec wrote. Any match that resolves outside the repository —
    a symlinked file or directory — refuses the whole pattern rather than being skipped,
    so a spec author learns about it instead of silently reading less.
    """
    problem = pattern_problem(pattern)
    if problem:
        return Matches((), problem)
    try:
        candidates = sorted(root.glob(pattern)) if is_glob(pattern) else [root / pattern]
    except ValueError as exc:  # pathlib's word for a malformed glob (e.g. 'a**')
        return Matches((), f"path '{pattern}' is not a valid glob: {exc}")
    top = root.resolve()
    files: list[Path] = []
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # absent, dangling or looping symlink: names no file
            continue
        if not real.is_relative_to(top):
            shown = candidate.relative_to(root).as_posix()
            return Matches((), f"path '{pattern}' matches '{shown}', which resolves outside the repository "
                               "(a symlink?); only files inside the repository are read")
        if real.is_file():
            files.append(candidate)
    return Matches(tuple(files))


def pattern_matches(relative: str, pattern: str) -> bool:
    """Whether a repo-relative POSIX path is one the glob `pattern` would name (same rules as above)."""
    parts = PurePosixPath(relative).parts
    reached = {0}  # how many leading parts the globs so far can consume
    for glob in PurePosixPath(pattern).parts:
        if glob == "**":
            reached = set(range(min(reached), len(parts) + 1)) if reached else set()
        else:
            reached = {i + 1 for i in reached if i < len(parts) and fnmatchcase(parts[i], glob)}
    return len(parts) in reached


def one_file(root: Path, path: str, what: str, file_format: str, max_bytes: int) -> Path:
    """The one repository file `path` names (a spec's cases, questions or schema file): not a glob,
    confined like every match, at most `max_bytes`. Raises ValueError saying what is wrong."""
    if is_glob(path):
        raise ValueError(f"{what} '{path}' is a glob; name one {file_format} file")
    matches = match_files(root, path)
    if matches.problem:
        raise ValueError(matches.problem)
    if not matches.files:
        raise ValueError(f"{what} '{path}' does not exist in the repository")
    size = matches.files[0].stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} '{path}' is {size:,} bytes; the limit is {max_bytes:,}")
    return matches.files[0]
