"""Fast checks of the serving pieces that need no cluster: the Serve config shape, canary
judgement, the OpenAI request layer, metrics, the request log, API-key handling and the
deployment gate. The live behaviour is in test_serve_live.py."""

from __future__ import annotations

import json
import sys

import pytest

from llmops_engine.errors import DeploymentError, GateFailed, LLMOpsError
from llmops_engine.project import Project, ProjectSettings
from llmops_engine.serving import logs
from llmops_engine.serving.config import (
    IMPORT_PATH, SLOTS, AppSettings, ModelRef, Routing, app_config, config_digest, hash_key, routing_of,
)
from llmops_engine.serving.deploy import key_hashes
from llmops_engine.serving.metrics import Metrics
from llmops_engine.serving.openai_api import APIError, ChatRequest, CompletionRequest, chat_stream
from llmops_engine.serving.rollout import judge
from llmops_engine.specs.deployment import DeploymentSpec

ANALYSIS = {"window_s": 1, "max_error_rate": 0.05, "max_p95_ms": 500, "min_requests": 3}


def spec(**overrides) -> dict:
    return DeploymentSpec.model_validate({"model": "m", "prompt": "p", "gate": None, "auth": "none", **overrides}).model_dump(mode="json")


def settings(**overrides) -> AppSettings:
    return AppSettings("api", "/", spec(**overrides), [hash_key("k1")], "/tmp/log.jsonl")


def test_application_shape_never_changes_so_serve_never_rebuilds_it():
    v1, v2 = ModelRef("aaaaaaaaaaaa", path="/a"), ModelRef("bbbbbbbbbbbb", path="/b")
    one = app_config(settings(), Routing().with_model("blue", v1))
    two = app_config(settings(replicas={"min": 1, "max": 3}), Routing("green", {"blue": 0, "green": 100}, {"blue": v1, "green": v2}))
    # Serve's code version is a hash of import_path, runtime_env and args: equal => lightweight update.
    for key in ("import_path", "runtime_env", "args", "name", "route_prefix"):
        assert one[key] == two[key]
    assert one["import_path"] == IMPORT_PATH
    assert [d["name"] for d in one["deployments"]] == ["ingress", *SLOTS]
    assert all(d["ray_actor_options"] == one["deployments"][i]["ray_actor_options"] for i, d in enumerate(two["deployments"]))
    green = two["deployments"][2]
    assert green["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8}
    assert green["max_ongoing_requests"] == 16  # two batches: one running, one filling


def test_routing_round_trips_through_a_deployed_config_with_serve_defaults():
    routing = Routing("green", {"blue": 90, "green": 10}, {"blue": ModelRef("a" * 12, path="/a"), "green": ModelRef("b" * 12, path="/b")})
    config = app_config(settings(), routing)
    deployed = json.loads(json.dumps(config))
    for deployment in deployed["deployments"]:  # Serve stores more than it was given
        deployment["graceful_shutdown_timeout_s"] = 20.0
    back = routing_of(deployed)
    assert (back.primary, back.weights, back.models) == (routing.primary, routing.weights, routing.models)
    assert back.live_version == "b" * 12
    assert config_digest(deployed) == config_digest(config)
    deployed["deployments"][1]["num_replicas"] = 4
    assert config_digest(deployed) != config_digest(config)


def test_key_hashes_never_carry_the_key(monkeypatch):
    monkeypatch.setenv("SERVE_KEYS", " sk-one , sk-two,")
    hashes = key_hashes(spec(auth={"api_keys_env": "SERVE_KEYS"}))
    assert hashes == [hash_key("sk-one"), hash_key("sk-two")]
    assert "sk-one" not in json.dumps(app_config(AppSettings("a", "/", spec(), hashes, "/x"), Routing()))
    assert key_hashes(spec()) is None
    monkeypatch.delenv("SERVE_KEYS")
    with pytest.raises(DeploymentError, match=r"\$SERVE_KEYS"):
        key_hashes(spec(auth={"api_keys_env": "SERVE_KEYS"}))


@pytest.mark.parametrize(
    "samples, passed, why",
    [
        ([(i, True, 100.0) for i in range(20)], True, "error rate 0.000"),
        ([(i, i % 2 == 0, 100.0) for i in range(20)], False, "error rate 0.500 > 0.05"),
        ([(i, True, 100.0 if i < 10 else 900.0) for i in range(20)], False, "p95 900 ms > 500"),
        ([(1, True, 10.0)], False, "only 1 requests"),
    ],
)
def test_canary_judgement(samples, passed, why):
    verdict = judge(samples, ANALYSIS)
    assert verdict["passed"] is passed
    assert why in verdict["summary"]


def test_openai_requests_tolerate_unknown_fields_and_map_chat_turns():
    chat = ChatRequest.model_validate({
        "model": "api", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"},
                                     {"role": "user", "content": [{"type": "text", "text": "reset password?"}]}],
        "max_completion_tokens": 5, "logit_bias": {}, "user": "u1", "stream_options": {"include_usage": True},
    })
    assert chat.instruction_and_input() == ("reset password?", "be brief\nuser: hi\nassistant: hello")
    assert chat.requested_tokens() == 5 and chat.include_usage()
    completion = CompletionRequest.model_validate({"model": "api", "prompt": ["a", "b"], "stop": "\n", "echo": False})
    assert completion.prompts() == ["a", "b"] and completion.stops() == ["\n"] and completion.requested_tokens() == 16
    with pytest.raises(APIError) as no_user:
        ChatRequest.model_validate({"model": "api", "messages": [{"role": "system", "content": "x"}]}).instruction_and_input()
    assert no_user.value.body()["error"]["type"] == "invalid_request_error"


def test_chat_stream_events_end_with_usage_then_done():
    gen = {"text": "a b", "prompt_tokens": 3, "completion_tokens": 2, "finish_reason": "length"}
    events = chat_stream("r1", "api", gen, include_usage=True, pieces=["a", " b"])
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    usage = json.loads(events[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "length"


def test_metrics_exposition_has_counters_and_a_cumulative_histogram():
    metrics = Metrics()
    metrics.observe("api", "v1", "chat", 200, 0.03, 4, 7)
    metrics.observe("api", "v1", "chat", 200, 3.0, 4, 1)
    text = metrics.render()
    assert 'llmops_requests_total{deployment="api",model_version="v1",endpoint="chat",status="200"} 2' in text
    assert 'llmops_request_latency_seconds_bucket{deployment="api",model_version="v1",le="0.05"} 1' in text
    assert 'llmops_request_latency_seconds_bucket{deployment="api",model_version="v1",le="+Inf"} 2' in text
    assert 'llmops_tokens_total{deployment="api",model_version="v1",kind="completion"} 8' in text


def test_request_log_tail(tmp_path):
    project = Project(tmp_path, ProjectSettings())
    with pytest.raises(LLMOpsError, match="no request log"):
        logs.read_logs(project, "api")
    path = logs.log_path(project, "api")
    for i in range(5):
        logs.append(path, {"id": str(i), "status": 200})
    with path.open("a") as handle:
        handle.write('{"id": "torn')  # a writer killed mid-line
    assert [e["id"] for e in logs.read_logs(project, "api", limit=3)] == ["3", "4"]
    assert [e["id"] for e in logs.read_logs(project, "api", limit=10)] == ["0", "1", "2", "3", "4"]


def test_gate_must_pass_for_the_exact_model_version(tmp_path):
    from llmops_engine.controllers.deployment import DeploymentController
    from tests.eval_helpers import make_context, resource

    deployment = resource("Deployment", "api", model="tuned", prompt="p", gate="gate", auth="none")
    ctx = make_context(tmp_path, [resource("TuningJob", "tuned", base_model="builtin:tiny-llama", dataset="d", prompt="p"),
                                  resource("Evaluation", "gate", model="tuned", dataset="d", thresholds=[{"metric": "rouge_l", "min": 0.1}]), deployment])
    controller = DeploymentController()
    with pytest.raises(GateFailed, match="apply it before"):
        controller.apply(deployment, ctx, tmp_path)
    ctx.outputs["Evaluation/gate"] = {"passed": True, "model_fingerprint": "0" * 64}
    with pytest.raises(GateFailed, match="another model version"):
        controller.apply(deployment, ctx, tmp_path)
    ctx.outputs["Evaluation/gate"] = {"passed": False, "model_fingerprint": ctx.fingerprint("TuningJob/tuned")}
    with pytest.raises(GateFailed, match="did not pass"):
        controller.apply(deployment, ctx, tmp_path)


def test_controller_module_is_import_light():
    import subprocess

    code = ("import sys, llmops_engine.controllers.deployment, llmops_engine.serving.deploy; "
            "print(sorted(m for m in ('ray', 'torch', 'transformers', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
