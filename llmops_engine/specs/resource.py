"""A loaded, validated resource: envelope + typed spec + where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import KindSpec, Metadata, Reference


@dataclass(frozen=True)
class Resource:
    kind: str
    metadata: Metadata
    spec: KindSpec
    file: str
    line: int
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    def references(self) -> list[Reference]:
        return self.spec.references()

    def normalized_spec(self) -> dict[str, Any]:
        """The spec as the engine sees it: defaults filled in, aliases applied, layout gone."""
        return self.spec.model_dump(mode="json", by_alias=True)

    def position(self, path: tuple) -> tuple[int, int]:
        """Best (line, column) for a key path, falling back to the nearest enclosing key."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return (self.line, 1)


def key_of(kind: str, name: str) -> str:
    return f"{kind}/{name}"
