"""Property: whatever a spec file holds, the loader returns resources or raises SpecError.

Two generators feed it: mutations of real spec text (the shipped specs and the broken-spec
table), which exercise the YAML layer, and spec-shaped structures built from the models' own
field names, which get past YAML and exercise validation and the cross-resource checks. The
seed is fixed (derandomize) and the example counts bound the run, so CI is reproducible.
"""

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from llmops_engine.errors import SpecError
from llmops_engine.specs import KINDS
from llmops_engine.specs.base import Metadata
from llmops_engine.specs.loader import load_resources
from tests.conftest import REPO
from tests.test_loader_errors import CASES

SEEDS = [p.read_text() for p in sorted((REPO / "specs").glob("*.yaml"))] + [c[1] for c in CASES if len(c[1]) < 4096]
YAML_SIGNIFICANT = "{}[]:,&*!|>-#%@`'\"\\?<= \n\t"
FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _field_names() -> list[str]:
    """Every field name (by alias) of every spec model, found by walking the annotations."""
    names: set[str] = set()
    todo: list[type[BaseModel]] = [Metadata, *KINDS.values()]
    seen: set[type] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
            todo.extend(_models_in(info.annotation))
    return sorted(names)


def _models_in(annotation) -> list[type[BaseModel]]:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


FIELD_NAMES = _field_names()
TEXT = st.text(alphabet=st.sampled_from("ab{}()[]*+?|$^.\\:!0 /" + "instruction"), max_size=30)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    TEXT, st.sampled_from(["{instruction}", "{input}", "(a+)+$", "data/*.jsonl", "../x", "/etc/passwd", "qlora",
                           "builtin:tiny-llama", "base:builtin:tiny-llama", "canary", "none", "p", "d", "t"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(FIELD_NAMES) | TEXT, children, max_size=5)),
    max_leaves=25,
)


@st.composite
def spec_documents(draw) -> str:
    documents = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        envelope = {"apiVersion": draw(st.sampled_from(["llmops/v1", "llmops/v2"])),
                    "kind": draw(st.sampled_from([*KINDS, "Nope"])),
                    "metadata": {"name": draw(st.sampled_from(["p", "d", "t", "ev", "api", "Bad_Name"]))},
                    "spec": draw(st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES, max_size=8))}
        documents.append(yaml.safe_dump(envelope, allow_unicode=True))
    return "---\n".join(documents)


@st.composite
def mutated_specs(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        mutation = draw(st.sampled_from(["insert", "delete", "duplicate", "anchor"]))
        if mutation == "insert":
            text = text[:at] + draw(st.text(alphabet=st.sampled_from(YAML_SIGNIFICANT + "ab1"), max_size=5)) + text[at:]
        elif mutation == "delete":
            text = text[:at] + text[at + draw(st.integers(min_value=1, max_value=20)):]
        elif mutation == "duplicate":
            text = text[:at] + text[max(0, at - 40):at] + text[at:]
        else:
            text = text[:at] + draw(st.sampled_from([" &a ", " *a ", " &a [*a] ", "<<: *a\n", " !!binary ", " !!set "])) + text[at:]
    return text


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    (root / "specs").mkdir()
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    return root


def _loads_or_spec_error(root: Path, text: str) -> None:
    (root / "specs" / "fuzz.yaml").write_text(text, encoding="utf-8")
    try:
        resources = load_resources(root, ["specs"])
    except SpecError as error:
        assert error.issues and all(i.line >= 1 and i.file for i in error.issues)
    else:
        assert all(r.file == "specs/fuzz.yaml" for r in resources)


@pytest.mark.slow
@FUZZ
@given(text=mutated_specs())
def test_mutated_yaml_loads_or_fails_cleanly(fuzz_root, text):
    _loads_or_spec_error(fuzz_root, text)


@pytest.mark.slow
@FUZZ
@given(text=spec_documents())
def test_spec_shaped_structures_load_or_fail_cleanly(fuzz_root, text):
    _loads_or_spec_error(fuzz_root, text)


REGEX_PIECES = st.sampled_from(["a", "b", ".", "\\w", "\\d", "\\s", "[a-c]", "[^a]", "(", ")", "(?:", "(?>", "(?=", "(?<=a)",
                                "(?P<g>", "(?(g)a|b)", "\\1", "|", "*", "+", "?", "*?", "++", "{2,}", "{0,3}", "^", "$",
                                "(?i)", "\\b"])


@pytest.mark.slow
@FUZZ
@given(pattern=st.lists(REGEX_PIECES, max_size=14).map("".join))
def test_any_regex_is_judged_without_crashing(pattern):
    from llmops_engine.specs.regexes import regex_problem

    problem = regex_problem(pattern)
    assert problem is None or isinstance(problem, str)


@pytest.mark.slow
@FUZZ
@given(template=st.lists(st.sampled_from(["{", "}", "{{", "}}", "{instruction}", "{input}", "{instruction:>9}",
                                          "{input!r}", "{input.x}", "{0}", "{}", "a", " ", "\n"]), max_size=10).map("".join),
       instruction=TEXT, input=TEXT)
def test_accepted_templates_render_exactly_as_str_format(template, instruction, input):
    from llmops_engine.specs.prompt import parse_template, render_template

    try:
        parse_template(template)
    except ValueError:
        return
    assert render_template(template, {"instruction": instruction, "input": input}) == \
        template.format(instruction=instruction, input=input)
