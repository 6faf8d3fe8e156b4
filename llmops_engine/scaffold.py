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


def scaffold(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in FILES if (directory / name).exists() and name != ".gitignore"]
    if existing:
        raise ProjectError(f"{directory} already has {', '.join(existing)}; refusing to overwrite")
    written = []
    for name, text in FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == ".gitignore" and path.exists():
            if ".llmops/" in path.read_text():
                continue
            text = path.read_text().rstrip("\n") + "\n" + text
        path.write_text(text)
        written.append(path)
    return written
