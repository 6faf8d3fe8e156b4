"""A grounded base-model deployment through the real engine on a real Ray Serve (127.0.0.1):
no TuningJob, no gate; each chat request retrieves from the knowledge base, the response and the
stream's finish chunk list the sources (the official SDK keeps them), the request log records
chunk ids and no document text, a changed document rolls out a new version, and a broken
rebuild leaves the live version serving."""

import json
import secrets

import httpx
import pytest

from llmops_engine.engine import Engine
from llmops_engine.errors import KnowledgeBaseError
from llmops_engine.project import Project, ServeSettings, load_project
from llmops_engine.serving.deploy import undeploy
from llmops_engine.serving.logs import log_path
from tests.test_rag_apply import DOCS, write_kb
from tests.test_serve_live import _serve_port

pytestmark = pytest.mark.slow

KEYS_ENV = "LLMOPS_TEST_RAG_KEYS"
API_KEY = "sk-rag-" + secrets.token_hex(8)
SPECS = """\
apiVersion: llmops/v1
kind: Prompt
metadata: {name: rag}
spec:
  template: "Docs: {context}\\nQ: {instruction}\\nA:"
---
apiVersion: llmops/v1
kind: Deployment
metadata: {name: help}
spec:
  model: builtin:tiny-llama
  prompt: rag
  gate: null
  knowledge_base: docs
  rollout: {strategy: rolling}
  auth: {api_keys_env: %s}
  limits: {max_new_tokens: 4, max_prompt_tokens: 1000}
""" % KEYS_ENV
QUESTION = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture
def grounded(ray_project, tmp_path, monkeypatch):
    import ray

    from llmops_engine import raycluster

    info = raycluster.ensure_cluster(ray_project)
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)  # the session's head, as CI reaches a cluster
    monkeypatch.setenv("RAY_DASHBOARD_URL", info.dashboard_url)
    monkeypatch.setenv("RAY_AUTH_TOKEN", raycluster.token_path(ray_project).read_text().strip())
    monkeypatch.setenv(KEYS_ENV, API_KEY)
    write_kb(tmp_path)
    (tmp_path / "specs" / "help.yaml").write_text(SPECS)
    port = _serve_port(ray_project)
    loaded = load_project(tmp_path)
    project = Project(tmp_path, loaded.settings.model_copy(update={"serve": ServeSettings(port=port)}))
    yield project, f"http://127.0.0.1:{port}/v1"
    undeploy(project, "help")


def apply(project: Project) -> int:
    return Engine(project, report=lambda line: None).apply().exit_code()


def test_a_grounded_base_model_serves_with_sources_and_survives_a_bad_rebuild(grounded):
    import openai

    project, url = grounded
    assert apply(project) == 0
    record = Engine(project).records()["Deployment/help"]
    assert record.outputs["served"]["base"] == "builtin:tiny-llama"
    assert record.outputs["knowledge_base"] == Engine(project).records()["KnowledgeBase/docs"].fingerprint

    client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    answer = client.chat.completions.create(model="help", messages=QUESTION, max_tokens=4)
    sources = answer.model_extra["sources"]
    assert len(sources) == 2 and sources[0]["source"] == "kb/passwords.md"
    assert answer.usage.prompt_tokens > len("Settings > Security")  # the chunk text went into the prompt

    chunks = list(client.chat.completions.create(model="help", messages=QUESTION, max_tokens=4, stream=True))
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["sources"] == sources

    log = log_path(project, "help").read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    assert entries[-1]["sources"] == [s["id"] for s in sources]
    assert "Reset password" not in log and "Settings > Security" not in log  # ids, never document text

    # A changed document is a new version of the deployment (rolled out like a new model).
    first_version = record.outputs["model_version"]
    docs = project.root / "kb" / "passwords.md"
    docs.write_text(DOCS["passwords.md"].replace("Reset password", "Forgot password"))
    plan = Engine(project).plan().plan
    assert {a.key for a in plan.changes} == {"KnowledgeBase/docs", "Deployment/help"}
    assert apply(project) == 0
    second_version = Engine(project).records()["Deployment/help"].outputs["model_version"]
    assert second_version != first_version
    ask = lambda: httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},  # noqa: E731
                             json={"model": "help", "messages": QUESTION, "max_tokens": 2}, timeout=60)
    assert ask().headers["x-model-version"] == second_version

    # A rebuild that fails (an unreadable document) changes nothing live.
    (project.root / "kb" / "broken.md").write_bytes(b"\x00\x01binary")
    steps = {s.key: s for s in Engine(project, report=lambda line: None).apply().steps}
    assert steps["KnowledgeBase/docs"].status == "failed" and steps["Deployment/help"].status == "blocked"
    error = steps["KnowledgeBase/docs"].error
    assert isinstance(error, KnowledgeBaseError) and "kb/broken.md" in str(error)
    still = ask()
    assert still.status_code == 200 and still.headers["x-model-version"] == second_version
