"""The `llmops` command line.

Only light modules are imported here; torch, Ray and Great Expectations load inside the
controllers that need them, so `validate`, `plan`, `status` and `--help` stay fast.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import LLMOpsError, SpecError

app = typer.Typer(
    name="llmops",
    help="Declarative LLMOps: reconcile datasets, prompts, tuning jobs, evaluations and deployments to YAML specs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE
errors = Console(stderr=True, soft_wrap=True)


class Format(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"
    github = "github"


@contextmanager
def user_errors(fmt: Format = Format.text, directory: Optional[Path] = None):
    """Map the engine's errors to a message and exit code; never show a traceback.

    An exception outside the project's error tree is a bug: its traceback goes to a log file
    under the state dir and the user gets one line naming it."""
    try:
        yield
    except SpecError as exc:
        if fmt == Format.github:
            from .render import spec_errors_github

            print(spec_errors_github(exc))
        elif fmt == Format.json:
            print(json.dumps({"errors": [vars(i) for i in exc.issues]}, indent=2))
        errors.print(f"[red]error:[/red] {len(exc.issues)} spec error(s)", highlight=False)
        for issue in exc.issues:
            errors.print(str(issue), highlight=False, markup=False)
        raise typer.Exit(1)
    except LLMOpsError as exc:
        errors.print("[red]error:[/red] ", end="", highlight=False)
        errors.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(exc.exit_code)
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary for bugs: logged, one line shown
        internal_error(exc, directory)


def internal_error(exc: BaseException, directory: Optional[Path] = None) -> NoReturn:
    from .internal import log_internal_error, one_line

    try:
        where = f"the traceback is in {log_internal_error(_state_dir(directory), exc)}"
    except Exception:  # noqa: BLE001 - a read-only disk must not turn one line into a traceback
        where = "its traceback could not be written to the state directory"
    errors.print("[red]internal error:[/red] ", end="", highlight=False)
    errors.print(f"{one_line(exc)} (a bug; {where})", highlight=False, markup=False)
    raise typer.Exit(INTERNAL_ERROR_EXIT)


def _state_dir(directory: Optional[Path]) -> Path:
    from .project import find_root

    try:
        return _project(directory).state_dir
    except Exception:  # noqa: BLE001 - the project file itself may be what is broken
        return find_root(directory or Path.cwd()) / ".llmops"


def _project(directory: Optional[Path]):
    from .project import load_project

    return load_project(directory)


def _engine(ctx: typer.Context, directory: Optional[Path]):
    """The engine for a project; `ctx.obj` may hold a controller Registry (tests inject theirs)."""
    from .engine import Engine

    report = lambda line: console.print(line, highlight=False, markup=False)  # noqa: E731
    return Engine(_project(directory), report=report, registry=ctx.obj)


DirOption = typer.Option(None, "--dir", "-C", help="Project directory (default: search upward from here).")
TargetOption = typer.Option(None, "--target", metavar="KIND/NAME",
                            help="Only this resource and what it depends on (repeatable).")


@app.command()
def validate(
    directory: Optional[Path] = DirOption,
    fmt: Format = typer.Option(Format.text, "--format", help="text | json | github (annotations)"),
) -> None:
    """Check every spec: syntax, types, references, cycles, paths. Exit 1 on any problem."""

    with user_errors(fmt, directory):
        project = _project(directory)
        resources = project.load_resources()
    if fmt == Format.json:
        print(json.dumps({"resources": [r.key for r in resources], "errors": []}, indent=2))
    else:
        console.print(f"[green]✓[/green] {len(resources)} resources valid")


@app.command()
def plan(
    ctx: typer.Context,
    directory: Optional[Path] = DirOption,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    fmt: Format = typer.Option(Format.text, "--format", help="text | json | markdown | github"),
    out: Optional[Path] = typer.Option(None, "--out", help="Save the plan for `llmops apply PLAN`."),
    detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode", help="Exit 0 no changes, 1 error, 2 changes."),
    prune: bool = typer.Option(False, "--prune", help="Plan deletes for resources no longer in the specs."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Allow pruning with an empty spec set."),
    target: Optional[list[str]] = TargetOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list unchanged resources."),
) -> None:
    """Show what `apply` would change, and why. Read-only: writes nothing outside .llmops/."""
    from . import render
    from .planner import PlanOptions

    fmt = Format.json if as_json else fmt
    with user_errors(fmt, directory):
        the_plan = _engine(ctx, directory).plan(PlanOptions(prune, allow_empty, tuple(target or ()))).plan
        if out:
            out.write_text(json.dumps(the_plan.to_json(), indent=2))
    if fmt == Format.json:
        print(json.dumps(the_plan.to_json(), indent=2))
    elif fmt in (Format.markdown, Format.github):
        print(render.plan_markdown(the_plan))
    else:
        for style, line in render.plan_text(the_plan, verbose):
            console.print(f"[{style}]{line}[/{style}]", highlight=False)
        if out:
            console.print(f"Saved to {out}; run: llmops apply {out}")
    if detailed_exitcode and the_plan.has_changes():
        raise typer.Exit(2)


@app.command()
def apply(
    ctx: typer.Context,
    plan_file: Optional[Path] = typer.Argument(None, help="A plan saved by `llmops plan --out`; executed exactly, if still fresh."),
    directory: Optional[Path] = DirOption,
    prune: bool = typer.Option(False, "--prune", help="Delete resources no longer in the specs."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Allow pruning with an empty spec set."),
    target: Optional[list[str]] = TargetOption,
    lock_timeout: float = typer.Option(0.0, "--lock-timeout", help="Seconds to wait for another apply."),
) -> None:
    """Make the world match the specs (or execute a saved plan, if it is still fresh)."""
    from .engine import read_plan_file
    from .planner import PlanOptions
    from .report import print_apply_result

    with user_errors(directory=directory):
        engine = _engine(ctx, directory)
        saved = read_plan_file(plan_file) if plan_file else None
        given = PlanOptions(prune, allow_empty, tuple(target or ()))
        # With a saved plan, flags are only checked against it: the plan carries its own.
        options = given if saved is None or given != PlanOptions() else None
        result = engine.apply(saved_plan=saved, options=options, lock_timeout=lock_timeout)
        code = print_apply_result(console, errors, engine, result)
    if code:
        raise typer.Exit(code)


@app.command()
def status(
    ctx: typer.Context,
    directory: Optional[Path] = DirOption,
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Resources, their fingerprints and state, and what they produced."""
    from .render import when
    from .report import status_rows

    with user_errors(directory=directory):
        engine = _engine(ctx, directory)
        rows = status_rows(engine)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("kind", "name", "fingerprint", "state", "last applied", "outputs",
                  caption=f"artifact store: {engine.store.url}")
    for row in rows:
        table.add_row(row["kind"], row["name"], row["fingerprint"][:12], row["state"], when(row["applied_at"]), row["summary"])
    console.print(table)


@app.command()
def history(
    ctx: typer.Context,
    resource: Optional[str] = typer.Argument(None, help="Kind/name to filter, e.g. TuningJob/support-lora."),
    directory: Optional[Path] = DirOption,
    limit: int = typer.Option(30, "--limit", "-n"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Past apply steps from the journal, newest first."""
    from .render import when

    with user_errors(directory=directory):
        rows = _engine(ctx, directory).journal().history(resource, limit)
    if as_json:
        print(json.dumps([vars(r) for r in rows], indent=2))
        return
    table = Table("started", "apply", "resource", "action", "status", "fingerprint", "message")
    for r in rows:
        table.add_row(when(r.started), r.apply_id, r.key, r.action, r.status, (r.fingerprint or "")[:12], r.message[:80])
    console.print(table)


class SchemaFormat(str, Enum):
    json = "json"
    markdown = "markdown"


@app.command()
def schema(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write; '-' for stdout."),
    fmt: SchemaFormat = typer.Option(SchemaFormat.json, "--format", help="json (JSON Schema) | markdown (reference)"),
) -> None:
    """Write the JSON Schema of all kinds (for editor autocompletion), or the Markdown spec reference."""
    if fmt == SchemaFormat.markdown:
        from .specdoc import DEFAULT_PATH, render_reference

        text, default = render_reference(), DEFAULT_PATH
    else:
        from .schema import DEFAULT_PATH, render_schema

        text, default = render_schema(), DEFAULT_PATH
    out = out or Path(default)
    if str(out) == "-":
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}")


@app.command("force-unlock")
def force_unlock(ctx: typer.Context,
                 lock_id: str = typer.Argument(..., help="The lock id printed by the blocked apply."),
                 directory: Optional[Path] = DirOption) -> None:
    """Release an apply lock whose holder is gone."""
    with user_errors(directory=directory):
        engine = _engine(ctx, directory)
        lease = engine.store.lock().force_unlock(lock_id)
    console.print(f"released {lease.describe()}")


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="Where to scaffold the project.")) -> None:
    """Scaffold a minimal spec repository."""
    from .scaffold import scaffold

    with user_errors(directory=directory):
        written = scaffold(directory)
    for path in written:
        console.print(f"  created {path}")
    console.print("Next: llmops validate && llmops plan")


@app.command()
def logs(
    deployment: str = typer.Argument(..., help="metadata.name of the Deployment."),
    directory: Optional[Path] = DirOption,
    limit: int = typer.Option(50, "--limit", "-n", help="How many of the latest requests."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Requests a deployment served: id, time, model version, status, latency, tokens."""
    from .render import when
    from .serving.logs import read_logs

    with user_errors(directory=directory):
        entries = read_logs(_project(directory), deployment, limit)
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    table = Table("time", "id", "version", "endpoint", "status", "latency ms", "prompt tok", "completion tok")
    for e in entries:
        table.add_row(when(e.get("time")), str(e.get("id", ""))[:12], str(e.get("model_version", "")),
                      str(e.get("endpoint", "")), str(e.get("status", "")), f"{e.get('latency_ms', 0):.0f}",
                      str(e.get("prompt_tokens", "")), str(e.get("completion_tokens", "")))
    console.print(table)


@app.command()
def rollback(
    deployment: str = typer.Argument(..., help="metadata.name of the Deployment."),
    directory: Optional[Path] = DirOption,
    lock_timeout: float = typer.Option(0.0, "--lock-timeout", help="Seconds to wait for a running apply."),
) -> None:
    """Serve the deployment's previous model version again."""
    from .serving.deploy import rollback as roll_back

    with user_errors(directory=directory):
        outputs = roll_back(_project(directory), deployment, report=lambda line: console.print(line, markup=False), lock_timeout=lock_timeout)
    console.print(f"[green]{deployment} now serves model {outputs.get('model_version')}[/green]")


@app.command()
def loadtest(
    deployment: str = typer.Argument(..., help="metadata.name of an applied Deployment."),
    directory: Optional[Path] = DirOption,
    clients: Optional[int] = typer.Option(None, "--clients", help="Concurrent virtual users (default: the spec's, else 8)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds of load (default: the spec's, else 20)."),
    max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Stop after this many requests."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="max_tokens of each request (default 32)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    lock_timeout: float = typer.Option(30.0, "--lock-timeout", help="Seconds to wait for a running apply before saving."),
) -> None:
    """Load the deployment's own endpoint with streamed chat requests and report RPS, latency,
    time to first token, tokens/s and errors; judged by the spec's rollout.load_test.thresholds.
    The result is kept in the deployment's record (see `llmops status`). Exit 3 when a threshold fails."""
    from .errors import GateFailed
    from .loadtest.command import loadtest as run_loadtest
    from .loadtest.results import result_rows

    def show(entry: dict) -> None:
        if as_json:
            print(json.dumps(entry, indent=2))
            return
        table = Table("measure", "value", title=f"load test of {deployment}")
        for measure, value in result_rows(entry):
            table.add_row(measure, value)
        console.print(table)
        if entry["verdict"] is not None:
            style = "green" if entry["verdict"]["passed"] else "red"
            console.print(f"[{style}]thresholds: {entry['verdict']['summary']}[/{style}]", highlight=False)

    overrides = {"clients": clients, "duration_s": duration, "max_requests": max_requests, "max_tokens": max_tokens}
    with user_errors(directory=directory):
        entry = run_loadtest(_project(directory), deployment, overrides, show, lock_timeout,
                             report=lambda line: errors.print(line, highlight=False, markup=False))
        if entry["verdict"] is not None and not entry["verdict"]["passed"]:
            raise GateFailed(f"load test of {deployment}: {entry['verdict']['summary']}")


@app.command()
def report(
    ctx: typer.Context,
    directory: Optional[Path] = DirOption,
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the page (default: <state dir>/report.html)."),
) -> None:
    """One self-contained HTML page (opens offline): resources, loss curves, evaluations, retrieval,
    guardrails, rollout and load-test history, request latency. Prints the path written."""
    from .reporting import write_report

    with user_errors(directory=directory):
        path = write_report(_engine(ctx, directory), out)
    print(path)


@app.command()
def down(directory: Optional[Path] = DirOption) -> None:
    """Stop the local Ray head that `apply` started (deployments stop with it)."""
    from .raycluster import stop_local

    with user_errors(directory=directory):
        stopped = stop_local(_project(directory))
    console.print("stopped the local Ray head" if stopped else "no local Ray head is running")


export_app = typer.Typer(help="Write the project as another platform's manifests.", no_args_is_help=True)


@export_app.command("kuberay")
def export_kuberay(
    out: Path = typer.Option(..., "--out", help="Folder to write the manifests into."),
    directory: Optional[Path] = DirOption,
    image: Optional[str] = typer.Option(None, "--image", help="Ray image of the pods (default: rayproject/ray:<this Ray>-py311)."),
    repo_uri: Optional[str] = typer.Option(None, "--repo-uri", help="Zip of this repository the cluster can fetch; "
                                           "without it no RayJob is written."),
) -> None:
    """A RayService serving what apply made live, and a RayJob per TuningJob that runs
    `llmops apply --target` on the cluster. Read-only: writes only OUT (and under .llmops/)."""
    from .kuberay import export_kuberay as write_manifests

    with user_errors(directory=directory):
        exported = write_manifests(_project(directory), out, image, repo_uri)
    for path in exported.written:
        console.print(f"wrote {path}", highlight=False, markup=False)
    for note in exported.notes:
        console.print(note, highlight=False, markup=False)


def _mount_subcommands() -> None:
    from .data.cli import app as data_app

    app.add_typer(data_app, name="data", help="Dataset stages (what dvc.yaml runs).")
    app.add_typer(export_app, name="export", help="Manifests for other platforms (KubeRay).")


_mount_subcommands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        errors.print("interrupted; the next apply resumes from the journal")
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as exc:  # noqa: BLE001 - a bug outside any command's own boundary
        try:
            internal_error(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
