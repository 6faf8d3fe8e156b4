"""Real token streaming on Ray Serve: the real SmolLM2 weights behind the project's gateway.

Tokens leave the replica as the engine samples them (time to first token is a fraction of the
whole answer), a streamed answer is the same as the whole one, streams share decode steps with
each other, and a client that leaves stops its generation at the next step. The same API from
`engine: llama-cpp` on SmolLM2's GGUF, where the llama-cpp extra is installed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llmops_engine.project import Project, ServeSettings
from llmops_engine.serving.config import INGRESS, ModelRef
from llmops_engine.serving.deploy import deploy, undeploy
from llmops_engine.specs.deployment import DeploymentSpec
from tests.test_serve_live import _serve_port

pytestmark = pytest.mark.slow

APP = "stream-api"
BASE = "builtin:smollm2-135m-instruct"
PROMPT = {"format": "chat", "template": "{instruction}", "system": None, "template_no_input": None}
LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
MAX_NEW_TOKENS = 384


def _deploy(ray_project, store_root, app: str, engine: str):
    from llmops_engine.models import resolve_base
    from llmops_engine.models.chat import chat_template_of
    from llmops_engine.specs.prompt import PromptSpec
    from transformers import AutoTokenizer

    port = _serve_port(ray_project)
    project = Project(ray_project.root, ray_project.settings.model_copy(update={"serve": ServeSettings(port=port)}))
    base = resolve_base(BASE, store_root)
    prompt = PromptSpec(format="chat", template="{instruction}").saved(chat_template_of(AutoTokenizer.from_pretrained(base.path), BASE))
    spec = DeploymentSpec.model_validate({
        "model": BASE, "prompt": "p", "gate": None, "auth": "none", "engine": engine,
        "limits": {"max_new_tokens": MAX_NEW_TOKENS}, "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02},
    }).model_dump(mode="json")
    target = ModelRef(version=f"smollm2-{engine}", fingerprint="smollm2", base=BASE, store_root=str(store_root),
                      prompt=prompt, engine=engine)
    deploy(project, app, spec, target, report=lambda line: None)
    return project, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def served(ray_project, smollm2_store):
    project, url = _deploy(ray_project, smollm2_store, APP, "transformers")
    yield url
    undeploy(project, APP)


def _slot_info() -> dict:
    from ray import serve

    routes = serve.get_deployment_handle(INGRESS, app_name=APP).routes.remote().result(timeout_s=30)
    return serve.get_deployment_handle(routes["primary"], app_name=APP).info.remote().result(timeout_s=30)


def _stream(url: str, max_tokens: int, messages=LONG, app: str = APP) -> dict:
    """Content deltas with their arrival times, the finish reason and usage of one streamed chat answer."""
    body = {"model": app, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started, arrivals, texts, finish, usage = time.perf_counter(), [], [], None, None
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                if choice["delta"].get("content"):
                    arrivals.append(time.perf_counter() - started)
                    texts.append(choice["delta"]["content"])
                finish = choice.get("finish_reason") or finish
    return {"arrivals": arrivals, "text": "".join(texts), "finish": finish, "usage": usage,
            "total": time.perf_counter() - started}


def test_tokens_leave_as_they_are_generated_and_match_the_whole_answer(served):
    streamed = _stream(served, 64)
    assert len(streamed["arrivals"]) >= 8  # pieces as tokens come (a few per 30 ms window at most), not one block
    assert streamed["arrivals"][0] < 0.4 * streamed["total"], streamed["arrivals"][:3]  # TTFT: one prefill
    spread = streamed["arrivals"][-1] - streamed["arrivals"][0]
    assert spread > 0.5 * (streamed["total"] - streamed["arrivals"][0])  # they arrived over the whole answer

    whole = httpx.post(f"{served}/chat/completions", timeout=120,
                       json={"model": APP, "messages": LONG, "max_tokens": 64, "temperature": 0}).json()
    assert streamed["text"] == whole["choices"][0]["message"]["content"]
    assert streamed["finish"] == whole["choices"][0]["finish_reason"] == "length"
    assert streamed["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"] == 64


def test_concurrent_streams_share_decode_steps(served):
    before = _slot_info()
    questions = [[{"role": "user", "content": f"Tell me fact number {i} about the sea."}] for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda m: _stream(served, 32, m), questions))
    after = _slot_info()
    assert all(a["finish"] in ("stop", "length") and a["text"] for a in answers)
    rows = after["mean_batch_size"] * after["batches"] - before["mean_batch_size"] * before["batches"]
    assert rows / (after["batches"] - before["batches"]) > 2  # rows decoded together, not one request at a time


def test_a_client_that_leaves_stops_its_generation(served):
    before = _slot_info()["generated_tokens"]
    body = {"model": APP, "messages": LONG, "max_tokens": MAX_NEW_TOKENS, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{served}/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                break  # the first token arrived: leave
    deadline = time.monotonic() + 10
    while _slot_info()["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    info = _slot_info()
    assert info["active"] == 0 and info["waiting"] == 0
    assert info["generated_tokens"] - before < MAX_NEW_TOKENS / 2  # cancelled long before its max_tokens


def test_a_streamed_completion_interleaves_its_prompts_as_they_are_generated(served):
    prompts = ["The capital of France is", "Once upon a time, in a small village,"]
    body = {"model": APP, "prompt": prompts, "max_tokens": 24, "temperature": 0}
    whole = httpx.post(f"{served}/completions", json=body, timeout=120).json()
    texts, finishes, order = ["", ""], [None, None], []
    with httpx.stream("POST", f"{served}/completions", json={**body, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    texts[choice["index"]] += choice["text"]
                    finishes[choice["index"]] = choice["finish_reason"] or finishes[choice["index"]]
                    order.append(choice["index"])
    assert texts == [c["text"] for c in sorted(whole["choices"], key=lambda c: c["index"])]
    assert finishes == [c["finish_reason"] for c in sorted(whole["choices"], key=lambda c: c["index"])]
    assert len(order) > 10 and set(order[: len(order) // 2]) == {0, 1}  # both decode together from the start


LLAMA_APP = "stream-api-gguf"


@pytest.fixture(scope="module")
def served_gguf(ray_project, smollm2_store):
    pytest.importorskip("llama_cpp", reason="engine llama-cpp needs the llama-cpp extra (pip install '.[llama-cpp]')")
    project, url = _deploy(ray_project, smollm2_store, LLAMA_APP, "llama-cpp")
    yield url
    undeploy(project, LLAMA_APP)


def test_llama_cpp_engine_streams_the_same_api(served_gguf):
    streamed = _stream(served_gguf, 48, app=LLAMA_APP)
    assert len(streamed["arrivals"]) >= 4 and streamed["arrivals"][0] < 0.5 * streamed["total"]
    whole = httpx.post(f"{served_gguf}/chat/completions", timeout=120,
                       json={"model": LLAMA_APP, "messages": LONG, "max_tokens": 48, "temperature": 0}).json()
    # Not compared word for word: llama.cpp's greedy answer can change with its prompt cache (a
    # prompt evaluated in other batch sizes rounds differently), as in its own server.
    assert streamed["text"] and whole["choices"][0]["message"]["content"]
    assert streamed["usage"] == {k: whole["usage"][k] for k in streamed["usage"]}
    assert streamed["finish"] == whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 48
    headers = httpx.post(f"{served_gguf}/chat/completions", timeout=120,
                         json={"model": LLAMA_APP, "messages": LONG, "max_tokens": 2}).headers
    assert headers["x-model-version"] == "smollm2-llama-cpp"
