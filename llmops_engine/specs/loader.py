"""YAML → typed resources, with every problem located at file:line:col.

PyYAML's composer gives each node a start mark; we build plain Python values ourselves
from the node tree so that every key path keeps its position, and so that only the
standard YAML tags are accepted (no object construction, whatever the input says).
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
from .base import API_VERSION, Metadata
from .resource import Resource

SAFE_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}
ENVELOPE_KEYS = ("apiVersion", "kind", "metadata", "spec")


@dataclass
class _Document:
    file: str
    value: Any
    positions: dict[tuple, tuple[int, int]]


class _Builder:
    """Turns composed YAML nodes into Python values while recording positions."""

    def __init__(self, file: str, issues: list[SpecIssue]):
        self.file = file
        self.issues = issues
        self.positions: dict[tuple, tuple[int, int]] = {}
        self._scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: tuple = ()) -> Any:
        self.positions.setdefault(path, _pos(node))
        if node.tag not in SAFE_TAGS:
            self._issue(node, path, f"YAML tag '{node.tag}' is not allowed; specs are plain data")
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._issue(key_node, path, "YAML merge keys ('<<') are not supported; write keys out")
                continue
            key = self.build(key_node, path + ("<key>",))
            if not isinstance(key, str):
                self._issue(key_node, path, f"keys must be strings, got {key!r}")
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


def read_documents(path: Path, display: str, issues: list[SpecIssue]) -> list[_Document]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(SpecIssue(display, 1, 1, "", f"cannot read file: {exc}"))
        return []
    documents = []
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is None:
                continue
            builder = _Builder(display, issues)
            documents.append(_Document(display, builder.build(node), builder.positions))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(SpecIssue(display, line, col, "", f"invalid YAML: {problem}"))
    return documents


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
        message = f"{message} (got {error['input']!r})"
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


def load_resources(root: Path, spec_dirs: list[str]) -> list[Resource]:
    """Load and validate every spec file; raise SpecError with all issues if any."""
    from .checks import check_resources

    root = root.resolve()
    issues: list[SpecIssue] = []
    resources: list[Resource] = []
    for path in spec_files(root, spec_dirs, issues):
        display = path.relative_to(root).as_posix()
        for doc in read_documents(path, display, issues):
            resource = parse_document(doc, issues)
            if resource is not None:
                resources.append(resource)
    issues.extend(check_resources(root, resources))
    if issues:
        raise SpecError(issues)
    return resources


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
    return sorted(set(files))
