"""Guardrail specs through the real loader: a good policy loads into the JSON serving runs, and
every mistake (a bad or catastrophic regex, an unknown entity, an empty policy, json_schema on
input, an empty deny list, a bad limit or schema, a key of another check) is an error at its
own file:line, with what to do."""

import json

import pytest

from llmops_engine.errors import SpecError
from llmops_engine.specs.loader import load_resources

GOOD = """
apiVersion: llmops/v1
kind: Guardrail
metadata: {name: support-safety}
spec:
  input:
    - {check: max_chars, limit: 4000}
    - {check: max_tokens, limit: 1024}
    - {check: regex, pattern: "(?i)ignore (all )?previous instructions", action: block}
    - {check: pii, entities: [email, phone, credit_card, iban], action: mask}
    - {check: regex, name: no-sql, pattern: "(?i)drop table", action: flag}
  output:
    - {check: pii, entities: [email, credit_card]}
    - {check: deny_list, words: [password123]}
    - check: json_schema
      action: flag
      schema: {type: object, required: [answer], properties: {answer: {type: string}}}
"""


def load(make_project, text, extra_files=None):
    root = make_project({"guard.yaml": text})
    for name, content in (extra_files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return load_resources(root, ["specs"])


def errors(make_project, text, extra_files=None):
    with pytest.raises(SpecError) as caught:
        load(make_project, text, extra_files)
    return [str(issue) for issue in caught.value.issues]


def test_a_good_policy_loads_with_default_ids_and_actions(make_project):
    (resource,) = load(make_project, GOOD)
    policy = resource.spec.policy(resource.name)
    assert [c["id"] for c in policy["input"]] == ["input-max-chars", "input-max-tokens", "input-regex", "input-pii", "no-sql"]
    assert [c["id"] for c in policy["output"]] == ["output-pii", "output-deny-list", "output-json-schema"]
    assert [c["action"] for c in policy["output"]] == ["mask", "block", "flag"]  # pii masks by default
    assert policy["input"][1]["tokenizer"] == "builtin:smollm2-135m-instruct"
    assert policy["input"][2]["max_match_chars"] == 256
    assert policy["output"][2]["schema"]["required"] == ["answer"]
    assert json.loads(json.dumps(policy)) == policy  # goes into a Ray Serve user_config


def test_repeated_checks_get_numbered_ids(make_project):
    text = GOOD.replace('{check: regex, name: no-sql, pattern: "(?i)drop table", action: flag}',
                        '{check: regex, pattern: "(?i)drop table", action: flag}')
    (resource,) = load(make_project, text)
    assert [c["id"] for c in resource.spec.policy("g")["input"]][2:] == ["input-regex", "input-pii", "input-regex-2"]


def guard(checks: str, stage: str = "input") -> str:
    return f"""
apiVersion: llmops/v1
kind: Guardrail
metadata: {{name: g}}
spec:
  {stage}:
{checks}
"""


@pytest.mark.parametrize("checks,line,expected", [
    ('    - {check: regex, pattern: "(a+)+$"}', 6, "spec.input.0.pattern: regular expression can backtrack catastrophically"),
    ('    - {check: regex, pattern: "(unclosed"}', 6, "spec.input.0.pattern: not a valid regular expression"),
    ('    - {check: regex, pattern: "x*"}', 6, "matches empty text"),
    ('    - {check: pii, entities: [email, credit_crad]}', 6, "spec.input.0.entities.1: unknown entity 'credit_crad'; did you mean 'credit_card'?"),
    ('    - {check: pii, entities: []}', 6, "spec.input.0.entities: list at least one entity"),
    ('    - {check: deny_list, words: []}', 6, "spec.input.0.words: the deny list is empty"),
    ('    - {check: max_chars, limit: 0}', 6, "spec.input.0.limit: Input should be greater than 0"),
    ('    - {check: max_tokens, limit: -5}', 6, "spec.input.0.limit: Input should be greater than 0"),
    ('    - {check: max_tokens, limit: 5, tokenizer: "hf:x/y"}', 6, "spec.input.0.tokenizer: unknown tokenizer 'hf:x/y'"),
    ('    - {check: max_chars, limit: 10, action: mask}', 6, "spec.input.0.action: a max_chars check cannot mask"),
    ('    - {check: regx, pattern: a}', 6, "spec.input.0.check: unknown check 'regx'; did you mean 'regex'?"),
    ('    - {check: regex, patern: a}', 6, "spec.input.0.patern: unknown key 'patern'; did you mean 'pattern'?"),
    ('    - {check: regex, pattern: a, limit: 3}', 6, "spec.input.0.limit: 'limit' does not apply to a regex check"),
    ('    - {check: regex}', 6, "spec.input.0.pattern: a regex check needs 'pattern'"),
    ('    - {check: json_schema, schema: {type: object}}', 6, "spec.input.0.check: json_schema checks the model's answer; move it under output"),
    ('    - {check: max_chars, limit: 5}\n    - {check: max_chars, name: input-max-chars, limit: 6}', 7,
     "spec.input.1.name: check id 'input-max-chars' is used twice"),
])
def test_spec_mistakes_are_reported_at_their_line(make_project, checks, line, expected):
    (issue,) = errors(make_project, guard(checks))
    assert issue.startswith(f"specs/guard.yaml:{line}:") and expected in issue, issue


@pytest.mark.parametrize("schema,expected", [
    ("{type: objekt}", "not a valid JSON Schema"),
    ('{$ref: "https://example.com/s.json"}', "points outside the schema"),
    ('{type: string, pattern: "(a|a)*b"}', "pattern '(a|a)*b': regular expression can backtrack catastrophically"),
    ("{type: object, properties: {a: {type: string}}, required: 3}", "not a valid JSON Schema"),
])
def test_bad_output_schemas_are_reported_at_their_line(make_project, schema, expected):
    checks = f"    - {{check: max_chars, limit: 9}}\n    - check: json_schema\n      schema: {schema}"
    (issue,) = errors(make_project, guard(checks, "output"))
    assert issue.startswith("specs/guard.yaml:8:") and "spec.output.1.schema" in issue and expected in issue, issue


def test_an_empty_policy_and_a_missing_cases_file_are_reported(make_project):
    text = "apiVersion: llmops/v1\nkind: Guardrail\nmetadata: {name: g}\nspec:\n  tests: {path: guardrails/none.jsonl}\n"
    issues = errors(make_project, text)
    assert any(i.startswith("specs/guard.yaml:4:") and "the policy has no checks" in i for i in issues), issues
    (missing,) = errors(make_project, guard("    - {check: max_chars, limit: 9}") + "  tests: {path: guardrails/none.jsonl}\n")
    assert missing.startswith("specs/guard.yaml:7:") and "'guardrails/none.jsonl' matches no file" in missing


def test_paths_are_confined_to_the_repository(make_project):
    (issue,) = errors(make_project, guard("    - {check: json_schema, schema_path: ../outside.json}", "output"))
    assert issue.startswith("specs/guard.yaml:6:") and "contains '..'" in issue


def test_schema_path_and_cases_feed_the_fingerprint(make_project):
    text = guard("    - {check: json_schema, schema_path: schemas/answer.json}", "output") + "  tests: {path: g/cases.jsonl}\n"
    case = '{"stage": "output", "text": "{}", "expect": "pass"}'
    (resource,) = load(make_project, text, {"schemas/answer.json": "{}", "g/cases.jsonl": case})
    assert resource.spec.repo_paths() == ["schemas/answer.json", "g/cases.jsonl"]


def test_catastrophic_regex_is_refused_quickly_even_in_a_large_policy(make_project):
    checks = "\n".join(f'    - {{check: regex, name: r{i}, pattern: "n{i}|(a+)+$"}}' for i in range(40))
    issues = errors(make_project, guard(checks))
    assert len(issues) == 40 and all("catastrophically" in i for i in issues)
    assert issues[0].startswith("specs/guard.yaml:6:") and issues[-1].startswith("specs/guard.yaml:45:")
