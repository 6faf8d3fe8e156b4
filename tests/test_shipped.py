"""What ships in the repository must be consistent: every spec loads, the schema is current."""

from pathlib import Path

from llmops_engine.project import load_project
from llmops_engine.schema import DEFAULT_PATH, render_schema
from llmops_engine.specs.loader import load_resources

REPO = Path(__file__).resolve().parent.parent


def test_every_shipped_spec_loads():
    project = load_project(REPO)
    resources = load_resources(project.root, project.settings.spec_dirs)
    kinds = {r.kind for r in resources}
    assert kinds == {"Dataset", "Prompt", "KnowledgeBase", "Guardrail", "TuningJob", "Evaluation", "Deployment"}


def test_committed_schema_is_up_to_date():
    committed = (REPO / DEFAULT_PATH).read_text()
    assert committed == render_schema(), "run: llmops schema --out schema/llmops.schema.json"


def test_committed_spec_reference_is_up_to_date():
    from llmops_engine.specdoc import DEFAULT_PATH as DOC, render_reference

    committed = (REPO / DOC).read_text()
    assert committed == render_reference(), "run: llmops schema --format markdown"


def test_example_specs_point_editors_at_the_schema():
    for spec in sorted((REPO / "specs").glob("*.yaml")):
        first = spec.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schema/llmops.schema.json", spec
