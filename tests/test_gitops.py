"""GitOps wiring: workflow files are valid GitHub workflows, `init` ships them, and the
plan workflow's commands produce the PR comment for a simulated pull request."""

import subprocess
import sys
from pathlib import Path


from llmops_engine.scaffold import workflow_files
from tests import recording_controllers
from tests.conftest import SPECS, write_project

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def check_jsonschema(*paths):
    exe = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
                          capture_output=True, text=True)


def test_repository_workflows_are_valid():
    assert {p.name for p in WORKFLOWS} >= {"llmops-plan.yml", "llmops-apply.yml", "ci.yml"}
    result = check_jsonschema(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_is_rejected(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("name: x\non: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    assert check_jsonschema(broken).returncode != 0


def test_packaged_templates_are_the_repository_workflows():
    templates = REPO / "llmops_engine" / "templates" / "workflows"
    for name in ("llmops-plan.yml", "llmops-apply.yml"):
        assert (templates / name).read_text() == (REPO / ".github" / "workflows" / name).read_text()


def test_init_scaffolds_valid_workflows(tmp_path):
    from llmops_engine.scaffold import scaffold

    scaffold(tmp_path)
    written = [tmp_path / name for name in workflow_files()]
    assert all(p.is_file() for p in written)
    assert "./scripts/setup.sh" not in written[0].read_text()
    result = check_jsonschema(*written)
    assert result.returncode == 0, result.stdout + result.stderr


def test_apply_workflow_never_cancels_and_uses_production():
    import yaml

    apply = yaml.safe_load((REPO / ".github" / "workflows" / "llmops-apply.yml").read_text())
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert apply["jobs"]["apply"]["environment"] == "production"
    text = (REPO / ".github" / "workflows" / "llmops-apply.yml").read_text()
    assert "${{ secrets.LLMOPS_API_KEYS }}" in text


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def llmops(root, *args):
    exe = Path(sys.executable).parent / "llmops"
    return subprocess.run([str(exe), *args], cwd=root, capture_output=True, text=True, timeout=120)


def test_simulated_pull_request_plan_comment(tmp_path):
    """Base commit applied (to a shared store); the PR head changes one spec; the plan
    workflow's exact commands run in a fresh clone and produce the comment body."""
    store = tmp_path / "store"
    base = write_project(tmp_path / "origin", SPECS, settings=f"spec_dirs: [specs]\nartifact_store: file://{store}\n")
    (base / "data").mkdir()
    (base / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    git(base, "init", "-q", "-b", "main")
    git(base, "add", "-A")
    git(base, "commit", "-qm", "base")
    from llmops_engine.engine import Engine
    from llmops_engine.project import load_project

    engine = Engine(load_project(base), report=lambda _: None, registry=recording_controllers.registry())
    assert engine.apply().exit_code() == 0
    git(base, "checkout", "-q", "-b", "pr")
    job = base / "specs" / "job.yaml"
    job.write_text(job.read_text().replace("epochs: 1", "epochs: 3"))
    git(base, "commit", "-qam", "more epochs")
    clone = tmp_path / "runner"
    git(tmp_path, "clone", "-q", "-b", "pr", str(base), str(clone))

    assert llmops(clone, "validate", "--format", "github").returncode == 0
    plan = llmops(clone, "plan", "--format", "markdown", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    comment = plan.stdout
    assert "**Plan: 0 to create, 1 to update, 0 to delete.** (2 unchanged)" in comment
    assert "| `~` | `TuningJob/t` | update | spec changed at spec.training.epochs: 1 → 3 | 0.0 s on 1 worker × 1 CPU |" in comment
    assert "Dataset/d" not in comment


def test_validation_errors_become_annotations(tmp_path):
    root = write_project(tmp_path / "p", SPECS)
    job = root / "specs" / "job.yaml"
    job.write_text(job.read_text().replace("prompt: p", "prompt: missing"))
    result = llmops(root, "validate", "--format", "github")
    assert result.returncode == 1
    assert "::error file=specs/job.yaml,line=4,col=54,title=llmops spec::spec.prompt: no Prompt named 'missing'" in result.stdout


def test_two_clones_sharing_a_store_agree_on_what_is_done(tmp_path):
    store = tmp_path / "shared-store"
    settings = f"spec_dirs: [specs]\nstate_dir: .llmops\nartifact_store: file://{store}\n"
    clones = []
    for name in ("a", "b"):
        root = write_project(tmp_path / name, SPECS, settings=settings)
        (root / "data").mkdir()
        (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
        clones.append(root)
    a, b = clones
    from llmops_engine.engine import Engine
    from llmops_engine.project import load_project

    engine = Engine(load_project(a), report=lambda _: None, registry=recording_controllers.registry())
    assert engine.apply().exit_code() == 0
    plan_b = llmops(b, "plan", "--detailed-exitcode")
    assert plan_b.returncode == 0, plan_b.stdout + plan_b.stderr
    assert "No changes" in plan_b.stdout
    assert not (b / ".llmops" / "store").exists()
    data = b / "specs" / "data.yaml"
    data.write_text(data.read_text().replace("output: a}", "output: a}\n  split: {seed: 7}"))
    plan_b = llmops(b, "plan", "--json")
    import json

    changed = {a["key"]: a["action"] for a in json.loads(plan_b.stdout)["actions"] if a["action"] != "no-op"}
    assert changed == {"Dataset/d": "update", "TuningJob/t": "update"}
