"""`llmops data ...`: the commands a Dataset's DVC stage runs.

Import-light at the top (Typer only) so that mounting this sub-app costs nothing; the
pipeline, pandas and Great Expectations load inside the command that needs them.
dvc.yaml calls `llmops data build NAME`; `python -m llmops_engine.data.cli build NAME` is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Dataset stages: build processed train/eval data (DVC runs these).", no_args_is_help=True)

_PROJECT = typer.Option(None, "--project", "-C", help="Project directory (default: search up from here).")


@app.command()
def build(name: str = typer.Argument(..., help="metadata.name of the Dataset."),
          project_dir: Optional[Path] = _PROJECT) -> None:
    """Read, transform, validate and split Dataset NAME into data/processed/NAME/."""
    from ..errors import LLMOpsError

    try:
        result = _build(name, project_dir)
    except LLMOpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    rules = len(result.report["rules"])
    typer.echo(f"Dataset {name}: {result.raw_rows} raw rows -> {result.train_rows} train / "
               f"{result.eval_rows} eval; {rules} validation rule(s) passed")


@app.command()
def refresh(name: str = typer.Argument(..., help="metadata.name of a Dataset with a database source."),
            project_dir: Optional[Path] = _PROJECT) -> None:
    """Query Dataset NAME's database now and keep the result as its latest extract (for
    `refresh: manual`; the next plan shows whether the rows changed)."""
    from ..errors import DataError, LLMOpsError
    from ..project import load_project
    from .extracts import refresh as query_now

    try:
        project = load_project(project_dir)
        resource = _dataset(project, name)
        if resource.spec.source.kind() != "database":
            raise DataError(f"Dataset {name} reads files, not a database; there is nothing to refresh")
        found = query_now(resource, project.state_dir)
    except LLMOpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(f"Dataset {name}: {found.rows:,} rows in {found.seconds:.1f} s, extract sha256 {found.sha256[:12]}")


@app.command("ensure-raw")
def ensure_raw(project_dir: Optional[Path] = _PROJECT) -> None:
    """Restore raw files recorded in root *.dvc files (generator or dvc pull)."""
    from ..errors import LLMOpsError
    from ..project import load_project
    from .bootstrap import ensure_raw_data

    try:
        restored = ensure_raw_data(load_project(project_dir).root)
    except LLMOpsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo("restored: " + ", ".join(restored) if restored else "raw data present")


def _build(name: str, project_dir: Path | None):
    from ..errors import DataError
    from ..project import load_project
    from .dvc_stage import failure_dir, processed_dir, stage_extract
    from .extracts import extract_path
    from .pipeline import SourceData
    from .pipeline import build as build_dataset

    project = load_project(project_dir)
    resource = _dataset(project, name)
    extract = None
    if resource.spec.source.kind() == "database":
        sha256 = stage_extract(project.root, name)
        extract = extract_path(project.state_dir, name, sha256) if sha256 else None
        if extract is None or not extract.is_file():
            raise DataError(f"Dataset {name} reads a database and has no extract to build from yet "
                            "(its stage's params name none, or it is gone); run llmops apply")
    data = SourceData(resource.spec.sql_patterns(), extract)
    return build_dataset(name, resource.spec, project.root, processed_dir(project.root, name),
                         failure_dir(project, name), data)


def _dataset(project, name: str):
    from ..errors import DataError

    resources = {r.key: r for r in project.load_resources()}
    resource = resources.get(f"Dataset/{name}")
    if resource is None:
        known = ", ".join(sorted(k.split("/", 1)[1] for k in resources if k.startswith("Dataset/"))) or "none"
        raise DataError(f"no Dataset named '{name}' in the specs (known: {known})")
    return resource


if __name__ == "__main__":
    app()
