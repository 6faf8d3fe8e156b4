"""Provider specs, and the Deployments and Evaluations that name a provider's model: each mistake is
reported at its file:line, at validate time, with a message that says what to do (and no secret)."""

import pytest

from llmops_engine.errors import SpecError
from llmops_engine.specs.loader import load_resources
from tests.test_loader_errors import BASE, DEPLOYMENT, _assert_located, _project_with_data

PROVIDER = """\
apiVersion: llmops/v1
kind: Provider
metadata: {{name: gw}}
spec:
  type: openai-compatible
  base_url: {url}
  api_key_env: GW_KEY
  models: {{small: support-api, big: support-big}}
{extra}"""
GOOD_PROVIDER = PROVIDER.format(url="http://127.0.0.1:8000/v1", extra="")
PROVIDED = DEPLOYMENT.replace("model: t", "model: provider:gw/small")
EVALUATION = """\
apiVersion: llmops/v1
kind: Evaluation
metadata: {{name: ev}}
spec:
  model: provider:gw/small
  dataset: d
  prompt: p
  thresholds:
    - {{metric: rouge_l, min: 0.1}}
{extra}"""

CASES = [
    # (case, text, line, path, message fragment)
    ("credentials-in-url", PROVIDER.format(url="http://user:pw@127.0.0.1:8000/v1", extra=""), 6, "spec.base_url",
     "must not carry credentials"),
    ("not-http", PROVIDER.format(url="ftp://127.0.0.1/v1", extra=""), 6, "spec.base_url", "is not an http(s) URL"),
    ("query-in-url", PROVIDER.format(url="'http://127.0.0.1:8000/v1?key=x'", extra=""), 6, "spec.base_url",
     "must not have a query"),
    ("unknown-type", PROVIDER.format(url="http://h/v1", extra="").replace("openai-compatible", "bedrock"), 5,
     "spec.type", "openai-compatible"),
    ("retries-bounded", PROVIDER.format(url="http://h/v1", extra="  max_retries: 99\n"), 9, "spec.max_retries",
     "less than or equal to 10"),
    ("model-id-with-space", PROVIDER.format(url="http://h/v1", extra="").replace("support-big", "'support big'"), 8,
     "spec.models", "not an upstream model id"),
    ("alias-undeclared", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="").replace("gw/small", "gw/smal"),
     14, "spec.model", "has no model alias 'smal'; did you mean 'small'?"),
    ("provider-missing", PROVIDED.format(name="dep", extra=""), 5, "spec.model", "no Provider named 'gw'"),
    ("fallback-cycle", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  fallbacks: [provider:gw/small]\n"),
     18, "spec.fallbacks.0", "a cycle"),
    ("fallback-repeated", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  fallbacks: [provider:gw/big, provider:gw/big]\n"),
     18, "spec.fallbacks.1", "is already fallbacks.0"),
    ("two-local-fallbacks", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  fallbacks: [t, builtin:tiny-llama]\n"),
     18, "spec.fallbacks.1", "at most one, as the last fallback"),
    ("local-fallback-not-last", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  fallbacks: [t, provider:gw/big]\n"),
     18, "spec.fallbacks.0", "at most one, as the last fallback"),
    ("fallback-alias-undeclared", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  fallbacks: [provider:gw/huge]\n"),
     18, "spec.fallbacks.0", "has no model alias 'huge'"),
    ("fallback-tuningjob-missing", GOOD_PROVIDER + "---\n" + PROVIDED.format(name="dep", extra="  fallbacks: [nope]\n"),
     18, "spec.fallbacks.0", "no TuningJob named 'nope'"),
    ("fallbacks-without-provider", DEPLOYMENT.format(name="dep", extra="  fallbacks: [builtin:tiny-llama]\n"),
     9, "spec.fallbacks", "take over when a provider fails"),
    ("eval-provider-without-prompt", GOOD_PROVIDER + "---\n" + EVALUATION.format(extra="").replace("  prompt: p\n", ""),
     13, "spec.prompt", "needs 'prompt'"),
    ("eval-provider-vs-base", GOOD_PROVIDER + "---\n" + EVALUATION.format(extra="  compare_to: base\n"),
     19, "spec.compare_to", "no base model or champion"),
    ("eval-provider-regression", GOOD_PROVIDER + "---\n" + EVALUATION.format(
        extra="  regression: {dataset: d, metrics: [rouge_l]}\n"), 19, "spec.regression", "a provider model has none"),
    ("eval-provider-losses", GOOD_PROVIDER + "---\n" + EVALUATION.format(extra="  metrics: [perplexity]\n"),
     14, "spec.model", "token losses, which a provider"),
    ("eval-variant-provider-losses", GOOD_PROVIDER + "---\n" + EVALUATION.format(extra="").replace(
        "provider:gw/small", "t") + "  metrics: [eval_loss]\n  variants: [{name: hosted, model: provider:gw/big}]\n",
     20, "spec.variants.0.model", "token losses, which a provider"),
    ("eval-provider-variant-base", GOOD_PROVIDER + "---\n" + EVALUATION.format(
        extra="  variants: [{name: b, model: base}]\n"), 19, "spec.variants.0.model", "has no base model"),
]


@pytest.mark.parametrize("case,text,line,path,fragment", CASES, ids=[c[0] for c in CASES])
def test_broken_provider_spec_is_located(make_project, case, text, line, path, fragment):
    root = _project_with_data(make_project, {"base.yaml": BASE, "broken.yaml": text})
    with pytest.raises(SpecError) as info:
        load_resources(root, ["specs"])
    _assert_located(info.value, line, path, fragment)


def test_a_valid_provider_setup_loads_with_its_references(make_project):
    text = (GOOD_PROVIDER + "---\n"
            + PROVIDED.format(name="dep", extra="  fallbacks: [provider:gw/big, t]\n") + "---\n"
            + EVALUATION.format(extra="  variants: [{name: tuned, model: t}, {name: big, model: provider:gw/big}]\n"))
    root = _project_with_data(make_project, {"base.yaml": BASE, "ok.yaml": text})
    by_key = {r.key: r for r in load_resources(root, ["specs"])}
    deployment, evaluation = by_key["Deployment/dep"], by_key["Evaluation/ev"]
    assert {(r.kind, r.name) for r in deployment.references()} >= {("Provider", "gw"), ("TuningJob", "t")}
    assert ("Provider", "gw") in {(r.kind, r.name) for r in evaluation.references()}
    assert evaluation.spec.baselines() == []  # a provider model has no base: no default baseline
    assert by_key["Provider/gw"].spec.secret_env() == ["GW_KEY"]
    assert by_key["Provider/gw"].spec.base_url == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize("prompt_format,history,expected", [
    ("text", None, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: hi (ctx)"}]),
    ("chat", [{"role": "system", "content": "ctx"}, {"role": "user", "content": "a"},
              {"role": "assistant", "content": "b"}],
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
      {"role": "assistant", "content": "b"}, {"role": "user", "content": "Q: hi (ctx)"}]),
])
def test_a_prompt_becomes_the_same_parts_as_chat_messages(prompt_format, history, expected):
    from llmops_engine.specs.prompt import PromptSpec

    prompt = PromptSpec(format=prompt_format, system="Be brief.", template="Q: {instruction} ({input})")
    example = {"instruction": "hi", "input": "ctx", **({"history": history} if history is not None else {})}
    assert prompt.messages_for(example) == expected
