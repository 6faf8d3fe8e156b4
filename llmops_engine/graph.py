"""The dependency graph between resources: order of apply, and who is downstream of whom."""

from __future__ import annotations

from collections.abc import Mapping

from .specs.resource import Resource, key_of


def dependencies(resource: Resource) -> list[str]:
    return sorted({key_of(ref.kind, ref.name) for ref in resource.references()})


def find_cycle(by_key: Mapping[str, Resource]) -> list[str] | None:
    """Return one cycle as a closed path of keys, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(key: str) -> list[str] | None:
        state[key] = 1
        stack.append(key)
        for dep in dependencies(by_key[key]):
            if dep not in by_key:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[key] = 2
        return None

    for key in sorted(by_key):
        if key not in state and (found := visit(key)):
            return found
    return None


def topological_order(by_key: Mapping[str, Resource]) -> list[str]:
    """Dependencies first; ties broken by key so the order is stable."""
    order: list[str] = []
    done: set[str] = set()

    def visit(key: str) -> None:
        if key in done:
            return
        done.add(key)
        for dep in dependencies(by_key[key]):
            if dep in by_key:
                visit(dep)
        order.append(key)

    for key in sorted(by_key):
        visit(key)
    return order
