"""The pure parts of relaying a provider: the request it gets, the error when the chain is exhausted,
and a provider's stream re-addressed as the deployment's."""

import json

import pytest

from llmops_engine.serving.openai_api import RelayedStream
from llmops_engine.providers.chat import chat_body
from llmops_engine.serving.relay import exhausted

PROMPT = {"format": None, "system": "Be brief.", "template": "Q: {instruction}", "template_no_input": None}
GREEDY = {"max_new_tokens": 8, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}


@pytest.mark.parametrize("params,stops,expected", [
    (GREEDY, [], {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0}),
    ({**GREEDY, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 5}, ["\n"],
     {"max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 5, "stop": ["\n"]}),
])
def test_the_provider_gets_the_prompt_as_messages_and_the_requests_settings(params, stops, expected):
    body = chat_body(PROMPT, {"instruction": "hi", "input": ""}, params, stops)
    assert body.pop("messages") == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: hi"}]
    assert body == expected


@pytest.mark.parametrize("failures,code", [
    ([("provider:a/x", "provider_timeout")], "provider_timeout"),
    ([("provider:a/x", "provider_rate_limited"), ("provider:b/y", "provider_error")], "provider_error"),
])
def test_an_exhausted_chain_is_a_502_naming_who_failed_how(failures, code):
    error = exhausted(failures)
    assert error["status"] == 502 and error["code"] == code
    assert all(label in error["message"] for label, _ in failures)


def _events(relay: RelayedStream, items: list[dict]) -> list[dict]:
    lines = [line for item in items for line in relay.events(item)] + relay.close()
    return [json.loads(line[6:]) if line.startswith("data: {") else line.strip() for line in lines]


def test_a_provider_stream_is_re_addressed_and_its_usage_kept():
    relay = RelayedStream("rid", "relay", True, None, "provider:gw/small")
    upstream = [{"chunk": {"id": "up", "model": "support-api", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}},
                {"chunk": {"choices": [{"index": 0, "delta": {"content": "Hi", "tool_calls": [{"x": 1}]}}]}},
                {"chunk": {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}},
                {"chunk": {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}}]
    events = _events(relay, upstream)
    assert [e["id"] for e in events[:-1]] == ["chatcmpl-rid"] * 4 and {e["model"] for e in events[:-1]} == {"relay"}
    assert events[1]["choices"][0]["delta"] == {"content": "Hi"}  # role/content only
    assert events[2]["choices"][0]["finish_reason"] == "stop" and events[2]["answered_by"] == "provider:gw/small"
    assert events[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert events[-1] == "data: [DONE]"
    assert relay.totals() == {"prompt_tokens": 3, "completion_tokens": 1, "finish_reason": ["stop"]}


def test_a_stream_broken_mid_way_ends_with_an_error_event_and_a_local_answer_streams_its_tokens():
    from llmops_engine.serving.slot import _chunk

    broken = RelayedStream("rid", "relay", False, None, "provider:gw/small")
    events = _events(broken, [{"chunk": {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}},
                              {"error": {"status": 502, "code": "provider_stream_broken", "message": "broke off"}}])
    assert events[-2]["error"]["code"] == "provider_stream_broken"
    assert broken.totals()["status"] == 502 and broken.totals()["error"] == "provider_stream_broken"  # logged as failed
    local = RelayedStream("rid", "relay", False, [{"id": "kb/a.md#0"}], "builtin:tiny-llama")
    done = {"done": {"text": "two words", "prompt_tokens": 5, "completion_tokens": 2, "finish_reason": "stop"}}
    events = _events(local, [{"chunk": _chunk({"text": "two"}, 0, "assistant")}, {"chunk": _chunk({"text": " words"})},
                             {"chunk": _chunk(done)}])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "two words"
    assert events[-2]["sources"] == [{"id": "kb/a.md#0"}] and events[-2]["answered_by"] == "builtin:tiny-llama"
    assert local.totals()["completion_tokens"] == 2


def test_a_refused_request_names_the_model_not_where_it_lives():
    from llmops_engine.errors import ProviderError
    from llmops_engine.serving.relay import refused

    exc = ProviderError("provider:gw/small at 10.0.0.7:8443: the provider rejected the request (context too long)",
                        "provider_rejected", 400, client_fault=True)
    error = refused("provider:gw/small", exc)
    assert error == {"status": 400, "code": "provider_rejected",
                     "message": "provider:gw/small: the provider rejected the request (context too long)"}
