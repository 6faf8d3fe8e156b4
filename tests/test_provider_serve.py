"""Prompt-only deployments through the real engine on a real Ray Serve (127.0.0.1), in front of
two real upstreams: a fault-injecting OpenAI-compatible server (tests/provider_server.py), and a
second llmops deployment. Our keys, the Deployment's Prompt, streaming relayed as the provider
sends it, usage, fallbacks that say who answered, plan drift when the provider stops listing a
pinned model (apply then refuses, the live version keeps serving), and the provider's key in
no record, artifact, log or plan."""

import json
import secrets
import time
from pathlib import Path

import httpx
import pytest

from llmops_engine.engine import Engine
from llmops_engine.errors import ProviderError
from llmops_engine.project import Project, ServeSettings, load_project
from llmops_engine.serving.deploy import undeploy
from llmops_engine.serving.logs import log_path
from tests.provider_server import FakeProvider
from tests.test_serve_live import _serve_port

pytestmark = pytest.mark.slow

KEYS_ENV, PROVIDER_KEY_ENV = "LLMOPS_TEST_RELAY_KEYS", "LLMOPS_TEST_UPSTREAM_KEY"
API_KEY, PROVIDER_KEY = "sk-relay-" + secrets.token_hex(8), "sk-upstream-" + secrets.token_hex(8)
PROMPT = """\
apiVersion: llmops/v1
kind: Prompt
metadata: {name: brief}
spec:
  system: Answer briefly.
  template: "Question: {instruction}"
"""
PROVIDER = """\
apiVersion: llmops/v1
kind: Provider
metadata: {name: %(name)s}
spec:
  type: openai-compatible
  base_url: %(url)s
  api_key_env: %(key_env)s
  models: {%(alias)s: %(model)s}
  timeout_s: 2
  max_retries: 1
"""
DEPLOYMENT = """\
apiVersion: llmops/v1
kind: Deployment
metadata: {name: %(name)s}
spec:
  model: %(model)s
  prompt: brief
  gate: null
  rollout: {strategy: rolling}
  auth: {api_keys_env: %(keys_env)s}
  limits: {max_new_tokens: 8}
%(extra)s"""
QUESTION = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture
def served(ray_project, tmp_path, monkeypatch):
    import ray

    from llmops_engine import raycluster

    info = raycluster.ensure_cluster(ray_project)
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    monkeypatch.setenv("RAY_DASHBOARD_URL", info.dashboard_url)
    monkeypatch.setenv("RAY_AUTH_TOKEN", raycluster.token_path(ray_project).read_text().strip())
    monkeypatch.setenv(KEYS_ENV, API_KEY)
    monkeypatch.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
    (tmp_path / "specs").mkdir(exist_ok=True)
    (tmp_path / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    (tmp_path / "specs" / "prompt.yaml").write_text(PROMPT)
    port = _serve_port(ray_project)
    loaded = load_project(tmp_path)
    project = Project(tmp_path, loaded.settings.model_copy(update={"serve": ServeSettings(port=port)}))
    names: list[str] = []
    yield project, f"http://127.0.0.1:{port}/v1", names
    for name in names:
        undeploy(project, name)


def write_specs(project: Project, name: str, text: str) -> None:
    (project.root / "specs" / f"{name}.yaml").write_text(text)


def apply(project: Project):
    return Engine(project, report=lambda line: None).apply()


def ask(url: str, model: str, **extra) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": model, "messages": QUESTION, "max_tokens": 8, **extra}, timeout=60)


def test_a_provider_deployment_relays_streams_falls_back_and_watches_deprecation(served, monkeypatch, ray_project):
    project, url, names = served
    with FakeProvider(models=["support-api", "support-v2"], key=PROVIDER_KEY) as upstream:
        write_specs(project, "provider", PROVIDER % {"name": "hosted", "url": upstream.url, "key_env": PROVIDER_KEY_ENV,
                                                     "alias": "small", "model": "support-api"})
        write_specs(project, "relay", DEPLOYMENT % {"name": "relay", "model": "provider:hosted/small",
                                                    "keys_env": KEYS_ENV, "extra": "  fallbacks: [builtin:tiny-llama]\n"})
        names.append("relay")
        assert apply(project).exit_code() == 0

        # Our key in front, the provider's key behind, the Deployment's Prompt as messages.
        answer = ask(url, "relay")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["answered_by"] == answer.headers["x-llmops-answered-by"] == "provider:hosted/small"
        assert body["choices"][0]["message"]["content"] == "echo: Question: How do I reset my password?"
        assert body["usage"]["completion_tokens"] == 8 and body["usage"]["prompt_tokens"] == 9  # the provider's count
        assert body["model"] == "relay"
        path, headers, sent = upstream.requests[-1]
        assert headers["authorization"] == f"Bearer {PROVIDER_KEY}" and sent["model"] == "support-api"
        assert sent["messages"] == [{"role": "system", "content": "Answer briefly."},
                                    {"role": "user", "content": "Question: How do I reset my password?"}]
        assert ask(url, "relay").status_code == 200
        assert httpx.post(f"{url}/chat/completions", json={"model": "relay", "messages": QUESTION}).status_code == 401

        # Streaming is relayed as the provider sends it: the first token long before the last.
        upstream.script(["ok:chunk-delay=0.3"])
        began, arrivals, text, usage_seen = time.monotonic(), [], "", {}
        with httpx.stream("POST", f"{url}/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                          json={"model": "relay", "messages": QUESTION, "stream": True,
                                "stream_options": {"include_usage": True}}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    arrivals.append(time.monotonic() - began)
                    text += "".join(c["delta"].get("content") or "" for c in event["choices"])
                    finish = event if event["choices"] and event["choices"][0]["finish_reason"] else None
                    if finish:
                        assert finish["answered_by"] == "provider:hosted/small"
                    if event.get("usage"):
                        usage_seen = event["usage"]
        assert text == "echo: Question: How do I reset my password?"
        assert usage_seen["completion_tokens"] == 8  # the provider's count, relayed as the client asked
        assert arrivals[-1] - arrivals[0] > 1.0, arrivals  # 8 words 0.3 s apart arrived spread out, not at once

        # 5xx after the retries: the fallback answers, and says so; a 429 with Retry-After is waited out.
        upstream.script(["500", "503"])
        fallback = ask(url, "relay")
        assert fallback.status_code == 200 and fallback.json()["answered_by"] == "builtin:tiny-llama"
        upstream.script(["429:retry-after=1"])
        began = time.monotonic()
        waited = ask(url, "relay")
        assert waited.json()["answered_by"] == "provider:hosted/small" and time.monotonic() - began >= 1.0
        upstream.script(["400:echo-key"])
        refused = ask(url, "relay")  # the request's own fault: no fallback, and the key is not echoed
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "provider_rejected"
        assert PROVIDER_KEY not in refused.text and f":{upstream.port}" not in refused.text  # nor where it lives

        entries = [json.loads(line) for line in log_path(project, "relay").read_text().splitlines()]
        assert {e.get("answered_by") for e in entries} >= {"provider:hosted/small", "builtin:tiny-llama"}
        streamed = [e for e in entries if e.get("answered_by") == "provider:hosted/small" and e["completion_tokens"] == 8]
        assert len(streamed) >= 3  # the stream's usage reached the log too
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
        assert 'answered_by="builtin:tiny-llama"} 1' in metrics

        # The provider stops listing the pinned model: plan says so on both; apply refuses; live keeps serving.
        upstream.models = ["support-v2"]
        plan = Engine(project).plan().plan
        reasons = {a.key: " ".join(a.reasons) for a in plan.changes}
        assert "no longer lists the pinned model 'support-api'" in reasons["Provider/hosted"]
        assert "no longer lists the pinned model 'support-api'" in reasons["Deployment/relay"]
        steps = {s.key: s for s in apply(project).steps}
        assert steps["Provider/hosted"].status == "failed" and isinstance(steps["Provider/hosted"].error, ProviderError)
        assert "does not list the pinned model 'support-api'" in str(steps["Provider/hosted"].error)
        assert steps["Deployment/relay"].status == "blocked"
        upstream.models = ["support-api", "support-v2"]  # the upstream still answers the old id meanwhile
        assert ask(url, "relay").status_code == 200

        # Pinning the listed model rolls out a new version.
        write_specs(project, "provider", PROVIDER % {"name": "hosted", "url": upstream.url, "key_env": PROVIDER_KEY_ENV,
                                                     "alias": "small", "model": "support-v2"})
        assert apply(project).exit_code() == 0
        assert ask(url, "relay").json()["answered_by"] == "provider:hosted/small"
        assert upstream.requests[-1][2]["model"] == "support-v2"

        # A rotated provider key is drift on the deployment; apply hands the new key to its replicas.
        rotated = "sk-rotated-" + secrets.token_hex(8)
        monkeypatch.setenv(PROVIDER_KEY_ENV, rotated)
        upstream.key = rotated
        reasons = {a.key: " ".join(a.reasons) for a in Engine(project).plan().plan.changes}
        assert f"the provider key in ${PROVIDER_KEY_ENV} changed" in reasons["Deployment/relay"]
        assert rotated not in json.dumps(reasons)
        assert apply(project).exit_code() == 0
        assert ask(url, "relay").json()["answered_by"] == "provider:hosted/small"
        assert upstream.requests[-1][1]["authorization"] == f"Bearer {rotated}"

    # The provider's key is in no record, artifact, plan or log the engine wrote, nor in Ray's logs
    # (its runtime env agent logs runtime envs) or the Serve configs the dashboard serves.
    from llmops_engine import raycluster
    from llmops_engine.serving.deploy import open_cluster

    secrets_ = (PROVIDER_KEY.encode(), rotated.encode())
    head_logs = Path(raycluster._read_state(ray_project)["temp_dir"])
    for path in [*project.state_dir.rglob("*"), *head_logs.rglob("*.log"), *head_logs.rglob("*.out"),
                 *head_logs.rglob("*.err")]:
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            assert not any(secret in content for secret in secrets_), path
    assert PROVIDER_KEY not in json.dumps(Engine(project).plan().plan.to_json())
    assert not any(secret.decode() in json.dumps(open_cluster(project).details()) for secret in secrets_)


def test_another_llmops_deployment_is_a_provider(served):
    project, url, names = served
    write_specs(project, "origin", DEPLOYMENT % {"name": "origin", "model": "builtin:tiny-llama", "keys_env": PROVIDER_KEY_ENV,
                                                 "extra": ""})
    names.append("origin")
    assert apply(project).exit_code() == 0
    write_specs(project, "provider", PROVIDER % {"name": "upstream", "url": url, "key_env": PROVIDER_KEY_ENV,
                                                 "alias": "tiny", "model": "origin"})
    write_specs(project, "relay", DEPLOYMENT % {"name": "front", "model": "provider:upstream/tiny", "keys_env": KEYS_ENV,
                                                "extra": ""})
    names.insert(0, "front")
    assert apply(project).exit_code() == 0

    direct = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {PROVIDER_KEY}"}, timeout=60,
                        json={"model": "origin", "messages": [{"role": "system", "content": "Answer briefly."},
                                                               {"role": "user", "content": "Question: How do I reset my password?"}],
                              "max_tokens": 8})
    relayed = ask(url, "front")
    assert relayed.status_code == 200 and relayed.json()["answered_by"] == "provider:upstream/tiny"
    # Greedy decoding of the same messages: the relay is the origin's answer, with its usage.
    assert relayed.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]
    assert relayed.json()["usage"] == direct.json()["usage"]
    events = [json.loads(line[6:]) for line in httpx.post(
        f"{url}/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
        json={"model": "front", "messages": QUESTION, "max_tokens": 8, "stream": True}).text.splitlines()
        if line.startswith("data: {")]
    streamed = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert streamed == relayed.json()["choices"][0]["message"]["content"]


def test_tuned_or_local_and_hosted_models_share_one_evaluation_table(served, tmp_path):
    """A local model (scored in the Ray task) beside a provider's (scored over HTTP), same examples."""
    from llmops_engine.controllers.evaluation import EvaluationController
    from tests.eval_helpers import make_context, publish_dataset, resource

    project, _, _ = served
    rows = [{"instruction": "Where is my invoice?", "input": "", "output": "echo: Question: Where is my invoice?"},
            {"instruction": "Can I get a refund?", "input": "", "output": "Yes, within 14 days."}]
    with FakeProvider(models=["support-api"], key=PROVIDER_KEY) as upstream:
        provider = resource("Provider", "hosted", type="openai-compatible", base_url=upstream.url,
                            api_key_env=PROVIDER_KEY_ENV, models={"small": "support-api"})
        evaluation = resource("Evaluation", "ev", model="provider:hosted/small", dataset="d", prompt="brief", cpus=1,
                              thresholds=[{"metric": "exact_match", "min": 0.5}],
                              variants=[{"name": "local", "model": "builtin:tiny-llama"}], generation={"max_new_tokens": 4})
        ctx = make_context(tmp_path, [provider, evaluation, resource("Prompt", "brief", template="Question: {instruction}"),
                                      resource("Dataset", "d", source={"path": "data/x.jsonl"},
                                               columns={"instruction": "q", "output": "a"})], project=project)
        publish_dataset(ctx, "d", rows)
        staging = tmp_path / "staging"
        staging.mkdir()
        outputs = EvaluationController().apply(evaluation, ctx, staging)
    assert outputs["metrics"]["exact_match"] == 0.5  # the provider echoed the first question's expected answer
    assert set(outputs["variant_metrics"]) == {"local"} and outputs["variant_metrics"]["local"]["exact_match"] == 0.0
    report = (staging / "report.md").read_text()
    assert "local" in report and "provider:hosted/small" in report
