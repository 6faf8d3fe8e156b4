"""Building blocks shared by every spec kind."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

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

    def references(self) -> list[Reference]:
        return []

    def repo_paths(self) -> list[str]:
        """Repository-relative paths (globs allowed) whose content feeds the fingerprint."""
        return []


def reference(field: str, kind: str, name: str | None) -> list[Reference]:
    return [Reference(field=field, kind=kind, name=name)] if name else []


def is_glob(path: str) -> bool:
    return bool(re.search(r"[*?\[]", path))
