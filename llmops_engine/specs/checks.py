"""Checks that need the whole spec set: names, references, cycles, paths, prompt identity, chat prompts,
tuning data, routes, and the files a Guardrail reads (its cases and schema files)."""

from __future__ import annotations

from collections import defaultdict
from itertools import takewhile
from pathlib import Path, PurePosixPath

from ..dvcrecords import tracked_files
from ..errors import SpecIssue
from .deployment import GATEWAY_APP, GATEWAY_PATHS, GATEWAY_ROUTE
from .resource import Resource, key_of


def check_resources(root: Path, resources: list[Resource], cache_dir: Path | None = None) -> list[SpecIssue]:
    """`cache_dir`: where answers that cost a subprocess (Dataset SQL) may be kept."""
    issues: list[SpecIssue] = []
    by_key = _unique(resources, issues)
    _references(by_key, issues)
    _dataset_sql(by_key, issues, cache_dir)
    _paths(root, resources, issues)
    _prompt_identity(by_key, issues)
    _chat_prompts(by_key, issues)
    _context_prompts(by_key, issues)
    _tuning_data(by_key, issues)
    _route_prefixes(by_key, issues)
    _provider_models(by_key, issues)
    _guardrail_files(root, by_key, issues)
    _engine_exports(by_key, issues)
    if not issues:
        from ..graph import find_cycle

        cycle = find_cycle(by_key)
        if cycle:
            first = by_key[cycle[0]]
            issues.append(_issue(first, ("spec",), f"dependency cycle: {' -> '.join(cycle)}"))
    return issues


def _issue(resource: Resource, path: tuple, message: str) -> SpecIssue:
    line, col = resource.position(path)
    return SpecIssue(resource.file, line, col, ".".join(str(p) for p in path), message)


def _unique(resources: list[Resource], issues: list[SpecIssue]) -> dict[str, Resource]:
    by_key: dict[str, Resource] = {}
    for resource in resources:
        first = by_key.get(resource.key)
        if first is not None:
            message = f"duplicate {resource.kind} name '{resource.name}' (first defined at {first.file}:{first.line})"
            issues.append(_issue(resource, ("metadata", "name"), message))
            continue
        by_key[resource.key] = resource
    return by_key


def _references(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    names_by_kind: dict[str, set[str]] = defaultdict(set)
    kinds_by_name: dict[str, set[str]] = defaultdict(set)
    for resource in by_key.values():
        names_by_kind[resource.kind].add(resource.name)
        kinds_by_name[resource.name].add(resource.kind)
    for resource in by_key.values():
        for ref in resource.references():
            if ref.name in names_by_kind[ref.kind]:
                continue
            path = tuple(ref.field.split("."))
            other = kinds_by_name.get(ref.name)
            if other:
                message = f"'{ref.name}' is a {', '.join(sorted(other))}, but {ref.field} needs a {ref.kind}"
            else:
                from difflib import get_close_matches

                hint = get_close_matches(ref.name, names_by_kind[ref.kind], n=1)
                known = f"did you mean '{hint[0]}'?" if hint else f"define a {ref.kind} named '{ref.name}'"
                message = f"no {ref.kind} named '{ref.name}'; {known}"
            issues.append(_issue(resource, path, message))


def _dataset_sql(by_key: dict[str, Resource], issues: list[SpecIssue], cache_dir: Path | None) -> None:
    """Parse every Dataset SQL with DuckDB (in a subprocess, cached: sqlfacts.py): a problem is an
    issue at its field; an sql source's file patterns become its path inputs."""
    found = [(resource, field, role, text) for resource in by_key.values() if resource.kind == "Dataset"
             for field, role, text in resource.spec.sql_texts()]
    if not found:
        return
    from .sqlfacts import scan_all

    cache = cache_dir / "sql" if cache_dir else None
    secrets = sorted({env for resource in by_key.values() for env in resource.spec.secret_env()})
    answers = scan_all([(text, role) for _, _, role, text in found], cache, secrets)
    for (resource, field, role, text), facts in zip(found, answers):
        if facts.problem:
            issues.append(_issue(resource, ("spec", *field), facts.problem + _sql_position(text, facts.offset)))
        elif role == "source":
            resource.spec.set_sql_patterns(facts.patterns)


def _sql_position(text: str, offset: int | None) -> str:
    if offset is None or "\n" not in text.strip():
        return "" if offset is None else f" (at character {offset + 1} of the SQL)"
    before = text[:offset]
    return f" (SQL line {before.count(chr(10)) + 1}, column {offset - before.rfind(chr(10))})"


def _paths(root: Path, resources: list[Resource], issues: list[SpecIssue]) -> None:
    """Every path a spec reads stays inside the repository, and a required one names a file
    now or is tracked by a DVC record (a fresh clone lacks DVC-tracked files until apply)."""
    from ..paths import match_files

    tracked: list[str] | None = None
    for resource in resources:
        for path in resource.spec.path_inputs():
            field = ("spec", *path.field)
            matches = match_files(root, path.pattern)
            if matches.problem:
                issues.append(_issue(resource, field, matches.problem))
                continue
            if not path.must_exist or matches.files:
                continue
            tracked = list(tracked_files(root)) if tracked is None else tracked
            if not _dvc_tracked(path.pattern, tracked):
                message = (f"'{path.pattern}' matches no file, and no DVC record (*.dvc) tracks it; "
                           "fix the path, or add the file (`dvc add` it if it should not live in git)")
                issues.append(_issue(resource, field, message))


def _dvc_tracked(pattern: str, tracked: list[str]) -> bool:
    """Whether a DVC record names a file the pattern would match, or a directory holding it."""
    from ..paths import is_glob, pattern_matches

    literal = "/".join(takewhile(lambda part: not is_glob(part), PurePosixPath(pattern).parts))
    return any(pattern_matches(path, pattern) or f"{literal}/".startswith(f"{path}/") for path in tracked)


def _prompt_identity(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A Deployment must render requests exactly as its model was trained."""
    for resource in by_key.values():
        if resource.kind != "Deployment" or resource.spec.allow_prompt_mismatch:
            continue
        job = by_key.get(key_of("TuningJob", resource.spec.model))
        served = by_key.get(key_of("Prompt", resource.spec.prompt))
        trained = by_key.get(key_of("Prompt", job.spec.prompt)) if job else None
        if not (served and trained) or served.spec.template_hash() == trained.spec.template_hash():
            continue
        message = (
            f"prompt '{served.name}' differs from '{trained.name}', which TuningJob '{job.name}' was trained with; "
            "use the training prompt, or set allow_prompt_mismatch: true"
        )
        issues.append(_issue(resource, ("spec", "prompt"), message))


def _chat_prompts(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A chat Prompt renders through the base model's chat template: a model known to have none
    (the byte-level tiny-llama) is reported at the line naming the prompt."""
    from .prompt import REFS_WITHOUT_CHAT_TEMPLATE

    for resource in by_key.values():
        if resource.kind == "TuningJob":
            ref = resource.spec.base_model
        elif resource.kind == "Evaluation" and resource.spec.model.startswith("base:"):
            ref = resource.spec.model.removeprefix("base:")
        else:
            continue
        prompt = by_key.get(key_of("Prompt", resource.spec.prompt))
        if prompt is None or prompt.spec.format != "chat" or ref not in REFS_WITHOUT_CHAT_TEMPLATE:
            continue
        message = (f"Prompt '{prompt.name}' has format: chat, but {ref} has no chat template to render it "
                   "through; use a Prompt with format: text, or a base model with a chat template "
                   "(e.g. builtin:smollm2-135m-instruct)")
        issues.append(_issue(resource, ("spec", "prompt"), message))


def _context_prompts(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A Prompt with {context} takes a knowledge base's chunks, and a knowledge base needs a Prompt
    with {context} to put them in: each side without the other is reported where it is named."""
    for resource in by_key.values():
        for path, prompt_name, knowledge_base in _prompt_uses(resource, by_key):
            prompt = by_key.get(key_of("Prompt", prompt_name or ""))
            if prompt is None or prompt.spec.uses_context() == (knowledge_base is not None):
                continue
            if knowledge_base is None:
                message = (f"Prompt '{prompt.name}' uses {{context}}, which only a knowledge base fills; "
                           "add knowledge_base: here, or use a Prompt without {context}")
            else:
                message = (f"Prompt '{prompt.name}' has no {{context}} placeholder, so the chunks KnowledgeBase "
                           f"'{knowledge_base}' retrieves would go nowhere; use a Prompt with {{context}}")
            issues.append(_issue(resource, path, message))


def _prompt_uses(resource: Resource, by_key: dict[str, Resource]) -> list[tuple[tuple, str | None, str | None]]:
    """(field path, prompt name, knowledge base name) for each place a resource renders a Prompt."""
    spec = resource.spec
    if resource.kind == "Deployment":
        return [(("spec", "prompt"), spec.prompt, spec.knowledge_base)]
    if resource.kind == "TuningJob":
        return [(("spec", "prompt"), spec.prompt, None)]
    if resource.kind == "Evaluation":
        uses = [(("spec", "prompt"), spec.prompt, None)]
        for index, variant in enumerate(spec.variants):
            field = ("spec", "variants", index, "prompt" if variant.prompt else "knowledge_base")
            own = variant.prompt or _tuning_prompt(variant.tuning_job(), by_key)
            uses.append((field, own or spec.prompt or _tuning_prompt(spec.model, by_key), variant.knowledge_base))
        return uses
    return []


def _tuning_prompt(job_name: str | None, by_key: dict[str, Resource]) -> str | None:
    job = by_key.get(key_of("TuningJob", job_name or ""))
    return job.spec.prompt if job else None


def _tuning_data(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A TuningJob needs train rows; an eval-only Dataset (eval_fraction 1.0) has none."""
    for resource in by_key.values():
        if resource.kind != "TuningJob":
            continue
        dataset = by_key.get(key_of("Dataset", resource.spec.dataset))
        if dataset is not None and dataset.spec.split.eval_only():
            message = (f"Dataset '{dataset.name}' is eval-only (split.eval_fraction: 1.0), so it has no train rows; "
                       "tune on a Dataset with a train split, or lower its eval_fraction")
            issues.append(_issue(resource, ("spec", "dataset"), message))


ENGINE_EXPORTS = {"llama-cpp": "gguf", "vllm": "merged"}  # the export of a TuningJob each engine runs


def _engine_exports(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A Deployment's engine runs its TuningJob's weights in the engine's format: it must export them."""
    for resource in by_key.values():
        needed = ENGINE_EXPORTS.get(getattr(resource.spec, "engine", None))
        job = by_key.get(key_of("TuningJob", resource.spec.model)) if resource.kind == "Deployment" and needed else None
        if job is None or needed in job.spec.export or (needed == "merged" and job.spec.method == "full"):
            continue
        message = (f"engine {resource.spec.engine} runs the {needed} export, and TuningJob '{job.name}' exports "
                   f"{', '.join(job.spec.export)}: add {needed} to its export")
        issues.append(_issue(resource, ("spec", "engine"), message))


def _route_prefixes(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """Serve routes one prefix to one app: a prefix taken twice, or one the project's gateway
    answers ("/", "/v1", ...), would silently send requests to the wrong deployment."""
    field = ("spec", "route_prefix")
    first_at: dict[str, Resource] = {}
    for resource in by_key.values():
        if resource.kind == "Deployment" and resource.name == GATEWAY_APP:
            issues.append(_issue(resource, ("metadata", "name"), f"'{GATEWAY_APP}' is the name of the project's gateway; "
                                 "choose another name for this deployment"))
        prefix = getattr(resource.spec, "route_prefix", None) if resource.kind == "Deployment" else None
        if prefix is None:
            continue
        if prefix == GATEWAY_ROUTE or any(prefix == p or prefix.startswith(p + "/") for p in GATEWAY_PATHS):
            message = (f"route_prefix '{prefix}' is taken by the project's gateway (every deployment is served at "
                       f"/v1, `model` selects it); remove route_prefix or pick another prefix, e.g. '/{resource.name}'")
            issues.append(_issue(resource, field, message))
            continue
        first = first_at.setdefault(prefix, resource)
        if first is not resource:
            line, _ = first.position(field)
            here, _ = resource.position(field)
            message = (f"route_prefix '{prefix}' is used by Deployment '{first.name}' ({first.file}:{line}) and "
                       f"Deployment '{resource.name}' ({resource.file}:{here}); give each deployment its own prefix")
            issues.append(_issue(resource, field, message))


def _provider_models(by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """Each provider:<name>/<alias> names an alias its Provider declares (a missing Provider is
    reported by the reference check)."""
    from .provider import provider_ref

    for resource in by_key.values():
        for path, model in _model_fields(resource):
            named = provider_ref(model)
            provider = by_key.get(key_of("Provider", named[0])) if named else None
            if provider is None or named[1] in provider.spec.models:
                continue
            from difflib import get_close_matches

            aliases = sorted(provider.spec.models)
            hint = get_close_matches(named[1], aliases, n=1)
            known = f"did you mean '{hint[0]}'?" if hint else f"its aliases: {', '.join(aliases)}"
            issues.append(_issue(resource, path, f"Provider '{provider.name}' has no model alias '{named[1]}'; {known}"))


def _model_fields(resource: Resource) -> list[tuple[tuple, str]]:
    """(field path, value) of every place a resource names a model."""
    spec = resource.spec
    if resource.kind == "Deployment":
        return [(("spec", "model"), spec.model)] + [(("spec", "fallbacks", i), f) for i, f in enumerate(spec.fallbacks)]
    if resource.kind == "Evaluation":
        return [(("spec", "model"), spec.model)] + [(("spec", "variants", i, "model"), v.model)
                                                     for i, v in enumerate(spec.variants)]
    return []


def _guardrail_files(root: Path, by_key: dict[str, Resource], issues: list[SpecIssue]) -> None:
    """A Guardrail's schema files and cases file are read now (both bounded in size), so a bad
    file is a `validate` error at the spec line naming it, and a bad case one at the case's own
    file:line, rather than a failed apply. A file that does not exist is the path check's to report."""
    from ..errors import GuardrailError
    from ..guardrails.cases import scan_cases
    from ..guardrails.schema_file import read_schema
    from ..paths import match_files

    for resource in by_key.values():
        if resource.kind != "Guardrail":
            continue
        spec = resource.spec
        for index, path in spec.schema_paths():
            try:
                if match_files(root, path).files:
                    read_schema(root, path)
            except GuardrailError as exc:
                issues.append(_issue(resource, ("spec", "output", index, "schema_path"), str(exc)))
        if spec.tests is None or not match_files(root, spec.tests.path).files:
            continue
        field = ("spec", "tests", "path")
        try:
            problems = scan_cases(root, spec.tests.path, spec.check_stages())[1]
        except GuardrailError as exc:
            issues.append(_issue(resource, field, str(exc)))
            continue
        line, _ = resource.position(field)
        issues += [SpecIssue(spec.tests.path, number, 1, "", f"{message} (a case of Guardrail '{resource.name}', "
                                                              f"{resource.file}:{line})") for number, message in problems]
