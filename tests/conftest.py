import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = [p for p in ("tests.plugins.ray_cluster",) if (REPO / (p.replace(".", "/") + ".py")).exists()]

PROMPT = """
apiVersion: llmops/v1
kind: Prompt
metadata: {name: p}
spec:
  template: "Q: {instruction}\\nA:"
"""


def write_project(root: Path, specs: dict[str, str], settings: str = "") -> Path:
    """Create a project directory with llmops.yaml and the given spec files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "llmops.yaml").write_text(settings or "spec_dirs: [specs]\n")
    for name, text in specs.items():
        path = root / "specs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def make_project(tmp_path):
    def factory(specs: dict[str, str], settings: str = "", name: str = "proj") -> Path:
        return write_project(tmp_path / name, specs, settings)

    return factory
