"""Gates and plans see providers. An Evaluation scores a provider's model as its candidate or as a variant,
on the same examples, rendered as a prompt-only Deployment renders them, in the same table;
a provider that fails makes the evaluation fail closed with a clear error (no key in it). A Provider's
apply checks its pinned models are listed; `plan` reports one that is not, bounded and cached."""

import json
import secrets

import pytest

from llmops_engine.controllers.evaluation import EvaluationController
from llmops_engine.errors import EvaluationError, GateFailed
from tests.eval_helpers import make_context, publish_dataset, resource
from tests.provider_server import FakeProvider

KEY_ENV = "LLMOPS_TEST_EVAL_PROVIDER_KEY"
KEY = "sk-eval-" + secrets.token_hex(8)
ROWS = [{"instruction": "Where is my invoice?", "input": "", "output": "echo: Q: Where is my invoice?"},
        {"instruction": "Can I get a refund?", "input": "", "output": "Yes, within 14 days."},
        {"instruction": "When is support open?", "input": "", "output": "echo: Q: When is support open?"}]


def _context(tmp_path, url: str, **evaluation):
    provider = resource("Provider", "fake", type="openai-compatible", base_url=url, api_key_env=KEY_ENV,
                        models={"small": "support-api", "big": "support-big"}, max_retries=1, timeout_s=2)
    spec = {"model": "provider:fake/small", "dataset": "d", "prompt": "p",
            "thresholds": [{"metric": "exact_match", "min": 0.6}], **evaluation}
    ctx = make_context(tmp_path, [provider, resource("Prompt", "p", template="Q: {instruction}", system="Be brief."),
                                  resource("Dataset", "d", source={"path": "data/x.jsonl"},
                                           columns={"instruction": "q", "output": "a"}),
                                  resource("Evaluation", "ev", **spec)])
    publish_dataset(ctx, "d", ROWS)
    return ctx


def test_a_provider_candidate_and_a_provider_variant_are_scored_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeProvider(models=["support-api", "support-big"], key=KEY) as upstream:
        ctx = _context(tmp_path, upstream.url, variants=[{"name": "big", "model": "provider:fake/big"}],
                       generation={"max_new_tokens": 16})
        staging = tmp_path / "staging"
        staging.mkdir()
        outputs = EvaluationController().apply(ctx.resources["Evaluation/ev"], ctx, staging)
        sent = [body for path, _, body in upstream.requests if path == "/v1/chat/completions"]
    assert outputs["passed"] and outputs["model_fingerprint"] == "provider:fake/small@support-api"
    assert outputs["metrics"]["exact_match"] == pytest.approx(2 / 3)
    assert outputs["variant_metrics"]["big"]["exact_match"] == pytest.approx(2 / 3)
    assert sorted(body["model"] for body in sent) == ["support-api"] * 3 + ["support-big"] * 3
    assert all(body["messages"][0] == {"role": "system", "content": "Be brief."} for body in sent)
    assert all(body["temperature"] == 0.0 and body["max_tokens"] == 16 for body in sent)  # greedy, capped
    assert "big" in (staging / "report.md").read_text() and (staging / "comparison.png").is_file()
    assert KEY not in json.dumps(outputs) and not any(KEY.encode() in p.read_bytes() for p in staging.rglob("*") if p.is_file())


def test_a_failing_provider_fails_the_evaluation_closed_without_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeProvider(models=["support-api"], key=KEY) as upstream:
        upstream.script(["500", "500"] * 3)
        ctx = _context(tmp_path, upstream.url)
        staging = tmp_path / "staging"
        staging.mkdir()
        with pytest.raises(EvaluationError) as info:
            EvaluationController().apply(ctx.resources["Evaluation/ev"], ctx, staging)
    assert "provider:fake/small" in str(info.value) and "HTTP 500" in str(info.value) and "after 2 attempts" in str(info.value)
    assert KEY not in str(info.value)


def test_a_hosted_model_below_its_threshold_fails_the_gate(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeProvider(models=["support-api"], key=KEY) as upstream:
        ctx = _context(tmp_path, upstream.url, thresholds=[{"metric": "exact_match", "min": 0.9}])
        staging = tmp_path / "staging"
        staging.mkdir()
        with pytest.raises(GateFailed, match="gate failed"):
            EvaluationController().apply(ctx.resources["Evaluation/ev"], ctx, staging)


# --- the Provider controller: apply checks, plan drift ------------------------------------------
def _provider(url: str):
    return resource("Provider", "fake", type="openai-compatible", base_url=url, api_key_env=KEY_ENV,
                    models={"small": "support-api"}, timeout_s=2)


def _record(resource_, project):
    from llmops_engine.state.records import ResourceRecord

    return ResourceRecord(kind="Provider", name=resource_.name, fingerprint="f" * 64, spec=resource_.normalized_spec(),
                          outputs={}, status="ready")


@pytest.mark.parametrize("case,key,expected", [
    ("listed", KEY, None),
    ("wrong-key", "sk-wrong-" + secrets.token_hex(4), "provider_auth_failed"),
    ("key-unset", None, "provider_auth_failed"),
    ("unlisted", KEY, "provider_model_not_found"),
    ("unreachable", KEY, "provider_unreachable"),
])
def test_provider_apply_checks_the_pinned_models_are_listed(tmp_path, monkeypatch, case, key, expected):
    from llmops_engine.controllers.provider import ProviderController
    from llmops_engine.errors import ProviderError

    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)
    with FakeProvider(models=["other"] if case == "unlisted" else ["support-api"], key=KEY) as upstream:
        url = "http://127.0.0.1:9/v1" if case == "unreachable" else upstream.url
        provider = _provider(url)
        ctx = make_context(tmp_path, [provider])
        if expected is None:
            outputs = ProviderController().apply(provider, ctx, tmp_path)
            assert outputs["models"] == {"small": "support-api"} and outputs["listed"] == 1
            return
        with pytest.raises(ProviderError) as info:
            ProviderController().apply(provider, ctx, tmp_path)
    assert info.value.code == expected
    assert KEY not in str(info.value) and (key is None or key not in str(info.value))


def test_plan_reports_an_unlisted_pinned_model_asks_once_a_minute_and_never_fails(tmp_path, monkeypatch):
    import time

    from llmops_engine.controllers.provider import ProviderController
    from llmops_engine.errors import LiveStateUnknown
    from llmops_engine.project import Project, ProjectSettings

    project = Project(tmp_path, ProjectSettings())
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeProvider(models=["support-api"], key=KEY) as upstream:
        record = _record(_provider(upstream.url), project)
        assert ProviderController().observe(record, project) is None
        upstream.models = ["support-v2"]
        assert ProviderController().observe(record, project) is None  # cached: asked once a minute
        assert upstream.attempts("/v1/models") == 1
        for cache in (project.state_dir / "providers").iterdir():
            cache.unlink()
        drift = ProviderController().observe(record, project)
        assert "no longer lists the pinned model 'support-api'" in drift
        upstream.script(["hang"])
        for cache in (project.state_dir / "providers").iterdir():
            cache.unlink()
        began = time.monotonic()
        with pytest.raises(LiveStateUnknown, match="could not ask provider:fake/small"):
            ProviderController().observe(record, project)
        assert time.monotonic() - began < 3 + 3  # bounded (3 s): a hanging provider never stalls a plan
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LiveStateUnknown, match="is not set here"):
        ProviderController().observe(record, project)


def test_a_gated_provider_deployment_serves_the_model_and_prompt_its_evaluation_scored(tmp_path, monkeypatch):
    from llmops_engine.controllers.deployment import DeploymentController

    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeProvider(models=["support-api", "support-big"], key=KEY) as upstream:
        ctx = _context(tmp_path, upstream.url)
        prompt = ctx.resources["Prompt/p"].spec
        deployment = resource("Deployment", "relay", model="provider:fake/small", prompt="p", gate="ev", auth="none")
        ctx.resources[deployment.key] = deployment
        scored = {"passed": True, "model_fingerprint": "provider:fake/small@support-api",
                  "template_hash": prompt.template_hash()}
        for outputs, error in [({**scored, "model_fingerprint": "provider:fake/big@support-big"}, "another model"),
                               ({**scored, "template_hash": "0" * 64}, "another prompt"),
                               ({**scored, "passed": False}, "did not pass")]:
            ctx.outputs["Evaluation/ev"] = outputs
            with pytest.raises(GateFailed, match=error):
                DeploymentController()._target(deployment, ctx)
        ctx.outputs["Evaluation/ev"] = scored
        target = DeploymentController()._target(deployment, ctx)
    assert target.label == "provider:fake/small" and target.upstream["model"] == "support-api"
    assert KEY not in json.dumps(target.to_json())  # the key's name travels, never its value
