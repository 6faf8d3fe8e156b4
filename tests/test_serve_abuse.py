"""Hostile requests against a live Ray Serve deployment: one request must never take it down.

The request models are checked alone first (fast); then each reproduction of issue 12
(serving) is a test (slow) against one real deployment of a QLoRA
artifact of the builtin model — 4-bit bitsandbytes base plus a LoRA adapter, the kind whose
CPU kernel dies with SIGFPE on an empty sequence — shared by the whole module. Hostile
requests must get a 400 OpenAI envelope naming the parameter, never reach a model slot, and
never fail, crash or stall the well-formed requests sent alongside them.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from llmops_engine.project import Project, ServeSettings
from llmops_engine.serving.config import INGRESS, ModelRef
from llmops_engine.serving.deploy import deploy, open_cluster, undeploy
from llmops_engine.serving.openai_api import (
    MAX_PROMPTS_PER_REQUEST, ChatRequest, CompletionRequest, validation_message,
)
from llmops_engine.specs.deployment import DeploymentSpec
from tests.test_serve_live import _serve_port

APP = "abuse-api"
ROUTE = "/abuse"
QUANTIZATION = {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "float32"}
MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, MAX_BATCH_SIZE = 8, 96, 8
TEMPLATE = {"system": None, "template": "### Question:\n{instruction}\n### Context:\n{input}\n### Answer:\n",
            "template_no_input": "### Question:\n{instruction}\n### Answer:\n", "template_hash": "abuse"}
INNOCENT = {"model": APP, "prompt": "Where is my invoice?", "max_tokens": 4, "temperature": 0}
WORK = {"items": [{"prompt": "Where is my invoice?"}], "stops": [], "live": False,
        "params": {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}}


def _chat(content: Any) -> dict[str, Any]:
    return {"model": APP, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


# (case, endpoint, body, the `param` the 400 must name)
HOSTILE = [
    ("empty prompt", "completions", {"model": APP, "prompt": ""}, "prompt"),
    ("empty prompt in a list", "completions", {"model": APP, "prompt": [""]}, "prompt"),
    ("empty prompt after good ones", "completions", {"model": APP, "prompt": ["hi", "there", ""]}, "prompt"),
    ("no prompts", "completions", {"model": APP, "prompt": []}, "prompt"),
    ("too many prompts", "completions", {"model": APP, "prompt": ["a"] * 1024}, "prompt"),
    ("one prompt over the cap", "completions", {"model": APP, "prompt": ["a"] * (MAX_PROMPTS_PER_REQUEST + 1)}, "prompt"),
    ("seed 2^64", "completions", {**INNOCENT, "temperature": 0.7, "seed": 2**64}, "seed"),
    ("seed below int64", "completions", {**INNOCENT, "temperature": 0.7, "seed": -(2**63) - 1}, "seed"),
    ("denormal temperature", "completions", {**INNOCENT, "temperature": 5e-324}, "temperature"),
    ("temperature above 2", "completions", {**INNOCENT, "temperature": 2.5}, "temperature"),
    ("top_p zero", "completions", {**INNOCENT, "temperature": 0.7, "top_p": 0}, "top_p"),
    ("max_tokens 10^30", "completions", {**INNOCENT, "max_tokens": 10**30}, "max_tokens"),
    ("n 10^30", "completions", {**INNOCENT, "n": 10**30}, "n"),
    ("a hundred stop sequences", "completions", {**INNOCENT, "stop": ["x"] * 100}, "stop"),
    ("token-id prompts", "completions", {"model": APP, "prompt": [1, 2, 3]}, "prompt.0"),
    ("content part text 5", "chat", _chat([{"type": "text", "text": 5}]), "messages.0.content.0.text"),
    ("content part text null", "chat", _chat([{"type": "text", "text": None}]), "messages.0.content.0"),
    ("content part text list", "chat", _chat([{"type": "text", "text": ["a"]}]), "messages.0.content.0.text"),
]
RAW_HOSTILE = [  # bodies json.dumps cannot write
    ("temperature NaN", "completions", b'{"model": "%s", "prompt": "hi", "temperature": NaN}' % APP.encode(), "temperature"),
    ("top_p Infinity", "completions", b'{"model": "%s", "prompt": "hi", "top_p": Infinity}' % APP.encode(), "top_p"),
]
EDGES = [  # the bounds themselves are accepted
    ("seed 2^63-1", {**INNOCENT, "temperature": 0.7, "seed": 2**63 - 1}),
    ("negative seed", {**INNOCENT, "temperature": 0.7, "seed": -(2**63)}),
    ("smallest temperature", {**INNOCENT, "temperature": 0.01, "seed": 1}),
    ("tiny top_p", {**INNOCENT, "temperature": 1.0, "top_p": 1e-300}),
    ("prompts at the cap", {**INNOCENT, "prompt": ["a"] * MAX_PROMPTS_PER_REQUEST}),
]


@dataclass
class Served:
    project: Project
    url: str

    def post(self, client: httpx.Client, endpoint: str, body: dict[str, Any] | bytes) -> httpx.Response:
        path = "chat/completions" if endpoint == "chat" else "completions"
        if isinstance(body, bytes):
            return client.post(f"{self.url}/{path}", content=body, headers={"content-type": "application/json"})
        return client.post(f"{self.url}/{path}", json=body)

    def handle(self, deployment: str):
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name=APP)

    def primary(self):
        routes = self.handle(INGRESS).routes.remote().result(timeout_s=30)
        return self.handle(routes["primary"])

    def slot_info(self) -> dict[str, Any]:
        return self.primary().info.remote().result(timeout_s=30)

    def outcome_sequence(self) -> int:
        return self.handle(INGRESS).outcomes_since.remote(0).result(timeout_s=30)["sequence"]

    def replicas(self) -> set[str]:
        app = open_cluster(self.project).application(APP)
        return {r["actor_name"] for d in app["deployments"].values() for r in d["replicas"]}


@pytest.mark.parametrize("case,endpoint,body,param", HOSTILE + RAW_HOSTILE, ids=[c[0] for c in HOSTILE + RAW_HOSTILE])
def test_request_models_refuse_hostile_bodies(case, endpoint, body, param):
    model = ChatRequest if endpoint == "chat" else CompletionRequest
    with pytest.raises(ValidationError) as refused:
        model.model_validate_json(body if isinstance(body, bytes) else json.dumps(body))
    assert validation_message(refused.value)[1] == param


@pytest.mark.parametrize("case,body", EDGES, ids=[c[0] for c in EDGES])
def test_request_models_accept_values_at_the_bounds(case, body):
    assert CompletionRequest.model_validate_json(json.dumps(body)).prompts()


@pytest.mark.slow
def test_generate_refuses_an_empty_sequence_before_it_reaches_a_kernel(tmp_path):
    from llmops_engine.models import load_base

    model = load_base("builtin:tiny-llama", tmp_path)
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
        model.generate(["hi", ""], max_new_tokens=2)
    assert model.generate(["hi"], max_new_tokens=2)[0].prompt_tokens == 2


def _qlora_artifact(store) -> str:
    """A published QLoRA artifact of the builtin model (untrained adapter: the base's outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from llmops_engine.models.loaded import load_causal_lm
    from llmops_engine.models.loading import resolve_base

    fingerprint = hashlib.sha256(b"serve-abuse-qlora").hexdigest()
    if store.local_path(fingerprint).exists():
        return fingerprint
    staging = store.staging_dir(fingerprint)
    base = resolve_base("builtin:tiny-llama", store.root)
    model = get_peft_model(load_causal_lm(base.path, QUANTIZATION),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(staging / "adapter")
    AutoTokenizer.from_pretrained(base.path).save_pretrained(staging / "tokenizer")
    (staging / "template.json").write_text(json.dumps(TEMPLATE))
    (staging / "model.json").write_text(json.dumps({
        "base_model": "builtin:tiny-llama", "base_path": str(base.path), "method": "qlora",
        "quantization": QUANTIZATION, "version": fingerprint[:12]}))
    store.publish(fingerprint, staging)
    return fingerprint


@pytest.fixture(scope="module")
def served(ray_project):
    from llmops_engine.state.stores import open_store

    port = _serve_port(ray_project)
    project = Project(ray_project.root, ray_project.settings.model_copy(update={"serve": ServeSettings(port=port)}))
    store = open_store(project)
    fingerprint = _qlora_artifact(store)
    spec = DeploymentSpec.model_validate({
        "model": "abuse", "prompt": "abuse", "gate": None, "auth": "none", "route_prefix": ROUTE,
        "limits": {"max_new_tokens": MAX_NEW_TOKENS, "max_prompt_tokens": MAX_PROMPT_TOKENS},
        "batching": {"max_batch_size": MAX_BATCH_SIZE, "batch_wait_timeout_s": 0.05},
    }).model_dump(mode="json")
    target = ModelRef(version=fingerprint[:12], fingerprint=fingerprint, path=str(store.local_path(fingerprint)),
                      store_url=store.url)
    deploy(project, APP, spec, target, report=lambda line: None)
    yield Served(project, f"http://127.0.0.1:{port}{ROUTE}/v1")
    undeploy(project, APP)


def _concurrently(calls: list) -> list:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.mark.slow
def test_empty_prompts_are_400_and_the_4bit_replica_survives(served):
    replicas = served.replicas()
    with httpx.Client(timeout=60) as client:
        for prompt in ("", [""], ["hi", ""]):
            response = served.post(client, "completions", {"model": APP, "prompt": prompt, "max_tokens": 2})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "prompt"
        # Defence in depth: a caller of the slot that skips the ingress's validation.
        answer = served.primary().generate.remote({**WORK, "items": [{"prompt": ""}]}).result(timeout_s=60)
        assert answer["error"]["code"] == "empty_prompt" and answer["error"]["status"] == 400
        assert served.post(client, "completions", INNOCENT).status_code == 200
    assert served.replicas() == replicas  # no replica died and was replaced


@pytest.mark.slow
@pytest.mark.parametrize("case,endpoint,body,param", HOSTILE + RAW_HOSTILE, ids=[c[0] for c in HOSTILE + RAW_HOSTILE])
def test_hostile_request_gets_a_400_naming_the_parameter(served, case, endpoint, body, param):
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        response = served.post(client, endpoint, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert time.monotonic() - started < 5  # 1,024 prompts used to hold the replica for 21 s


@pytest.mark.slow
@pytest.mark.parametrize("case,body", EDGES, ids=[c[0] for c in EDGES])
def test_values_at_the_bounds_are_served(served, case, body):
    with httpx.Client(timeout=60) as client:
        response = served.post(client, "completions", body)
    assert response.status_code == 200, response.text
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    assert len(response.json()["choices"]) == len(prompts)


@pytest.mark.slow
def test_invalid_requests_never_reach_a_slot(served):
    before = served.outcome_sequence()
    with httpx.Client(timeout=60) as client:
        statuses = [served.post(client, endpoint, body).status_code for _, endpoint, body, _ in HOSTILE + RAW_HOSTILE]
    assert set(statuses) == {400}
    assert served.outcome_sequence() == before  # no slot outcome recorded: nothing counts against a version


@pytest.mark.slow
def test_innocent_requests_sent_with_hostile_ones_all_succeed(served):
    def innocent(client: httpx.Client, i: int):
        return lambda: served.post(client, "completions", {**INNOCENT, "prompt": f"Where is invoice {i}?"}).status_code

    def hostile(client: httpx.Client, endpoint: str, body):
        return lambda: served.post(client, endpoint, body).status_code

    replicas = served.replicas()
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        for _ in range(2):
            calls = [innocent(client, i) for i in range(18)]
            calls += [hostile(client, endpoint, body) for _, endpoint, body, _ in HOSTILE + RAW_HOSTILE]
            statuses = _concurrently(calls)
            assert statuses[:18] == [200] * 18
            assert set(statuses[18:]) == {400}
    assert served.replicas() == replicas


@pytest.mark.slow
def test_an_exception_inside_a_batch_fails_only_its_own_request(served):
    """Past the ingress's validation (a caller of the slot, or a value validation missed), a
    request that raises inside generation must not fail the requests batched with it."""
    slot = served.primary()
    poisoned = [{**WORK, "params": {**WORK["params"], "do_sample": True, "temperature": 0.7, "seed": 2**64}},
                {**WORK, "params": {**WORK["params"], "do_sample": True, "temperature": 5e-324, "seed": 1}}]
    before = served.slot_info()
    for _ in range(3):
        works = [{**WORK, "items": [{"prompt": f"Where is invoice {i}?"}]} for i in range(6)] + poisoned
        responses = [slot.generate.remote(work) for work in works]  # sent at once: batched together
        for response in responses[:6]:
            assert response.result(timeout_s=120)["gens"][0]["completion_tokens"] > 0
        for response in responses[6:]:
            with pytest.raises(Exception, match="generation failed"):
                response.result(timeout_s=120)
    after = served.slot_info()
    entries = after["mean_batch_size"] * after["batches"] - before["mean_batch_size"] * before["batches"]
    assert entries / (after["batches"] - before["batches"]) > 1.5  # they really shared batches


@pytest.mark.slow
def test_many_prompt_requests_queue_instead_of_widening_a_batch(served):
    """Every prompt is its own batch entry, so max_batch_size bounds each batch's tokens while
    full-size requests flood the slot, and the single-prompt requests among them still finish."""
    long_prompts = ["Where is the invoice for order number %d of last month?" % i for i in range(MAX_PROMPTS_PER_REQUEST)]
    flood = {"model": APP, "prompt": long_prompts, "max_tokens": MAX_NEW_TOKENS, "temperature": 0}
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32)) as client:
        calls = [lambda: served.post(client, "completions", flood) for _ in range(8)]
        calls += [lambda: served.post(client, "completions", INNOCENT) for _ in range(8)]
        responses = _concurrently(calls)
    assert [r.status_code for r in responses] == [200] * 16
    assert all(len(r.json()["choices"]) == MAX_PROMPTS_PER_REQUEST for r in responses[:8])
    budget = MAX_BATCH_SIZE * (MAX_PROMPT_TOKENS + MAX_NEW_TOKENS)
    assert 0 < served.slot_info()["peak_batch_tokens"] <= budget
