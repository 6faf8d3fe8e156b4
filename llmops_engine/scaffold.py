"""`llmops init`: a minimal, valid spec repository to start from."""

from __future__ import annotations

from pathlib import Path

from .errors import ProjectError

FILES = {
    "llmops.yaml": "spec_dirs: [specs]\nstate_dir: .llmops\nartifact_store: .llmops/store\n",
    "specs/prompt.yaml": (
        "apiVersion: llmops/v1\nkind: Prompt\nmetadata:\n  name: answer\nspec:\n"
        "  template: |\n    ### Instruction:\n    {instruction}\n    ### Input:\n    {input}\n    ### Response:\n"
        "  template_no_input: |\n    ### Instruction:\n    {instruction}\n    ### Response:\n"
    ),
    ".gitignore": ".llmops/\n",
}


WORKFLOWS = ("llmops-plan.yml", "llmops-apply.yml")


def workflow_files() -> dict[str, str]:
    """The plan/apply workflows this repository runs, adapted to a project that installs
    llmops as a package instead of from source."""
    from importlib.resources import files

    templates = files("llmops_engine") / "templates" / "workflows"
    result = {}
    for name in WORKFLOWS:
        text = (templates / name).read_text()
        text = text.replace("./scripts/setup.sh", 'python -m pip install "llmops-engine${LLMOPS_EXTRAS:+[$LLMOPS_EXTRAS]}"')
        result[f".github/workflows/{name}"] = text.replace(".venv/bin/llmops", "llmops")
    return result


def scaffold(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    planned = {**FILES, **workflow_files()}
    existing = [name for name in planned if (directory / name).exists() and name != ".gitignore"]
    if existing:
        raise ProjectError(f"{directory} already has {', '.join(existing)}; refusing to overwrite")
    written = []
    for name, text in planned.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == ".gitignore" and path.exists():
            if ".llmops/" in path.read_text():
                continue
            text = path.read_text().rstrip("\n") + "\n" + text
        path.write_text(text)
        written.append(path)
    return written
