"""Load tests: the k6-style judge (a scenario table), the generator against real servers on
127.0.0.1 (fast, slow, hanging, failing, broken, huge), who may be targeted, and `llmops loadtest`
end to end on a project whose Deployment record points at a local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from llmops_engine.cli import app
from llmops_engine.errors import LoadTestError
from llmops_engine.loadtest import generator
from llmops_engine.loadtest.command import load_settings
from llmops_engine.loadtest.generator import run_load
from llmops_engine.loadtest.messages import GENERIC_QUESTIONS, load_messages
from llmops_engine.loadtest.results import KEPT_RESULTS, summary_line, with_load_test
from llmops_engine.loadtest.target import Target, target_of
from llmops_engine.loadtest.thresholds import judge_load
from llmops_engine.project import Project, ProjectSettings, ServeSettings
from llmops_engine.state.records import ResourceRecord
from llmops_engine.state.stores import open_store

from .loadtest_server import COMPLETION_TOKENS, StreamServer
from .provider_server import FakeProvider

# the judge ---------------------------------------------------------------------------------------

RESULT = {"requests": 100, "ok": 98, "error_rate": 0.02, "rps": 5.0, "tokens_per_s": 40.0,
          "latency_ms": {"p50": 100.0, "p95": 300.0, "p99": 500.0, "max": 700.0},
          "ttft_ms": {"p50": 20.0, "p95": 50.0, "p99": 80.0}}
NOTHING = {"requests": 0, "ok": 0, "error_rate": 0.0, "rps": 0.0, "tokens_per_s": 0.0,
           "latency_ms": {"p50": None, "p95": None, "p99": None, "max": None}, "ttft_ms": {"p50": None, "p95": None, "p99": None}}
ALL_FAILED = {**NOTHING, "requests": 10, "error_rate": 1.0}


@pytest.mark.parametrize("result,thresholds,passed,problem", [
    (RESULT, {}, True, None),
    (RESULT, {"p95_ms": None, "error_rate": None}, True, None),  # None: not checked
    (RESULT, {"p50_ms": 100}, True, None),  # the boundary passes
    (RESULT, {"p50_ms": 99.9}, False, "p50 latency 100 ms > 99.9 ms"),
    (RESULT, {"p95_ms": 300}, True, None),
    (RESULT, {"p95_ms": 299.9}, False, "p95 latency 300 ms > 299.9 ms"),
    (RESULT, {"p99_ms": 500}, True, None),
    (RESULT, {"p99_ms": 499}, False, "p99 latency 500 ms > 499 ms"),
    (RESULT, {"ttft_p95_ms": 50}, True, None),
    (RESULT, {"ttft_p95_ms": 49}, False, "p95 time to first token 50 ms > 49 ms"),
    (RESULT, {"error_rate": 0.02}, True, None),
    (RESULT, {"error_rate": 0.01}, False, "error rate 0.02 > 0.01"),
    (RESULT, {"min_rps": 5}, True, None),
    (RESULT, {"min_rps": 5.01}, False, "requests/s 5 < 5.01"),
    (RESULT, {"min_tokens_per_s": 40}, True, None),
    (RESULT, {"min_tokens_per_s": 41}, False, "tokens/s 40 < 41"),
    (NOTHING, {}, True, None),
    (NOTHING, {"error_rate": 0.5}, False, "error rate cannot be judged: no request was made"),
    (NOTHING, {"p95_ms": 1000}, False, "p95 latency cannot be judged: no request was made"),
    (ALL_FAILED, {"p95_ms": 1000}, False, "p95 latency cannot be judged: no request succeeded"),
    (ALL_FAILED, {"min_rps": 1}, False, "requests/s cannot be judged: no request succeeded"),
    (RESULT, {"p95_ms": 3000, "bogus": 1}, False, "unknown threshold 'bogus'"),
])
def test_judge_load(result, thresholds, passed, problem):
    verdict = judge_load(result, thresholds)
    assert verdict["passed"] is passed
    assert verdict["problems"] == ([problem] if problem else [])
    assert (problem or "") in verdict["summary"]


def test_judge_load_lists_every_failed_threshold():
    verdict = judge_load(RESULT, {"p95_ms": 10, "error_rate": 0.0, "min_rps": 100, "p50_ms": 1000})
    assert not verdict["passed"] and len(verdict["problems"]) == 3
    assert verdict["summary"].startswith("FAILED 3 of 4 threshold(s)")


# the generator -----------------------------------------------------------------------------------


def test_a_fast_server_is_counted_and_timed():
    with StreamServer() as server:
        target = Target(server.url, "m", None)
        started = time.perf_counter()
        result = run_load(target, 4, 0.6, max_tokens=5, messages=[[{"role": "user", "content": "hi"}]])
        wall = time.perf_counter() - started
    assert 0.6 <= wall < 2.5  # generous: the machine is shared
    assert result["requests"] == result["ok"] == server.requests > 20
    assert result["errors"] == 0 and result["error_rate"] == 0.0 and result["status_counts"] == {"200": result["ok"]}
    assert result["stopped_by"] == "duration" and result["interrupted"] == 0
    assert 0.6 <= result["elapsed_s"] < 1.5
    assert result["rps"] == pytest.approx(result["ok"] / result["elapsed_s"], rel=0.01)
    assert result["completion_tokens"] == COMPLETION_TOKENS * result["ok"]  # from usage, not the chunk count
    latency, ttft = result["latency_ms"], result["ttft_ms"]
    assert 0 < ttft["p50"] <= latency["p50"] and latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # one pool of `clients` keep-alive connections
    assert server.connections <= 4 and server.most_open <= 4
    assert server.bodies[0]["stream"] is True and server.bodies[0]["stream_options"] == {"include_usage": True}
    assert server.bodies[0]["max_tokens"] == 5 and server.bodies[0]["model"] == "m"


def test_time_to_first_token_is_the_first_content_chunk():
    with StreamServer(chunk_delay_s=0.02) as server:  # role chunk at 20 ms, first word at 40 ms, ... [DONE] at 140 ms
        result = run_load(Target(server.url, "m", None), 1, 5.0, max_requests=3)
    assert result["stopped_by"] == "max_requests" and result["ok"] == 3
    assert 35 <= result["ttft_ms"]["p50"] < 300
    assert result["latency_ms"]["p50"] - result["ttft_ms"]["p50"] >= 80


def test_max_requests_is_honoured_exactly():
    with FakeProvider(models=["m"], key="sk-load") as upstream:
        result = run_load(Target(upstream.url, "m", "sk-load"), 8, 10.0, max_requests=37)
        assert upstream.attempts() == 37
    assert result["requests"] == result["ok"] == 37 and result["stopped_by"] == "max_requests"
    assert upstream.requests[0][1]["authorization"] == "Bearer sk-load"


def test_injected_errors_are_counted_by_status():
    with FakeProvider(models=["m"]) as upstream:
        upstream.script(["500", "429:retry-after=1", "503", "401"])
        result = run_load(Target(upstream.url, "m", None), 4, 10.0, max_requests=20)
    assert result["requests"] == 20 and result["errors"] == 4 and result["error_rate"] == pytest.approx(0.2)
    assert result["status_counts"] == {"200": 16, "401": 1, "429": 1, "500": 1, "503": 1}
    assert result["latency_ms"]["p50"] is not None  # percentiles are over successful requests


@pytest.mark.parametrize("behaviour,bucket", [
    ("broken_stream", "broken_stream"),  # the connection closes mid-body
    ("huge_line", "too_large"),  # a 2 MiB SSE line
    ("huge", "bad_response"),  # 9 MiB of JSON where a stream was asked for: not read
    ("non_json", "bad_response"),
])
def test_broken_and_huge_answers_from_the_provider_server_are_errors(behaviour, bucket):
    with FakeProvider(models=["m"]) as upstream:
        upstream.script([behaviour] * 3)
        result = run_load(Target(upstream.url, "m", None), 1, 10.0, max_requests=5)
    assert result["status_counts"] == {"200": 2, bucket: 3}


@pytest.mark.parametrize("behaviour,bucket", [
    ("error_event", "stream_error"),
    ("no_done", "broken_stream"),  # ends cleanly, but without [DONE]
    ("endless", "too_large"),  # bounded at MAX_STREAM_BYTES, not read forever
    ("redirect", "302"),  # not followed
    ("gzip", "bad_response"),  # never inflated
])
def test_stream_faults_are_errors(behaviour, bucket):
    with StreamServer() as server:
        server.script([behaviour] * 2)
        started = time.perf_counter()
        result = run_load(Target(server.url, "m", None), 1, 10.0, max_requests=4)
    assert result["status_counts"] == {"200": 2, bucket: 2}
    assert time.perf_counter() - started < 3


def test_a_hanging_server_times_out_within_the_duration_and_grace():
    with StreamServer(default="hang") as server:
        started = time.perf_counter()
        result = run_load(Target(server.url, "m", None), 4, 0.5)  # the request timeout defaults to the duration
        wall = time.perf_counter() - started
    assert wall < 0.5 + 0.5 + 0.5  # duration + grace (capped by the request timeout) + slack
    assert result["status_counts"] == {"timeout": 4} and result["error_rate"] == 1.0 and result["ok"] == 0
    assert judge_load(result, {"error_rate": 0.01})["passed"] is False


def test_requests_still_running_after_the_grace_are_cancelled_as_interrupted(monkeypatch):
    monkeypatch.setattr(generator, "DRAIN_GRACE_S", 0.2)
    with StreamServer(default="slow:5") as server:
        started = time.perf_counter()
        result = run_load(Target(server.url, "m", None), 3, 0.3, request_timeout_s=10)
        wall = time.perf_counter() - started
    assert wall < 1.5
    assert result["interrupted"] == 3 and result["requests"] == 0 and result["stopped_by"] == "duration"
    assert judge_load(result, {"p95_ms": 10_000})["problems"] == ["p95 latency cannot be judged: no request was made"]


def test_an_unreachable_target_counts_connection_errors():
    with StreamServer() as server:
        url = server.url  # closed when the block ends: nothing listens there any more
    result = run_load(Target(url, "m", None), 2, 0.3)
    assert result["ok"] == 0 and set(result["status_counts"]) == {"connect_error"}


@pytest.mark.parametrize("kwargs,message", [
    ({"clients": 0}, "clients must be 1..256"),
    ({"clients": 257}, "clients must be 1..256"),
    ({"duration_s": 0}, "duration must be in (0, 600] s"),
    ({"max_requests": 100_001}, "max_requests must be 1..100000"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"url": "127.0.0.1:9/v1"}, "the target URL must be http(s)://host:port/…"),
    ({"url": "http://[::1/v1"}, "the target URL is not valid"),
])
def test_out_of_bounds_loads_are_refused(kwargs, message):
    arguments = {"clients": 1, "duration_s": 1.0, "url": "http://127.0.0.1:9/v1", **kwargs}
    with pytest.raises(LoadTestError) as refused:
        run_load(Target(arguments.pop("url"), "m", None), arguments.pop("clients"), arguments.pop("duration_s"),
                 **arguments)
    assert message in str(refused.value)


# the target --------------------------------------------------------------------------------------

PROJECT = Project(root=None, settings=ProjectSettings(serve=ServeSettings(host="127.0.0.1", port=8123)))


def deployment(endpoint="http://127.0.0.1:8123/v1", auth="none", **spec):
    return ResourceRecord(kind="Deployment", name="geo-api", fingerprint="f" * 64, spec={"auth": auth, **spec},
                          outputs={"endpoint": endpoint, "model_id": "geo-api", "model_version": "abc123"} if endpoint else {})


def test_the_target_is_the_recorded_gateway_with_the_first_key(monkeypatch):
    monkeypatch.setenv("GEO_KEYS", " sk-first , sk-second")
    target = target_of(PROJECT, deployment(auth={"api_keys_env": "GEO_KEYS"}))
    assert target == Target("http://127.0.0.1:8123/v1", "geo-api", "sk-first")
    assert "sk-first" not in repr(target)
    assert target_of(PROJECT, deployment()).api_key is None


@pytest.mark.parametrize("endpoint", [
    "http://10.0.0.7:8123/v1",  # another host
    "http://127.0.0.1:8124/v1",  # another port
    "http://127.0.0.1/v1",  # the default port
    "https://127.0.0.1:8123/v1",
    "http://user:pw@127.0.0.1:8123/v1",
    "http://127.0.0.1:8123/v1?next=http://elsewhere",
    "http://127.0.0.1:99999/v1",  # not a port
    "ftp://127.0.0.1:8123/v1",
])
def test_a_load_test_never_targets_an_address_outside_the_deployment(endpoint):
    with pytest.raises(LoadTestError, match="only targets the deployment's own address"):
        target_of(PROJECT, deployment(endpoint))


def test_an_unapplied_or_keyless_deployment_is_refused(monkeypatch):
    with pytest.raises(LoadTestError, match="has been applied"):
        target_of(PROJECT, None)
    with pytest.raises(LoadTestError, match="has no endpoint in its record"):
        target_of(PROJECT, deployment(endpoint=None))
    monkeypatch.delenv("GEO_KEYS", raising=False)
    with pytest.raises(LoadTestError, match=r"export \$GEO_KEYS"):
        target_of(PROJECT, deployment(auth={"api_keys_env": "GEO_KEYS"}))


# settings, messages, history ---------------------------------------------------------------------


def test_settings_come_from_the_spec_with_the_command_line_on_top():
    spec = {"rollout": {"load_test": {"clients": 16, "duration_s": 20, "thresholds": {"p95_ms": 3000}}}}
    settings = load_settings(spec, {"clients": None, "duration_s": 2.5})
    assert (settings.clients, settings.duration_s, settings.max_tokens) == (16, 2.5, 32)
    assert settings.thresholds.p95_ms == 3000
    assert load_settings({"rollout": {"load_test": None}}, {}).clients == 8  # no load_test: the defaults
    assert load_settings({}, {}).duration_s == 20
    with pytest.raises(LoadTestError, match="clients"):
        load_settings({}, {"clients": 1000})


def test_messages_are_the_eval_questions_shaped_by_the_prompt(tmp_path):
    store = open_store(Project(tmp_path, ProjectSettings()))
    staging = store.staging_dir("d" * 64)
    rows = [{"instruction": "Which river flows through Lyon?", "input": "Region: Rhône"}, {"instruction": "And Paris?"},
            {"no instruction": True}]
    (staging / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    store.publish("d" * 64, staging)
    records = {
        "Prompt/geo": ResourceRecord(kind="Prompt", name="geo", fingerprint="p" * 64, spec={"template": "{input}\n{instruction}"}),
        "Dataset/places": ResourceRecord(kind="Dataset", name="places", fingerprint="d" * 64, spec={}),
        "TuningJob/geo-tuned": ResourceRecord(kind="TuningJob", name="geo-tuned", fingerprint="t" * 64, spec={"dataset": "places"}),
    }
    spec = {"model": "geo-tuned", "prompt": "geo"}
    assert load_messages(store, records, spec) == [
        [{"role": "system", "content": "Region: Rhône"}, {"role": "user", "content": "Which river flows through Lyon?"}],
        [{"role": "user", "content": "And Paris?"}]]
    generic = load_messages(store, records, {"model": "provider:up/m", "prompt": "geo"})
    assert [chat[-1]["content"] for chat in generic] == list(GENERIC_QUESTIONS)


def test_the_history_keeps_the_newest_results_and_status_shows_the_last():
    outputs = {"endpoint": "x", "load_tests": "not a list"}
    for number in range(KEPT_RESULTS + 5):
        outputs = with_load_test(outputs, {"number": number})
    assert [entry["number"] for entry in outputs["load_tests"]] == list(range(5, KEPT_RESULTS + 5))
    entry = {"rps": 12.5, "latency_ms": {"p95": 840.0}, "error_rate": 0.0, "verdict": {"passed": False}}
    assert summary_line(entry) == "load test 12.5 rps p95 840 ms errors 0.0 % FAILED"
    assert summary_line({"rps": "junk", "latency_ms": []}) == "load test - rps p95 - ms errors -"


# the command -------------------------------------------------------------------------------------

runner = CliRunner()


def applied_project(tmp_path, port, load_test=None):
    """A project whose store holds a Deployment record pointing at the server on `port`."""
    (tmp_path / "llmops.yaml").write_text(f"serve: {{host: 127.0.0.1, port: {port}}}\n")
    project = Project(tmp_path, ProjectSettings(serve=ServeSettings(host="127.0.0.1", port=port)))
    spec = {"model": "provider:up/m", "auth": {"api_keys_env": "LLMOPS_TEST_LOAD_KEYS"},
            "rollout": {"strategy": "rolling", "load_test": load_test}}
    open_store(project).write_record(ResourceRecord(
        kind="Deployment", name="geo-api", fingerprint="f" * 64, spec=spec,
        outputs={"endpoint": f"http://127.0.0.1:{port}/v1", "model_id": "geo-api", "model_version": "v-abc"}))
    return project


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_the_command_loads_judges_and_keeps_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_TEST_LOAD_KEYS", "sk-load")
    with FakeProvider(models=["geo-api"], key="sk-load") as upstream:
        project = applied_project(tmp_path, upstream.port, {"clients": 2, "duration_s": 0.4,
                                                            "thresholds": {"error_rate": 0.01, "min_rps": 1}})
        passed = invoke("loadtest", "geo-api", "-C", tmp_path)
        upstream.script(["500"] * 500)
        failed = invoke("loadtest", "geo-api", "-C", tmp_path, "--clients", "1", "--max-requests", "5", "--json")
    assert passed.exit_code == 0, passed.output
    assert "requests/s (ok)" in passed.output and "passed all 2 threshold(s)" in passed.output
    assert failed.exit_code == 3, failed.output  # GateFailed
    assert "error rate 1 > 0.01" in failed.output
    history = open_store(project).read_records()["Deployment/geo-api"].outputs["load_tests"]
    assert [entry["verdict"]["passed"] for entry in history] == [True, False]
    assert history[1]["requests"] == 5 and history[1]["clients"] == 1 and history[1]["status_counts"] == {"500": 5}
    assert {history[1]["source"], history[1]["model_version"]} == {"cli", "v-abc"}
    assert "sk-load" not in json.dumps(history)
    status = invoke("status", "-C", tmp_path)
    assert "load test" in status.output and "FAILED" in status.output


def test_the_command_refuses_an_unapplied_deployment_and_a_foreign_endpoint(tmp_path):
    applied_project(tmp_path, 8123)
    missing = invoke("loadtest", "nope", "-C", tmp_path)
    assert missing.exit_code == 1 and "no Deployment named 'nope' has been applied" in missing.output
    (tmp_path / "llmops.yaml").write_text("serve: {host: 127.0.0.1, port: 8124}\n")  # the record says 8123
    foreign = invoke("loadtest", "geo-api", "-C", tmp_path)
    assert foreign.exit_code == 1 and "not this project's serve address" in foreign.output
    assert "Traceback" not in missing.output + foreign.output


def test_the_command_in_its_own_process_imports_nothing_heavy(tmp_path):
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['llmops', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('llmops_engine', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        "print('HEAVY', [m for m in ('torch', 'ray', 'great_expectations', 'transformers', 'pandas') if m in sys.modules])\n"
        "sys.exit(code)\n"
    )
    with FakeProvider(models=["geo-api"], key="sk-load") as upstream:
        applied_project(tmp_path, upstream.port, {"clients": 2, "duration_s": 0.3, "thresholds": {"p95_ms": 0.001}})
        done = subprocess.run([sys.executable, "-c", probe, "loadtest", "geo-api", "-C", str(tmp_path), "--json"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "LLMOPS_TEST_LOAD_KEYS": "sk-load"})
    assert done.returncode == 3, done.stdout + done.stderr  # p95 under 1 µs: the threshold fails
    assert "HEAVY []" in done.stdout
    entry = json.loads(done.stdout[: done.stdout.rindex("HEAVY")])
    assert entry["ok"] > 0 and entry["verdict"]["passed"] is False and "Traceback" not in done.stderr
