"""YAML → typed resources, with every problem located at file:line:col.

PyYAML's composer gives each node a start mark; we build plain Python values ourselves
from the node tree so that every key path keeps its position, and so that only the
standard YAML tags are accepted (no object construction, whatever the input says).

Specs arrive in pull requests, so a hostile one must fail as a located error in bounded
time and memory: files are capped in size (`max_spec_bytes`), nesting is capped in depth
(PyYAML's composer recurses once per level), aliases may copy only so many nodes (a
400-byte alias bomb otherwise expands to gigabytes) and may not contain themselves, and a
spec file that is a symlink out of the repository is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError, SpecIssue
from . import KINDS
from .base import API_VERSION, FieldError, Metadata
from .regexes import per_file_budget
from .resource import Resource

SAFE_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}
ENVELOPE_KEYS = ("apiVersion", "kind", "metadata", "spec")
MAX_SPEC_BYTES = 1 << 20  # default of llmops.yaml's max_spec_bytes; the largest shipped spec is ~2 KB
MAX_DEPTH = 64  # nesting levels, aliases expanded; real specs use fewer than 10
MAX_NODES = 20_000  # YAML values per file (~1 s to compose); the shipped specs hold ~300 in all
MAX_ALIAS_COPIES = 10_000  # nodes that aliases may copy per file; sharing a list of transforms takes tens
MAX_ISSUES_PER_FILE = 50  # more would bury the first mistake (and a hostile file can have thousands)
_SHOWN_CHARS = 60


class _SpecComposer(yaml.SafeLoader):
    """PyYAML's safe composer, refusing nesting deeper than MAX_DEPTH before it can exhaust
    Python's recursion limit (it recurses once per level), and more than MAX_NODES values
    (pure-Python composing costs ~20 µs and ~1 KB per value)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        self._nodes += 1
        if self._depth >= MAX_DEPTH or self._nodes > MAX_NODES:
            too_deep = f"nesting deeper than {MAX_DEPTH} levels; specs are shallow"
            too_many = f"more than {MAX_NODES:,} values in one file; split it into smaller files"
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, too_deep if self._depth >= MAX_DEPTH else too_many, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    """Stops building a document that cannot be expanded safely; caught in read_documents."""

    def __init__(self, position: tuple[int, int], path: tuple, message: str):
        super().__init__(message)
        self.position, self.path, self.message = position, path, message


@dataclass
class _Document:
    file: str
    value: Any
    positions: dict[tuple, tuple[int, int]]


class _Builder:
    """Turns composed YAML nodes into Python values while recording positions.

    An alias is the very node its anchor composed, so a node met twice is an alias copy
    (counted against MAX_ALIAS_COPIES) and a node met inside itself is a recursive anchor.
    One builder serves a whole file, so the copy budget is per file.
    """

    def __init__(self, file: str, issues: list[SpecIssue]):
        self.file = file
        self.issues = issues
        self.positions: dict[tuple, tuple[int, int]] = {}
        self._scalars = yaml.SafeLoader("")
        self._built: set[int] = set()
        self._open: set[int] = set()
        self._copies = 0
        self._copy: tuple | None = None  # (path, position) of the alias being expanded

    def document(self, node: yaml.Node) -> Any:
        self.positions = {}
        return self.build(node)

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        starts_copy = self._admit(node, path)
        try:
            self.positions.setdefault(path, _pos(node))
            if node.tag not in SAFE_TAGS:
                self._issue(node, path, f"YAML tag '{_shown(node.tag)}' is not allowed; specs are plain data")
                return None
            if isinstance(node, yaml.ScalarNode):
                return self._scalar(node, path)
            self._open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            finally:
                self._open.discard(id(node))
        finally:
            if starts_copy:
                self._copy = None

    def _admit(self, node: yaml.Node, path: tuple) -> bool:
        """Refuse a node that contains itself, nests too deep or exceeds the copy budget;
        return whether it starts an alias copy."""
        if id(node) in self._open:
            self._refuse(path, "this alias refers to an anchor that contains it; specs must be finite, "
                               "write the values out")
        if len(path) > MAX_DEPTH:
            self._refuse(path, f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded; specs are shallow")
        if id(node) not in self._built:
            self._built.add(id(node))
            return False
        self._copies += 1
        if self._copies > MAX_ALIAS_COPIES:
            self._refuse(path, f"aliases expand to more than {MAX_ALIAS_COPIES:,} copied values (an alias bomb?); "
                               "write the values out or alias less")
        starts_copy = self._copy is None
        if starts_copy:
            self._copy = (path, self._alias_position(path))
        return starts_copy

    def _refuse(self, path: tuple, message: str) -> None:
        """Blame the alias being expanded (the outermost one, where the spec author wrote it)."""
        at, position = self._copy or (path, self._alias_position(path))
        raise _Refused(position, at, message)

    def _alias_position(self, path: tuple) -> tuple[int, int]:
        # The composer keeps no position for an alias; before its value is built, the
        # nearest recorded position is its key's (or, in a list, the list's).
        return _nearest(self.positions, path)

    def _scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        try:
            return self._scalars.construct_object(node)
        except ValueError as exc:  # e.g. a date like 2024-13-45, or an int past Python's digit limit
            self._issue(node, path, f"cannot read value '{_shown(node.value)}': {exc}")
            return None

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._issue(key_node, path, "YAML merge keys ('<<') are not supported; write keys out")
                continue
            key = self.build(key_node, path + ("<key>",)) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                got = _shown(repr(key)) if key is not None else f"a {key_node.id}"
                self._issue(key_node, path, f"keys must be strings, got {got}")
                continue
            if key in result:
                self._issue(key_node, path + (key,), f"duplicate key '{key}'")
            self.positions[path + (key,)] = _pos(key_node)
            result[key] = self.build(value_node, path + (key,))
            self.positions[path + (key,)] = _pos(key_node)
        return result

    def _issue(self, node: yaml.Node, path: tuple, message: str) -> None:
        line, col = _pos(node)
        self.issues.append(SpecIssue(self.file, line, col, _dotted(path), message))


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path if p != "<key>")


def _shown(text: str) -> str:
    """A value quoted in a message, cut short: a hostile spec must not make the error huge."""
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def read_documents(
    path: Path, display: str, issues: list[SpecIssue], max_bytes: int = MAX_SPEC_BYTES
) -> list[_Document]:
    text = _read_capped(path, display, issues, max_bytes)
    if text is None:
        return []
    documents = []
    builder = _Builder(display, issues)
    try:
        for node in yaml.compose_all(text, Loader=_SpecComposer):
            if node is None:
                continue
            documents.append(_Document(display, builder.document(node), builder.positions))
    except _Refused as refused:
        line, col = refused.position
        issues.append(SpecIssue(display, line, col, _dotted(refused.path), refused.message))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(SpecIssue(display, line, col, "", f"invalid YAML: {problem}"))
    return documents


def _read_capped(path: Path, display: str, issues: list[SpecIssue], max_bytes: int) -> str | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            size = path.stat().st_size
            issues.append(SpecIssue(display, 1, 1, "", f"spec file is {size:,} bytes, over the limit of {max_bytes:,}; "
                                    "split it into smaller files, or raise max_spec_bytes in llmops.yaml"))
            return None
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(SpecIssue(display, 1, 1, "", f"cannot read file: {exc}"))
        return None


def parse_document(doc: _Document, issues: list[SpecIssue]) -> Resource | None:
    """Validate one document's envelope and spec; append issues, return None on any."""
    here = len(issues)
    value = doc.value

    def issue(path: tuple, message: str) -> None:
        line, col = _nearest(doc.positions, path)
        issues.append(SpecIssue(doc.file, line, col, _dotted(path), message))

    if not isinstance(value, dict):
        issue((), "each YAML document must be a mapping with apiVersion, kind, metadata and spec")
        return None
    for key in value:
        if key not in ENVELOPE_KEYS:
            issue((key,), _unknown_key(key, ENVELOPE_KEYS))
    if value.get("apiVersion") != API_VERSION:
        issue(("apiVersion",), f"apiVersion must be '{API_VERSION}' (got {value.get('apiVersion')!r})")
    kind = value.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        hint = get_close_matches(str(kind), KINDS, n=1)
        suggestion = f"did you mean '{hint[0]}'?" if hint else f"one of: {', '.join(KINDS)}"
        issue(("kind",), f"unknown kind {kind!r}; {suggestion}")
    metadata = _validate(Metadata, value.get("metadata"), ("metadata",), issue)
    spec = _validate(model, value.get("spec"), ("spec",), issue) if model else None
    if len(issues) > here or metadata is None or spec is None:
        return None
    line, _ = doc.positions.get((), (1, 1))
    return Resource(kind, metadata, spec, doc.file, line, doc.positions)


def _validate(model: type[BaseModel], data: Any, root: tuple, issue) -> BaseModel | None:
    if data is None:
        issue(root, f"'{root[0]}' is required")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in _dedupe(exc.errors()):
            loc = root + tuple(error["loc"])
            blamed = error.get("ctx", {}).get("error")
            if isinstance(blamed, FieldError):
                for field, message in blamed.problems:
                    issue(loc + field, message)
            else:
                issue(loc, _message(model, error))
        return None


def _dedupe(errors: list[dict]) -> list[dict]:
    """Union types report one error per branch; keep the most specific per location."""
    seen: dict[tuple, dict] = {}
    for error in errors:
        loc = tuple(p for p in error["loc"] if not _is_branch(p))
        error = {**error, "loc": loc}
        if loc not in seen or error["type"] == "extra_forbidden":
            seen.setdefault(loc, error)
    return list(seen.values())


def _is_branch(part: Any) -> bool:
    """Pydantic names union branches in locs (e.g. 'Auth', "literal['none']"); drop them."""
    return isinstance(part, str) and (part[:1].isupper() or part.startswith(("literal[", "list[", "dict[")))


def _message(model: type[BaseModel], error: dict) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = _field_names(parent) if parent else []
        return _unknown_key(str(loc[-1]), allowed)
    if kind == "missing":
        return "required key is missing"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    elif "input" in error and not isinstance(error["input"], (dict, list)):
        message = f"{message} (got {_shown(repr(error['input']))})"
    return message


def _unknown_key(key: str, allowed) -> str:
    hint = get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    if hint:
        return f"unknown key '{key}'; did you mean '{hint[0]}'?"
    return f"unknown key '{key}'; allowed: {', '.join(allowed)}"


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Follow field annotations down a loc to the model that owns its last key."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = _inner_model(current)
            if isinstance(part, int):
                continue
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        if part not in fields:
            return None
        current = _inner_model(fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _nearest(positions: dict[tuple, tuple[int, int]], path: tuple) -> tuple[int, int]:
    for end in range(len(path), -1, -1):
        if path[:end] in positions:
            return positions[path[:end]]
    return (1, 1)


def load_resources(root: Path, spec_dirs: list[str], max_spec_bytes: int = MAX_SPEC_BYTES,
                   cache_dir: Path | None = None) -> list[Resource]:
    """Load and validate every spec file; raise SpecError with all issues if any. `cache_dir`
    (the project's state cache) keeps answers that cost a subprocess (Dataset SQL)."""
    from .checks import check_resources

    root = root.resolve()
    issues: list[SpecIssue] = []
    resources: list[Resource] = []
    for path in spec_files(root, spec_dirs, issues):
        display = path.relative_to(root).as_posix()
        first = len(issues)
        with per_file_budget():
            for doc in read_documents(path, display, issues, max_spec_bytes):
                resource = parse_document(doc, issues)
                if resource is not None:
                    resources.append(resource)
        _cap_issues(issues, first, display)
    issues.extend(check_resources(root, resources, cache_dir))
    if issues:
        raise SpecError(issues)
    return resources


def _cap_issues(issues: list[SpecIssue], first: int, display: str) -> None:
    hidden = len(issues) - first - MAX_ISSUES_PER_FILE
    if hidden > 0:
        del issues[first + MAX_ISSUES_PER_FILE:]
        message = f"{hidden} more problems in this file not shown; fix the ones listed first"
        issues.append(SpecIssue(display, 1, 1, "", message))


def spec_files(root: Path, spec_dirs: list[str], issues: list[SpecIssue]) -> list[Path]:
    files: list[Path] = []
    for directory in spec_dirs:
        base = (root / directory).resolve()
        if not base.is_relative_to(root.resolve()):
            issues.append(SpecIssue("llmops.yaml", 1, 1, "spec_dirs", f"'{directory}' is outside the repository"))
            continue
        if not base.is_dir():
            issues.append(SpecIssue("llmops.yaml", 1, 1, "spec_dirs", f"spec directory '{directory}' does not exist"))
            continue
        files.extend(p for p in base.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path for path in sorted(set(files)) if _inside(root, path, issues)]


def _inside(root: Path, path: Path, issues: list[SpecIssue]) -> bool:
    """A spec file that is a symlink out of the repository is reported, not read."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        issues.append(SpecIssue(path.relative_to(root).as_posix(), 1, 1, "", f"cannot read file: {exc}"))
        return False
    if real.is_relative_to(root):
        return True
    message = ("spec file is a symlink to a file outside the repository; it is not read "
               "(copy the spec into the repository)")
    issues.append(SpecIssue(path.relative_to(root).as_posix(), 1, 1, "", message))
    return False
