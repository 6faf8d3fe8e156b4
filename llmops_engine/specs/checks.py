"""Checks that need the whole spec set: names, references, cycles, paths, prompt identity."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..errors import SpecIssue
from .resource import Resource, key_of


def check_resources(root: Path, resources: list[Resource]) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    by_key = _unique(resources, issues)
    _references(by_key, issues)
    _paths(root, resources, issues)
    _prompt_identity(by_key, issues)
    if not issues:
        from ..graph import find_cycle

        cycle = find_cycle(by_key)
        if cycle:
            first = by_key[cycle[0]]
            issues.append(_issue(first, ("spec",), f"dependency cycle: {' -> '.join(cycle)}"))
    return issues


def _issue(resource: Resource, path: tuple, message: str) -> SpecIssue:
    line, col = resource.position(path)
    return SpecIssue(resource.file, line, col, ".".join(str(p) for p in path), message)


def _unique(resources: list[Resource], issues: list[SpecIssue]) -> dict[str, Resource]:
    by_key: dict[str, Resource] = {}
    for resource in resources:
        first = by_key.get(resource.key)
        if first is not None:
            message = f"duplicate {resource.kind} name '{resource.name}' (first defined at {first.file}:{first.line})"
            issues.append(_issue(resource, ("metadata", "name"), message))
            continue
        by_key[resource.key] = resource
    return by_key


def _references(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    names_by_kind: dict[str, set[str]] = defaultdict(set)
    kinds_by_name: dict[str, set[str]] = defaultdict(set)
    for resource in by_key.values():
        names_by_kind[resource.kind].add(resource.name)
        kinds_by_name[resource.name].add(resource.kind)
    for resource in by_key.values():
        for ref in resource.references():
            if ref.name in names_by_kind[ref.kind]:
                continue
            path = tuple(ref.field.split("."))
            other = kinds_by_name.get(ref.name)
            if other:
                message = f"'{ref.name}' is a {', '.join(sorted(other))}, but {ref.field} needs a {ref.kind}"
            else:
                from difflib import get_close_matches

                hint = get_close_matches(ref.name, names_by_kind[ref.kind], n=1)
                known = f"did you mean '{hint[0]}'?" if hint else f"define a {ref.kind} named '{ref.name}'"
                message = f"no {ref.kind} named '{ref.name}'; {known}"
            issues.append(_issue(resource, path, message))


def _paths(root: Path, resources: list[Resource], issues: list[SpecIssue]) -> None:
    top = root.resolve()
    for resource in resources:
        for rel in resource.spec.repo_paths():
            literal = rel.split("*")[0].split("?")[0].split("[")[0] or "."
            if Path(rel).is_absolute() or not (top / literal).resolve().is_relative_to(top):
                field = _path_field(resource)
                issues.append(_issue(resource, field, f"path '{rel}' is outside the repository; use a repo-relative path"))


def _path_field(resource: Resource) -> tuple:
    return ("spec", "source", "path") if resource.kind == "Dataset" else ("spec", "base_model")


def _prompt_identity(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A Deployment must render requests exactly as its model was trained."""
    for resource in by_key.values():
        if resource.kind != "Deployment" or resource.spec.allow_prompt_mismatch:
            continue
        job = by_key.get(key_of("TuningJob", resource.spec.model))
        served = by_key.get(key_of("Prompt", resource.spec.prompt))
        trained = by_key.get(key_of("Prompt", job.spec.prompt)) if job else None
        if not (served and trained) or served.spec.template_hash() == trained.spec.template_hash():
            continue
        message = (
            f"prompt '{served.name}' differs from '{trained.name}', which TuningJob '{job.name}' was trained with; "
            "use the training prompt, or set allow_prompt_mismatch: true"
        )
        issues.append(_issue(resource, ("spec", "prompt"), message))
