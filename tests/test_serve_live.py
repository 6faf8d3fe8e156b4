"""The Deployment controller against a real Ray Serve on 127.0.0.1, served model included.

One application is shared by the whole module, and the tests run in file order as one
story: first version → OpenAI API through the project's gateway → canary promotion under
load → failed canary under load → unloadable version → blue-green under load → rollback →
rolling → drift restore (until the app is deleted by hand, no replica was ever restarted:
every change was a user_config update) → a second deployment behind the same gateway →
hostile HTTP clients (disconnects, slow bodies) → delete.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from llmops_engine.controllers.base import ApplyContext
from llmops_engine.controllers.deployment import DeploymentController
from llmops_engine.errors import RolloutFailed
from llmops_engine.project import Project, ServeSettings
from llmops_engine.serving.config import GATEWAY_APP
from llmops_engine.serving.deploy import open_cluster, rollback, undeploy
from llmops_engine.serving.logs import read_logs
from llmops_engine.serving.rest import http_options
from llmops_engine.specs import KINDS, Metadata
from llmops_engine.specs.resource import Resource
from llmops_engine.state.stores import open_store
from llmops_engine.state.records import ResourceRecord

pytestmark = pytest.mark.slow

APP = "support-api"
OTHER = "geo-api"  # the second deployment of the project
KEYS_ENV = "LLMOPS_TEST_SERVE_KEYS"
OTHER_KEYS_ENV = "LLMOPS_TEST_SERVE_OTHER_KEYS"
API_KEY = "sk-test-" + secrets.token_hex(8)
OTHER_KEY = "sk-other-" + secrets.token_hex(8)
BODY_TIMEOUT_S = 2
TEMPLATE = {"system": None, "template": "### Question:\n{instruction}\n### Context:\n{input}\n### Answer:\n",
            "template_no_input": "### Question:\n{instruction}\n### Answer:\n"}
FAST = {"window_s": 1.5, "max_error_rate": 0.05, "min_requests": 3}


def _serve_port(project: Project) -> int:
    """Serve's HTTP proxy is one per cluster: reuse its port when another module started Serve (even
    if that module has since removed its applications: the proxy keeps the port it started on)."""
    running = (open_cluster(project).details().get("http_options") or {}).get("port")
    if running:
        return int(running)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _resource(kind: str, name: str, **spec) -> Resource:
    return Resource(kind, Metadata(name=name), KINDS[kind].model_validate(spec), file="specs/test.yaml", line=1)


class Harness:
    """Drives DeploymentController.apply the way the engine does, over real artifacts."""

    def __init__(self, project: Project, url: str):
        self.project, self.url = project, url
        self.replicas: set[str] = set()  # replica actors after the first deploy
        self.store = open_store(project)
        self.template_hash = KINDS["Prompt"].model_validate(TEMPLATE).template_hash()

    def model(self, tag: str) -> str:
        """A published TuningJob artifact (full-model layout) of the builtin model; its fingerprint."""
        fingerprint = hashlib.sha256(f"serve-test-model-{tag}".encode()).hexdigest()
        directory = self.store.local_path(fingerprint)
        if not directory.exists():
            from llmops_engine.models import load_base

            staging = self.store.staging_dir(fingerprint)
            base = load_base("builtin:tiny-llama", self.store.root)
            base.model.save_pretrained(staging / "model")
            base.tokenizer.save_pretrained(staging / "tokenizer")
            (staging / "template.json").write_text(json.dumps({**TEMPLATE, "template_hash": self.template_hash}))
            (staging / "model.json").write_text(json.dumps(
                {"base_model": "builtin:tiny-llama", "method": "full", "quantization": None, "version": fingerprint[:12]}))
            self.store.publish(fingerprint, staging)
        return fingerprint

    def broken_model(self) -> str:
        """An artifact whose weights are unreadable (a torn upload, a bad copy)."""
        fingerprint = hashlib.sha256(b"serve-test-model-broken").hexdigest()
        directory = self.store.local_path(fingerprint)
        if not directory.exists():
            staging = self.store.staging_dir(fingerprint)
            good = self.store.local_path(self.model("v1"))
            (staging / "tokenizer").mkdir()
            for path in (good / "tokenizer").iterdir():
                (staging / "tokenizer" / path.name).write_bytes(path.read_bytes())
            (staging / "model").mkdir()
            (staging / "model" / "config.json").write_text('{"model_type": "llama", "truncated')
            for name in ("template.json", "model.json"):
                (staging / name).write_text((good / name).read_text())
            self.store.publish(fingerprint, staging)
        return fingerprint

    def apply(self, model_fp: str, controller: DeploymentController | None = None, name: str = APP,
              keys_env: str = KEYS_ENV, **spec) -> dict:
        deployment = _resource("Deployment", name, **{
            "model": "support-qlora", "prompt": "support-answer", "gate": "support-gate",
            "auth": {"api_keys_env": keys_env},
            "limits": {"max_new_tokens": 16, "max_prompt_tokens": 96, "max_body_bytes": 4096,
                       "body_timeout_s": BODY_TIMEOUT_S},
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}, **spec})
        spec_fp = hashlib.sha256(json.dumps([model_fp, deployment.normalized_spec()], sort_keys=True).encode()).hexdigest()
        resources = {deployment.key: deployment}
        fingerprints = {"TuningJob/support-qlora": model_fp, deployment.key: spec_fp}
        ctx = ApplyContext(self.project, self.store, resources, fingerprints, self.store.read_records(), lambda line: None)
        ctx.outputs["TuningJob/support-qlora"] = {"model_version": model_fp[:12], "template_hash": self.template_hash}
        ctx.outputs["Prompt/support-answer"] = {"template_hash": self.template_hash}
        ctx.outputs["Evaluation/support-gate"] = {"passed": True, "model_fingerprint": model_fp}
        staging = self.store.staging_dir(spec_fp)
        try:
            outputs = (controller or DeploymentController()).apply(deployment, ctx, staging)
        except Exception:
            self.store.discard(staging)
            raise
        self.store.publish(spec_fp, staging)
        self.store.write_record(ResourceRecord(kind="Deployment", name=name, fingerprint=spec_fp,
                                               spec=deployment.normalized_spec(), outputs=outputs))
        return outputs

    def record(self, name: str = APP) -> ResourceRecord:
        return self.store.read_records()[f"Deployment/{name}"]

    def observe(self, name: str = APP) -> str | None:
        return DeploymentController().observe(self.record(name), self.project)

    def delete(self, name: str) -> None:
        ctx = ApplyContext(self.project, self.store, {}, {}, {}, lambda line: None)
        DeploymentController().delete(self.record(name), ctx)


class Load:
    """Client threads sending chat completions until stopped; every answer is kept."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.clients = url, clients
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"{self.url}/chat/completions", json={
                        "model": APP, "max_tokens": 4, "messages": [{"role": "user", "content": "Where is my invoice?"}]})
                    self.results.append((r.status_code, r.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.results.append((-1, repr(exc)))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        while not self.results:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # some traffic after the change too
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def failures(self) -> list:
        return [r for r in self.results if r[0] != 200]

    def versions(self) -> set[str]:
        return {v for status, v in self.results if status == 200}


@pytest.fixture(scope="module")
def live(ray_project, monkeypatch_module):
    port = _serve_port(ray_project)
    project = Project(ray_project.root, ray_project.settings.model_copy(update={"serve": ServeSettings(port=port)}))
    monkeypatch_module.setenv(KEYS_ENV, f"sk-other,{API_KEY}")
    monkeypatch_module.setenv(OTHER_KEYS_ENV, OTHER_KEY)
    harness = Harness(project, f"http://127.0.0.1:{port}/v1")
    yield harness
    for name in (OTHER, APP):
        undeploy(project, name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def versions(live):
    return {tag: live.model(tag) for tag in ("v1", "v2", "v3")}


def _served_version(url: str, key: str = API_KEY, model: str = APP) -> str | None:
    listed = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    return next(m["version"] for m in listed if m["id"] == model)


def _replicas(project: Project) -> set[str]:
    app = open_cluster(project).application(APP)
    return {r["actor_name"] for d in app["deployments"].values() for r in d["replicas"]}


def test_first_version_serves_the_openai_api(live, versions):
    import openai

    outputs = live.apply(versions["v1"], rollout={"strategy": "canary", "steps": [50, 100], "analysis": FAST})
    assert outputs["model_fingerprint"] == versions["v1"] and outputs["model_version"] == versions["v1"][:12]
    assert outputs["endpoint"] == live.url and outputs["previous_model_fingerprint"] is None
    live.replicas = _replicas(live.project)

    client = openai.OpenAI(base_url=live.url, api_key=API_KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [APP]

    chat = client.chat.completions.create(model=APP, messages=[{"role": "user", "content": "Where is my invoice?"}],
                                          max_tokens=8, temperature=0, extra_body={"unknown_field": 1})
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.prompt_tokens > 0 and 0 < chat.usage.completion_tokens <= 8
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    capped = client.completions.create(model=APP, prompt="Hello", max_tokens=500, temperature=0)
    assert capped.usage.completion_tokens <= 16  # limits.max_new_tokens clamps the request

    stream = client.chat.completions.create(model=APP, messages=[{"role": "user", "content": "Where is my invoice?"}],
                                            max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.url, api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=APP, prompt="word " * 200, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=4)

    headers = {"Authorization": f"Bearer {API_KEY}"}
    huge = httpx.post(f"{live.url}/completions", headers=headers, json={"model": APP, "prompt": "x" * 5000})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    missing = httpx.post(f"{live.url}/completions", json={"model": APP, "prompt": "hi"})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    root = live.url.removesuffix("/v1")
    assert httpx.get(f"{root}/healthz").json() == {"status": "ok"}  # the gateway's: it names no deployment
    assert _served_version(live.url) == versions["v1"][:12]
    metrics = httpx.get(f"{root}/metrics").text
    labels = f'deployment="{APP}",version="{versions["v1"][:12]}"'
    assert f'llmops_requests_total{{{labels},endpoint="chat",code="200"}} 2' in metrics
    assert f'llmops_request_duration_seconds_count{{{labels}}} 3' in metrics and 'kind="completion"' in metrics
    assert f'llmops_time_to_first_token_seconds_count{{{labels}}} 1' in metrics  # the one streamed answer
    # unauthenticated attempts are counted, never logged (anonymous clients cannot grow the log)
    assert 'llmops_unauthenticated_requests_total{endpoint="models"} 1' in metrics
    assert 'llmops_unauthenticated_requests_total{endpoint="completions"} 1' in metrics
    assert 'code="401"' not in metrics

    entries = read_logs(live.project, APP, limit=100)
    assert {e["status"] for e in entries} == {200, 400}
    # what the gateway could not attribute to a deployment (unknown model, too large) is its own
    assert {e["status"] for e in read_logs(live.project, GATEWAY_APP, limit=100)} == {404, 413}
    assert all("request" not in e for e in entries)  # no payloads unless log_payloads
    ok = [e for e in entries if e["status"] == 200]
    assert ok[0]["model_version"] == versions["v1"][:12] and ok[0]["completion_tokens"] > 0
    log_text = live.project.state_dir.joinpath("serve", "requests", f"{APP}.jsonl").read_text()
    assert API_KEY not in log_text
    assert API_KEY not in json.dumps(live.record().model_dump()) and live.observe() is None


def test_canary_is_promoted_under_load(live, versions):
    with Load(live.url) as load:
        outputs = live.apply(versions["v2"], rollout={"strategy": "canary", "steps": [50, 100], "analysis": FAST})
    assert load.failures() == []
    assert load.versions() == {versions["v1"][:12], versions["v2"][:12]}
    assert outputs["model_version"] == versions["v2"][:12]
    assert outputs["previous_model_fingerprint"] == versions["v1"]
    assert [s["step"] for s in outputs["canary_analysis"]] == [50, 100]
    assert all(s["passed"] and s["requests"] > 0 for s in outputs["canary_analysis"])
    assert live.observe() is None


def test_failed_canary_is_rolled_back_under_load(live, versions):
    before = live.record()
    with Load(live.url) as load:
        with pytest.raises(RolloutFailed, match="failed analysis at 25% traffic"):
            live.apply(versions["v3"], controller=DeploymentController(fault_error_rate=1.0),
                       rollout={"strategy": "canary", "steps": [25, 100], "analysis": FAST})
    assert load.failures() == []  # the ingress retried the canary's failures on the stable version
    assert live.record() == before and live.observe() is None  # v2 serves 100 %, as recorded
    with Load(live.url, clients=2) as after:
        time.sleep(1)
    assert after.versions() == {versions["v2"][:12]}


def test_a_version_that_cannot_load_never_gets_traffic(live, versions):
    with Load(live.url) as load:
        with pytest.raises(RolloutFailed, match="could not load model version"):
            live.apply(live.broken_model(), rollout={"strategy": "blue-green", "drain_s": 0})
    assert load.failures() == [] and load.versions() == {versions["v2"][:12]}
    assert live.observe() is None


def test_blue_green_switch_under_load(live, versions):
    with Load(live.url) as load:
        outputs = live.apply(versions["v3"], rollout={"strategy": "blue-green", "drain_s": 1})
    assert load.failures() == []
    assert outputs["model_version"] == versions["v3"][:12] and outputs["previous_model_fingerprint"] == versions["v2"]
    assert load.results[-1][1] == versions["v3"][:12]


def test_rollback_returns_to_the_previous_version(live, versions):
    with Load(live.url, clients=2) as load:
        outputs = rollback(live.project, APP, report=lambda line: None)
    assert load.failures() == []
    assert outputs["model_fingerprint"] == versions["v2"] and outputs["previous_model_fingerprint"] == versions["v3"]
    assert _served_version(live.url) == versions["v2"][:12]
    assert live.observe() is None and "rolled back" in live.record().message


def test_rolling_update_under_load(live, versions):
    with Load(live.url) as load:
        outputs = live.apply(versions["v1"], rollout={"strategy": "rolling"}, log_payloads=True)
    assert load.failures() == []
    assert outputs["model_version"] == versions["v1"][:12] and outputs["previous_model_fingerprint"] == versions["v2"]
    assert load.results[-1][1] == versions["v1"][:12]
    last = read_logs(live.project, APP, limit=1)[0]
    assert "Where is my invoice?" in last["request"] and isinstance(last["completion"], list)


def test_drift_is_seen_and_apply_restores_it(live, versions, monkeypatch):
    dashboard = open_cluster(live.project)
    options = http_options("127.0.0.1", live.project.settings.serve.port)
    config = dashboard.application(APP)["deployed_app_config"]
    config["deployments"][0]["max_ongoing_requests"] = 7  # someone edits the live app by hand
    dashboard.put_application(config, options)
    assert "changed outside llmops" in live.observe()
    outputs = live.apply(versions["v1"], rollout={"strategy": "rolling"})
    assert live.observe() is None and outputs["model_version"] == versions["v1"][:12]

    monkeypatch.setenv(KEYS_ENV, "sk-rotated")  # key rotation is an update of the live app
    assert "API keys" in live.observe()
    live.apply(versions["v1"], rollout={"strategy": "rolling"})
    assert live.observe() is None
    rotated = httpx.get(f"{live.url}/models", headers={"Authorization": "Bearer sk-rotated"})
    assert rotated.status_code == 200
    assert httpx.get(f"{live.url}/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401
    assert _replicas(live.project) == live.replicas  # every change so far was a lightweight update

    dashboard.delete_application(APP, options)
    assert "is missing" in live.observe()
    live.apply(versions["v1"], rollout={"strategy": "rolling"})
    assert live.observe() is None
    assert _served_version(live.url, key="sk-rotated") == versions["v1"][:12]


QUESTION = [{"role": "user", "content": "Where is my invoice?"}]


def _ask(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                      json={"model": model, "max_tokens": 4, "messages": QUESTION})


def test_two_deployments_behind_one_gateway(live, versions):
    import openai

    live.apply(versions["v1"], rollout={"strategy": "rolling"})  # the module's keys again (drift test rotated them)
    outputs = live.apply(versions["v2"], name=OTHER, keys_env=OTHER_KEYS_ENV, route_prefix="/geo")
    own = live.url.removesuffix("/v1") + "/geo/v1"
    assert outputs["endpoint"] == live.url and outputs["model_id"] == OTHER and outputs["own_endpoint"] == own
    assert live.observe(OTHER) is None and live.observe() is None

    mine = openai.OpenAI(base_url=live.url, api_key=API_KEY, max_retries=0)
    theirs = openai.OpenAI(base_url=live.url, api_key=OTHER_KEY, max_retries=0)
    assert [m.id for m in mine.models.list().data] == [APP]  # each key sees only its own deployments
    assert [m.id for m in theirs.models.list().data] == [OTHER]
    answer = theirs.chat.completions.create(model=OTHER, messages=QUESTION, max_tokens=4)
    assert answer.model == OTHER and answer.usage.completion_tokens > 0
    with pytest.raises(openai.PermissionDeniedError):  # a key of one deployment never opens another
        mine.chat.completions.create(model=OTHER, messages=QUESTION, max_tokens=4)

    assert _ask(live.url, API_KEY, APP).headers["x-model-version"] == versions["v1"][:12]
    assert _ask(live.url, OTHER_KEY, OTHER).headers["x-model-version"] == versions["v2"][:12]
    by_version = _ask(live.url, OTHER_KEY, versions["v2"][:12])  # the model id it advertises selects it too
    assert by_version.headers["x-model-version"] == versions["v2"][:12]
    refused = _ask(live.url, OTHER_KEY, APP)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_permitted"
    unknown = _ask(live.url, OTHER_KEY, "gpt-4")
    assert unknown.status_code == 404 and APP not in unknown.json()["error"]["message"]
    assert _ask(own, OTHER_KEY, OTHER).status_code == 200  # its explicit route_prefix serves it too
    assert _ask(own, API_KEY, OTHER).status_code == 401
    assert {e["status"] for e in read_logs(live.project, OTHER, limit=50)} == {200}

    with Load(live.url, clients=2) as load:
        live.delete(OTHER)
    assert load.failures() == [] and load.versions() == {versions["v1"][:12]}
    assert [m.id for m in mine.models.list().data] == [APP]
    assert _ask(live.url, OTHER_KEY, OTHER).status_code == 401  # its key opens nothing any more
    assert _ask(own, OTHER_KEY, OTHER).status_code == 404  # its prefix is gone (the gateway answers)
    assert "is missing" in live.observe(OTHER) and live.observe() is None


def test_client_disconnects_are_499_and_never_count_against_a_version(live):
    from ray import serve

    ingress = serve.get_deployment_handle("ingress", app_name=APP)
    start = ingress.outcomes_since.remote(float("inf")).result(timeout_s=30)["sequence"]
    began, address = time.time(), urlsplit(live.url)
    body = json.dumps({"model": APP, "max_tokens": 16, "prompt": ["Tell me about invoices"] * 16}).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {address.hostname}\r\nAuthorization: Bearer {API_KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with Load(live.url, clients=4):  # a busy slot: the dropped requests are still queued or generating
        for _ in range(4):
            with socket.create_connection((address.hostname, address.port)) as sock:
                sock.sendall(request)
                time.sleep(0.1)  # sent; gone before the answer
        time.sleep(3)
    logged = [e for name in (APP, GATEWAY_APP) for e in read_logs(live.project, name, limit=500) if e["time"] >= began]
    dropped = [(e["deployment"], e["status"], e["latency_ms"]) for e in logged if e["endpoint"] == "completions"]
    # Each is logged once, as 499 (or 200 if it finished first); one Serve cancelled before it
    # reached the gateway is not logged at all. A client that left is never a server error.
    assert len(dropped) <= 4 and {status for _, status, _ in dropped} <= {200, 499}, dropped
    assert (APP, 499) in {(name, status) for name, status, _ in dropped}, dropped  # gone while its slot worked
    assert not [e for e in logged if e["status"] >= 500]
    outcomes = ingress.outcomes_since.remote(start).result(timeout_s=30)["slots"]
    assert outcomes and all(ok for samples in outcomes.values() for _, ok, _ in samples)
    assert 'endpoint="completions",code="499"}' in httpx.get(live.url.removesuffix("/v1") + "/metrics").text


def test_a_slow_body_times_out_with_408(live):
    address = urlsplit(live.url)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {address.hostname}\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    response, started = b"", time.monotonic()
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.sendall(head.encode() + b'{"model": ')
        sock.settimeout(0.5)
        while time.monotonic() - started < BODY_TIMEOUT_S + 20 and b"request_timeout" not in response:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                sock.sendall(b" ")  # a byte every half second: slow, never done
                continue
            if not chunk:
                break
            response += chunk
    elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b'"code":"request_timeout"' in response and elapsed < BODY_TIMEOUT_S + 5
    assert 408 in {e["status"] for e in read_logs(live.project, GATEWAY_APP, limit=100)}
    assert _ask(live.url, API_KEY, APP).status_code == 200


def test_delete_removes_the_app(live):
    live.delete(APP)
    assert "is missing" in live.observe()
    gateway = (open_cluster(live.project).details().get("applications") or {}).get(GATEWAY_APP) or {}
    assert gateway.get("status") in (None, "DELETING")  # no routes left, so no gateway
