"""Fast checks of the serving pieces that need no cluster: the Serve config shape, canary
judgement, the OpenAI request layer, metrics, the request log, API-key handling and the
deployment gate. The live behaviour is in test_serve_live.py."""

from __future__ import annotations

import json
import re
import sys

import pytest

from llmops_engine.errors import DeploymentError, GateFailed, LLMOpsError
from llmops_engine.project import Project, ProjectSettings
from llmops_engine.serving import logs
from llmops_engine.serving.access import MISSING_KEY, access_of, select
from llmops_engine.serving.config import (
    GATEWAY_IMPORT_PATH, IMPORT_PATH, SLOTS, AppSettings, ModelRef, Routing, app_config, config_digest,
    gateway_config, gateway_entries_of, gateway_entry, hash_key, routing_of,
)
from llmops_engine.serving.deploy import key_hashes
from llmops_engine.serving.metrics import Metrics
from llmops_engine.serving.openai_api import (
    APIError, ChatRequest, CompletionRelay, CompletionRequest, RelayedStream, chat_response,
)
from llmops_engine.serving.slot import _chunk
from llmops_engine.serving.rollout import judge
from llmops_engine.specs.deployment import DeploymentSpec

ANALYSIS = {"window_s": 1, "max_error_rate": 0.05, "max_p95_ms": 500, "min_requests": 3}


def spec(**overrides) -> dict:
    return DeploymentSpec.model_validate({"model": "m", "prompt": "p", "gate": None, "auth": "none", **overrides}).model_dump(mode="json")


def settings(**overrides) -> AppSettings:
    return AppSettings("api", None, spec(**overrides), [hash_key("k1")], "/tmp/log.jsonl")


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
    assert "sk-one" not in json.dumps(app_config(AppSettings("a", None, spec(), hashes, "/x"), Routing()))
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


def _done(text: str, prompt_tokens: int, completion_tokens: int, finish: str) -> dict:
    return {"done": {"text": text, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "finish_reason": finish}}


def test_a_local_chat_stream_ends_with_its_finish_then_usage_then_done():
    relay = RelayedStream("r1", "api", True, None, None)
    items = [_chunk({"text": "a"}, 0, "assistant"), _chunk({"text": " b"}), _chunk(_done("a b", 3, 2, "length"))]
    events = [e for item in items for e in relay.events({"chunk": item})] + relay.close()
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    usage = json.loads(events[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 5
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] == "length"
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": "a"}


def test_a_streamed_completion_interleaves_its_choices_and_sums_their_usage():
    relay = CompletionRelay("r1", "api", True, [None, None])
    items = [_chunk({"text": "x"}, 1), _chunk({"text": "a"}, 0), _chunk(_done("x", 2, 1, "stop"), 1),
             _chunk({"text": "b"}, 0), _chunk(_done("ab", 3, 2, "length"), 0)]
    events = [json.loads(e[6:]) for item in items for e in relay.events({"chunk": item})]
    assert [(e["choices"][0]["index"], e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events] == [
        (1, "x", None), (0, "a", None), (1, "", "stop"), (0, "b", None), (0, "", "length")]
    assert {e["object"] for e in events} == {"text_completion"} and {e["id"] for e in events} == {"cmpl-r1"}
    tail = relay.close()
    assert json.loads(tail[0][6:])["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert tail[-1] == "data: [DONE]\n\n"
    assert relay.totals() == {"prompt_tokens": 5, "completion_tokens": 3, "finish_reason": ["length", "stop"]}


def test_grounded_answers_carry_their_sources_in_the_response_and_the_stream_finish():
    gen = {"text": "a b", "prompt_tokens": 3, "completion_tokens": 2, "finish_reason": "stop"}
    sources = [{"id": "kb/billing.md#0", "source": "kb/billing.md", "score": 0.03}]
    assert chat_response("r1", "api", gen, sources)["sources"] == sources
    assert "sources" not in chat_response("r1", "api", gen)  # an ungrounded deployment adds nothing
    relay = RelayedStream("r1", "api", True, sources, None)
    items = [_chunk({"text": "a b"}, 0, "assistant"), _chunk(_done("a b", 3, 2, "stop"))]
    events = [json.loads(e[6:]) for item in items for e in relay.events({"chunk": item})]
    finish = next(e for e in events if e["choices"] and e["choices"][0]["finish_reason"])
    assert finish["sources"] == sources
    assert [e for e in events if "sources" in e] == [finish]


def _logged(latency_ms: float, **more) -> dict:
    return {**{"deployment": "api", "model_version": "v1", "endpoint": "chat", "status": 200, "latency_ms": latency_ms,
               "prompt_tokens": 4, "completion_tokens": 1}, **more}


def test_metrics_exposition_has_counters_and_cumulative_histograms():
    metrics = Metrics()
    metrics.observe(_logged(30, completion_tokens=7, ttft_ms=12, retrieval_ms=3))
    metrics.observe(_logged(3000, status=400, guardrails=[{"check": "safety/pii", "stage": "input", "action": "mask"},
                                                         {"check": "safety/deny_list", "stage": "output", "action": "block"}]))
    text = metrics.render()
    assert 'llmops_requests_total{deployment="api",version="v1",endpoint="chat",code="200"} 1' in text
    assert 'llmops_requests_total{deployment="api",version="v1",endpoint="chat",code="400"} 1' in text
    assert 'llmops_request_duration_seconds_bucket{deployment="api",version="v1",le="0.05"} 1' in text
    assert 'llmops_request_duration_seconds_bucket{deployment="api",version="v1",le="+Inf"} 2' in text
    assert 'llmops_time_to_first_token_seconds_bucket{deployment="api",version="v1",le="0.025"} 1' in text
    assert 'llmops_time_to_first_token_seconds_count{deployment="api",version="v1"} 1' in text
    assert 'llmops_retrieval_duration_seconds_bucket{deployment="api",version="v1",le="0.0025"} 0' in text
    assert 'llmops_retrieval_duration_seconds_bucket{deployment="api",version="v1",le="0.005"} 1' in text
    assert 'llmops_tokens_total{deployment="api",version="v1",kind="completion"} 8' in text
    assert ('llmops_guardrail_actions_total{deployment="api",guardrail="safety",check="pii",stage="input",'
            'action="mask"} 1') in text
    assert 'check="deny_list",stage="output",action="block"} 1' in text
    # every family is declared once, and every sample line parses as name{labels} value
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families)) == 8
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(re.fullmatch(r'[a-z_]+(\{[^{}]*\})? \d+(\.\d+)?', line) for line in samples), samples


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.observe(_logged(5, deployment='a"b\\c\nd'))
    assert 'deployment="a\\"b\\\\cd"' in metrics.render()


def test_unauthenticated_requests_are_a_counter():
    metrics = Metrics()
    metrics.observe_unauthenticated("chat")
    metrics.observe_unauthenticated("chat")
    text = metrics.render()
    assert 'llmops_unauthenticated_requests_total{endpoint="chat"} 2' in text
    assert "llmops_requests_total{" not in text


def test_request_log_rotates_by_size_and_is_read_across_files(tmp_path):
    project = Project(tmp_path, ProjectSettings())
    path = logs.log_path(project, "api")
    line = len(json.dumps({"id": "000", "status": 200}, separators=(",", ":"))) + 1
    for i in range(20):  # 4 lines fit a file, so 20 lines fill five files; keep=2 keeps three
        logs.append(path, {"id": f"{i:03d}", "status": 200}, max_bytes=4 * line, keep=2)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["api.jsonl", "api.jsonl.1", "api.jsonl.2"]
    assert all(p.stat().st_size <= 4 * line for p in path.parent.iterdir())
    assert [e["id"] for e in logs._tail(logs.rotated(path, 2), 10)] == ["008", "009", "010", "011"]
    # `llmops logs` reads newest first across the rotation, only as far back as it needs
    assert [e["id"] for e in logs.read_logs(project, "api", limit=6)] == ["014", "015", "016", "017", "018", "019"]
    assert len(logs.read_logs(project, "api", limit=100)) == 12


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


def test_gateway_application_only_changes_its_user_config():
    a = gateway_entry(settings(), "aaaaaaaaaaaa")
    b = gateway_entry(AppSettings("other", "/other", spec(), None, "/tmp/o.jsonl"), None)
    one, two = gateway_config({"api": a}, "/tmp/g.jsonl"), gateway_config({"api": a, "other": b}, "/tmp/g.jsonl")
    for key in ("import_path", "runtime_env", "args", "name", "route_prefix"):
        assert one[key] == two[key]
    assert one["import_path"] == GATEWAY_IMPORT_PATH and one["route_prefix"] == "/"
    assert a["model_ids"] == ["api", "aaaaaaaaaaaa"] and b["model_ids"] == ["other"]
    assert a["api_key_sha256"] == [hash_key("k1")] and b["api_key_sha256"] is None
    assert gateway_entries_of(json.loads(json.dumps(two))) == {"api": a, "other": b}
    assert gateway_entries_of(None) == {}
    assert app_config(settings(), Routing())["route_prefix"] is None  # reached through the gateway only


def _entry(keys, model_ids):
    return {"api_key_sha256": None if keys is None else [hash_key(k) for k in keys], "model_ids": model_ids}


# Two keyed deployments, one open one; "v1" is a model version both keyed ones serve.
ENTRIES = {"a": _entry(["ka", "shared"], ["a", "v1", "va"]), "b": _entry(["kb", "shared"], ["b", "v1"]),
           "pub": _entry(None, ["pub"])}


@pytest.mark.parametrize(
    "key, model, status, answer",
    [
        ("ka", "a", 200, "a"),                    # own deployment by name
        ("ka", "va", 200, "a"),                   # ... or by the model id it advertises
        ("ka", "b", 403, "may not use model 'b'"),  # a key of A never opens B
        ("kb", "a", 403, "may not use model 'a'"),
        ("kb", "b", 200, "b"),
        ("ka", "v1", 200, "a"),                   # a shared version id: the one the key may use
        ("shared", "v1", 400, "use a deployment name"),  # ... ambiguous when it may use both
        ("shared", "b", 200, "b"),
        ("ka", "gpt-4", 404, "use one of: a, pub"),  # unknown: lists only what this key may use
        ("ka", "pub", 200, "pub"),                # open deployments are open to every caller
        (None, "pub", 200, "pub"),
        (None, "a", 401, "invalid or missing API key"),
        ("wrong", "a", 401, "invalid or missing API key"),
        ("wrong", "gpt-4", 404, "use one of: pub"),
    ],
)
def test_gateway_routing_and_auth(key, model, status, answer):
    access = access_of(ENTRIES, f"Bearer {key}" if key else "")
    if status == 200:
        assert select(ENTRIES, access, model) == answer
        return
    with pytest.raises(APIError) as refused:
        select(ENTRIES, access, model)
    assert refused.value.status == status and answer in refused.value.message
    assert set(refused.value.body()["error"]) == {"message", "type", "param", "code"}


def test_a_key_valid_for_no_deployment_learns_nothing():
    keyed = {name: entry for name, entry in ENTRIES.items() if name != "pub"}
    for header in ("", "Bearer wrong", "Basic a2E=", "Bearer "):
        access = access_of(keyed, header)
        assert access.names == ()
        for model in ("a", "b", "v1", "nope"):  # existing or not: the same 401
            with pytest.raises(APIError) as refused:
                select(keyed, access, model)
            assert refused.value.status == 401 and refused.value.message == MISSING_KEY
    assert access_of(keyed, "bearer ka").names == ("a",)  # the scheme is case-insensitive


@pytest.mark.parametrize("body, answer", [
    (b'{"model": "a", "prompt": "hi"}', ("a", False)),
    (b'{"model": "a", "prompt": "hi", "stream": true}', ("a", True)),
    (b'{"model": "a", "prompt": "hi", "stream": "true"}', ("a", True)),  # the ingress reads it as true
    (b'{"model": "a", "prompt": "hi", "stream": 0}', ("a", False)),
    (b"not json", "400 invalid_json"),
    (b"[" * 60000, "400 invalid_json"),  # nesting deeper than the parser's recursion limit
    (b'["a"]', "400 invalid_request"),
    (b'{"model": 5}', "400 invalid_request"),
    (b'{"prompt": "hi"}', "400 invalid_request"),
])
def test_the_gateway_reads_only_model_and_stream_and_refuses_bodies_without_a_model(body, answer):
    from llmops_engine.serving.gateway import requested_model

    try:
        got = requested_model(body)
    except APIError as exc:
        got = f"{exc.status} {exc.code}"
    assert got == answer



@pytest.mark.parametrize("overrides, problem", [
    ({"guardrails": ["safety", "pii", "safety"]}, "listed twice"),
    ({"rollout": {"load_test": {"clients": 0}}}, "greater than or equal to 1"),
    ({"rollout": {"load_test": {"duration_s": 601}}}, "less than or equal to 600"),
    ({"rollout": {"load_test": {"thresholds": {"error_rate": 2}}}}, "less than or equal to 1"),
    ({"rollout": {"load_test": {"thresholds": {"p95": 5}}}}, "Extra inputs are not permitted"),
])
def test_guardrail_lists_and_load_tests_are_checked(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        DeploymentSpec.model_validate({"model": "m", "prompt": "p", "gate": None, "auth": "none", **overrides})


def test_a_deployment_references_its_guardrails_in_order():
    spec = DeploymentSpec.model_validate({"model": "m", "prompt": "p", "gate": None, "auth": "none",
                                          "guardrails": ["safety", "pii"]})
    assert [(r.field, r.kind, r.name) for r in spec.references() if r.kind == "Guardrail"] == [
        ("spec.guardrails.0", "Guardrail", "safety"), ("spec.guardrails.1", "Guardrail", "pii")]
