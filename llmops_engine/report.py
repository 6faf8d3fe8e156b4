"""What `apply` and `status` tell a person at the end."""

from __future__ import annotations

import json
import shlex

from rich.console import Console

from .engine import Engine
from .execute import ApplyResult
from .loadtest.results import last_load_test, summary_line
from .state.records import ResourceRecord


def print_apply_result(console: Console, errors: Console, engine: Engine, result: ApplyResult) -> int:
    changed = [s for s in result.steps if s.status == "succeeded"]
    for step in result.steps:
        if step.status == "failed":
            errors.print(f"[red]✗ {step.key} failed[/red]", highlight=False)
            errors.print(step.message, highlight=False, markup=False)
        elif step.status == "blocked":
            errors.print(f"[yellow]⊘ {step.key} not applied: {step.message}[/yellow]", highlight=False)
    if not result.failed:
        if changed:
            console.print(f"[green]Apply complete:[/green] {len(changed)} changed, {len(result.steps) - len(changed)} unchanged.")
        else:
            console.print("[green]No changes.[/green] The world matches the specs.")
    else:
        errors.print(f"[red]Apply failed:[/red] {len(result.failed)} resource(s) not reconciled; earlier good state is untouched.")
    _print_endpoints(console, engine)
    return result.exit_code()


def _print_endpoints(console: Console, engine: Engine) -> None:
    records = engine.records()
    for record in records.values():
        endpoint = record.outputs.get("endpoint") if record.kind == "Deployment" else None
        if not endpoint:
            continue
        console.print(f"\n[bold]{record.name}[/bold] serves model {record.outputs.get('model_version', '?')} at {endpoint}")
        for line in usage_lines(engine, records, record):
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def usage_lines(engine: Engine, records: dict[str, ResourceRecord], record: ResourceRecord) -> list[str]:
    """A curl command and an openai SDK snippet that work as printed, asking the deployment a
    question from its own eval split, shaped by its own prompt."""
    endpoint = record.outputs["endpoint"]
    model = record.outputs.get("model_id", record.name)
    auth = record.spec.get("auth")
    env = auth.get("api_keys_env") if isinstance(auth, dict) else None
    lines = []
    demo_key = engine.project.state_dir / "demo-api-key"
    if env and demo_key.is_file():
        lines.append(f"export {env}=$(cat {demo_key.relative_to(engine.project.root)})   # the demo's local key")
    header = f' -H "Authorization: Bearer ${env}"' if env else ""
    messages = example_messages(engine, records, record)
    body = json.dumps({"model": model, "messages": messages}, ensure_ascii=False)
    lines.append(f"curl -s {endpoint}/chat/completions{header} -H 'Content-Type: application/json' -d {shlex.quote(body)}")
    key_expr = f'os.environ["{env}"].split(",")[0]' if env else '"none"'
    code = (
        f'import os, openai; c = openai.OpenAI(base_url="{endpoint}", api_key={key_expr}); '
        # JSON strings, lists and objects are Python literals too, and double quotes keep the
        # shell quoting readable.
        f"print(c.chat.completions.create(model={json.dumps(model)}, "
        f"messages={json.dumps(messages, ensure_ascii=False)}).choices[0].message.content)"
    )
    lines.append(f"python -c {shlex.quote(code)}")
    return lines


def example_messages(engine: Engine, records: dict[str, ResourceRecord], deployment: ResourceRecord) -> list[dict]:
    """Chat messages for a row of the deployment's eval split: the row's input as the system
    message when its prompt uses {input} (the first row that has one: it shows how context
    travels), the instruction as the user turn."""
    prompt = records.get(f"Prompt/{deployment.spec.get('prompt')}")
    uses_input = prompt is not None and "{input}" in str(prompt.spec.get("template", ""))
    from .loadtest.messages import eval_rows

    rows = eval_rows(engine.store, records, deployment.spec, EXAMPLE_ROWS_READ) or _knowledge_questions(engine, records, deployment)
    with_input = [r for r in rows if r.get("input")] if uses_input else []
    row = (with_input or rows or [{"instruction": "Hello! What can you help me with?"}])[0]
    messages = [{"role": "system", "content": row["input"]}] if uses_input and row.get("input") else []
    return messages + [{"role": "user", "content": str(row["instruction"])}]


EXAMPLE_ROWS_READ = 50


def _knowledge_questions(engine: Engine, records: dict[str, ResourceRecord], deployment: ResourceRecord) -> list[dict]:
    """A grounded deployment without an eval split (a base model): its knowledge base's first test question."""
    from .paths import match_files

    knowledge = records.get(f"KnowledgeBase/{deployment.spec.get('knowledge_base')}")
    queries = ((knowledge.spec.get("evaluation") or {}).get("queries") or {}).get("path") if knowledge else None
    files = match_files(engine.project.root, queries).files if queries else []
    try:
        with files[0].open(encoding="utf-8") as handle:
            question = json.loads(handle.readline(1 << 16)).get("question")
    except (IndexError, OSError, ValueError, AttributeError):
        return []  # an example is a courtesy
    return [{"instruction": question}] if isinstance(question, str) else []


def status_rows(engine: Engine) -> list[dict]:
    from .errors import SpecError

    records = engine.records()
    try:
        desired = engine.load()
    except SpecError:
        desired = None
    rows = []
    keys = list(desired.order) if desired else []
    keys += [k for k in sorted(records) if k not in keys]
    for key in keys:
        record = records.get(key)
        fingerprint = desired.fingerprints.get(key) if desired else None
        rows.append(_row(key, record, fingerprint))
    return rows


def _row(key: str, record, desired_fp: str | None) -> dict:
    kind, name = key.split("/", 1)
    if record is None:
        state = "pending"
    elif desired_fp is None:
        state = "orphan"
    elif record.fingerprint != desired_fp:
        state = "out of date" if record.status == "ready" else f"{record.status}: {record.message}"
    else:
        state = record.status if record.status == "ready" else f"{record.status}: {record.message}"
    outputs = record.outputs if record else {}
    return {
        "kind": kind,
        "name": name,
        "fingerprint": (record.fingerprint if record else desired_fp) or "",
        "desired_fingerprint": desired_fp,
        "state": state,
        "applied_at": record.applied_at if record else None,
        "outputs": outputs,
        "summary": _summary(outputs),
    }


def _summary(outputs: dict) -> str:
    shown = []
    for key in ("model_version", "passed", "cases", "train_rows", "eval_rows", "documents", "chunks", "endpoint",
                "template_hash", "final_loss"):
        if key in outputs:
            value = outputs[key]
            value = value[:12] if key == "template_hash" else value
            shown.append(f"{key}={value}")
    if exports := outputs.get("exports"):  # a TuningJob's: adapter, merged, gguf(q8_0)
        shown.append("exports=" + ",".join(f"{name}({entry['type']})" if "type" in entry else name
                                          for name, entry in exports.items()))
    if last := last_load_test(outputs):
        shown.append(f"| {summary_line(last)}")
    return " ".join(shown)
