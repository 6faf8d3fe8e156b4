"""The package's layering holds: no import cycles (lazy imports included), and lower layers
never import upper ones (cli → engine → observe/execute → controllers → domain → state/models
→ specs → errors)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llmops_engine"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _targets(module: str, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = []
    for alias in node.names:
        if f"{target}.{alias.name}" in MODULES:
            found.append(f"{target}.{alias.name}")
        elif target in MODULES:
            found.append(target)
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        nodes = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[module] = {t for n in nodes for t in _targets(module, n) if t != module and not module.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LOWER_NEVER_IMPORTS_UPPER = [
    ("llmops_engine.errors", ("llmops_engine.",)),
    ("llmops_engine.planner", ("llmops_engine.engine", "llmops_engine.controllers", "llmops_engine.state",
                               "llmops_engine.observe", "llmops_engine.execute")),
    ("llmops_engine.specs.", ("llmops_engine.engine", "llmops_engine.controllers", "llmops_engine.state",
                              "llmops_engine.cli", "llmops_engine.serving", "llmops_engine.training",
                              "llmops_engine.data", "llmops_engine.evaluation", "llmops_engine.models")),
    ("llmops_engine.fingerprint", ("llmops_engine.data", "llmops_engine.state", "llmops_engine.controllers")),
    ("llmops_engine.state.", ("llmops_engine.engine", "llmops_engine.controllers", "llmops_engine.cli",
                              "llmops_engine.observe", "llmops_engine.execute")),
    ("llmops_engine.controllers", ("llmops_engine.engine", "llmops_engine.cli", "llmops_engine.observe",
                                   "llmops_engine.execute")),
    ("llmops_engine.observe", ("llmops_engine.execute", "llmops_engine.engine", "llmops_engine.cli")),
]


@pytest.mark.parametrize("lower,upper", LOWER_NEVER_IMPORTS_UPPER, ids=[r[0] for r in LOWER_NEVER_IMPORTS_UPPER])
def test_lower_layers_never_import_upper_ones(lower, upper):
    graph = import_graph()
    offending = {
        (module, target)
        for module, targets in graph.items() if module == lower or module.startswith(lower)
        for target in targets
        if any(target == u or target.startswith(u) for u in upper) and target != "llmops_engine.errors"
    }
    assert not offending
