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

# This repository's workflows install the engine from their own checkout.
INSTALL_FROM_CHECKOUT = """      - name: Install
        run: ./scripts/setup.sh
"""
# A user's repository has no engine source and no public index serves the engine, so the
# workflows install the one pinned source the user names in a repository variable, and stop
# with an annotation saying what to set when it is missing.
ENGINE_SPEC_VARIABLE = "LLMOPS_ENGINE_SPEC"
INSTALL_PINNED_ENGINE = f"""      - name: Install llmops (the engine pinned in the {ENGINE_SPEC_VARIABLE} repository variable)
        env:
          {ENGINE_SPEC_VARIABLE}: ${{{{ vars.{ENGINE_SPEC_VARIABLE} }}}}
        run: |
          if [ -z "${ENGINE_SPEC_VARIABLE}" ]; then
            echo "::error title=llmops engine not pinned::Set the repository variable {ENGINE_SPEC_VARIABLE} (Settings > Secrets and variables > Actions > Variables) to the engine to install: a git URL pinned to a commit (git+https://<git-host>/<owner>/llmops@<commit-sha>) or a wheel URL."
            exit 1
          fi
          python -m pip install "llmops-engine${{LLMOPS_EXTRAS:+[$LLMOPS_EXTRAS]}} @ ${ENGINE_SPEC_VARIABLE}"
"""


def workflow_files() -> dict[str, str]:
    """The plan/apply workflows this repository runs, adapted to a project that installs
    the engine from the pinned source in LLMOPS_ENGINE_SPEC instead of from its checkout."""
    from importlib.resources import files

    templates = files("llmops_engine") / "templates" / "workflows"
    result = {}
    for name in WORKFLOWS:
        text = (templates / name).read_text()
        if text.count(INSTALL_FROM_CHECKOUT) != 1:  # a template edit must not ship setup.sh to users
            raise ProjectError(f"workflow template {name} has no single install step to adapt")
        text = text.replace(INSTALL_FROM_CHECKOUT, INSTALL_PINNED_ENGINE)
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
