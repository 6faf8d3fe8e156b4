"""Building blocks shared by every spec kind."""

from __future__ import annotations

import re

from typing import Annotated, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

API_VERSION = "llmops/v1"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]*$"

Name = Annotated[str, StringConstraints(pattern=DNS_LABEL)]
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_VAR)]


class StrictModel(BaseModel):
    """Unknown keys are errors; values are never coerced across types silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Metadata(StrictModel):
    name: Name = Field(description="Unique per kind; lowercase letters, digits and '-'.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form; never affects outputs.")
    description: str | None = None


class Reference(BaseModel):
    """A named edge from one resource to another, with the field it came from."""

    model_config = ConfigDict(frozen=True)

    field: str
    kind: str
    name: str


class KindSpec(StrictModel):
    """Base of each kind's ``spec:`` body."""

    kind: ClassVar[str]
    # Environment variables that change this kind's outputs (e.g. a CI step cap); their
    # values join the fingerprint so a capped run is never mistaken for a full one.
    env_inputs: ClassVar[tuple[str, ...]] = ()
    # A kind that keeps processes running once applied (serving replicas). Apply reaches it
    # after the builds that do not depend on it: idle replicas take CPU from training.
    keeps_running: ClassVar[bool] = False

    def references(self) -> list[Reference]:
        return []

    def path_inputs(self) -> list[PathInput]:
        """The repository paths (globs allowed) this spec reads, with the field naming each."""
        return []

    def repo_paths(self) -> list[str]:
        """Repository-relative paths (globs allowed) whose content feeds the fingerprint."""
        return [path.pattern for path in self.path_inputs()]

    def resource_summary(self) -> str | None:
        """What one run asks of the cluster, for a plan's cost line ("2 workers × 1 CPU")."""
        return None

    def secret_env(self) -> list[str]:
        """Environment variables this spec names as secrets: passed only to the processes that
        need them (never, for instance, to the Ray head's processes)."""
        return []


class PathInput(NamedTuple):
    pattern: str
    field: tuple[str, ...]  # where the spec names it, below `spec`
    must_exist: bool  # validate fails when no file (and no DVC record) matches


class FieldError(ValueError):
    """A cross-field problem blamed on specific fields, for a model validator to raise.

    Pydantic locates a model validator's error at the model itself; the loader reads this
    error's `problems` (pydantic keeps the exception in the error's context) and reports
    each at its own field's line. Field paths are dotted and relative to the raising model.
    """

    def __init__(self, *problems: tuple[str | tuple, str]):
        self.problems = [(_field_path(field), message) for field, message in problems]
        super().__init__("; ".join(message for _, message in problems))


def _field_path(field: str | tuple) -> tuple:
    """'quantization.bits' → ('quantization', 'bits'); a tuple (for keys holding dots) is kept."""
    if isinstance(field, tuple):
        return field
    return tuple(int(part) if part.isdigit() else part for part in field.split(".") if part)


def reference(field: str, kind: str, name: str | None) -> list[Reference]:
    return [Reference(field=field, kind=kind, name=name)] if name else []


# Ray's own resource names have their own fields; a custom name is what `ray start --resources` declares.
CUSTOM_RESOURCE_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def custom_resources_field(each: str):
    # Left out of the dump when empty, so specs written before custom resources keep their fingerprint.
    return Field(
        default_factory=dict, exclude_if=lambda value: not value,
        description=f"Ray custom resources each {each} needs (names a node declares with `ray start --resources`), "
                    "e.g. {trainer_node: 1}: schedules it on such a node.",
    )


def check_custom_resources(custom: dict[str, float]) -> None:
    for name in custom:
        if name in RAY_BUILTIN_RESOURCES or not re.match(CUSTOM_RESOURCE_NAME, name):
            raise FieldError(("custom", f"'{name}' is not a custom resource name (letters, digits, _ . -; "
                                        "CPU and GPU have their own fields)"))
