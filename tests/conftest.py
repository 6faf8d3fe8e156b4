import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = [p for p in ("tests.plugins.ray_cluster", "tests.plugins.s3_server", "tests.plugins.netns_cluster") if (REPO / (p.replace(".", "/") + ".py")).exists()]
pytest_plugins.append("pytester")  # test_suite_guards.py runs small pytest sessions under our settings

@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory) -> Path:
    """An artifact store where SmolLM2's GGUF is dequantized once (~30 s) for every test that only
    needs its weights (the conversion itself is tested in test_models_real.py)."""
    from llmops_engine.models import resolve_base

    store = tmp_path_factory.mktemp("smollm2-store")
    resolve_base("builtin:smollm2-135m-instruct", store)
    return store


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


# A Prompt + Dataset → TuningJob chain for reconciler tests (run through recording controllers).
SPECS = {
    "prompt.yaml": """
        apiVersion: llmops/v1
        kind: Prompt
        metadata: {name: p}
        spec: {template: "Q: {instruction}"}
        """,
    "data.yaml": """
        apiVersion: llmops/v1
        kind: Dataset
        metadata: {name: d}
        spec:
          source: {path: data/x.jsonl}
          columns: {instruction: q, output: a}
        """,
    "job.yaml": """
        apiVersion: llmops/v1
        kind: TuningJob
        metadata: {name: t}
        spec: {base_model: "builtin:tiny-llama", dataset: d, prompt: p, training: {epochs: 1}}
        """,
}


@pytest.fixture
def project_root(make_project):
    root = make_project(SPECS)
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    return root


# A private PostgreSQL cluster (fixtures `postgres`, `postgres_url`) for the warehouse source.
pytest_plugins.append("tests.postgres")
