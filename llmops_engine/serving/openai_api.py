"""OpenAI-compatible request and response shapes, and the OpenAI error envelope.

Requests tolerate unknown fields (SDKs send new ones all the time). Sampling: a missing
or zero `temperature` means greedy decoding, a positive one samples (seeded by `seed`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error the client sees as {"error": {message, type, param, code}} with `status`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable", 500: "api_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "api_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Lenient):
    include_usage: bool = False


class Message(_Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class _Sampling(_Lenient):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def instruction_and_input(self) -> tuple[str, str]:
        """Exactly the mapping training data went through (data.examples.chat_to_example):
        the last user message is the instruction, earlier turns the input."""
        from ..data.examples import chat_to_example

        turns = [{"role": m.role, "content": m.text()} for m in self.messages]
        # Training conversations end with the assistant turn being learned; this one is to come.
        example = chat_to_example(turns + [{"role": "assistant", "content": ""}])
        if example["instruction"] is None:
            raise APIError(400, "messages must contain a user message", "invalid_messages", "messages")
        return example["instruction"], example["input"] or ""


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_tokens(self) -> int | None:
        return self.max_tokens


# responses -----------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, gen: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]},
                     "finish_reason": gen["finish_reason"], "logprobs": None}],
        "usage": usage(gen["prompt_tokens"], gen["completion_tokens"]),
    }


def completion_response(rid: str, model: str, gens: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": g["text"], "finish_reason": g["finish_reason"], "logprobs": None}
                    for i, g in enumerate(gens)],
        "usage": usage(sum(g["prompt_tokens"] for g in gens), sum(g["completion_tokens"] for g in gens)),
    }


def sse(data: dict[str, Any] | Literal["[DONE]"]) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def chat_stream(rid: str, model: str, gen: dict[str, Any], include_usage: bool, pieces: list[str]) -> list[str]:
    """SSE events of a chat completion: role, content pieces, finish, [usage], [DONE]."""
    head = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in pieces]
    events.append(chunk({}, gen["finish_reason"]))
    if include_usage:
        events.append(sse({**head, "choices": [], "usage": usage(gen["prompt_tokens"], gen["completion_tokens"])}))
    events.append(sse("[DONE]"))
    return events


def completion_stream(rid: str, model: str, gens: list[dict[str, Any]], include_usage: bool,
                      pieces: list[list[str]]) -> list[str]:
    head = {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": model}
    events = []
    for index, (gen, parts) in enumerate(zip(gens, pieces)):
        for piece in parts:
            events.append(sse({**head, "choices": [{"index": index, "text": piece, "finish_reason": None, "logprobs": None}]}))
        events.append(sse({**head, "choices": [{"index": index, "text": "", "finish_reason": gen["finish_reason"], "logprobs": None}]}))
    if include_usage:
        total = usage(sum(g["prompt_tokens"] for g in gens), sum(g["completion_tokens"] for g in gens))
        events.append(sse({**head, "choices": [], "usage": total}))
    events.append(sse("[DONE]"))
    return events


def validation_message(exc: Exception) -> tuple[str, str | None]:
    """First pydantic error as (message, param)."""
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return str(exc), None
    first = errors[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return f"{param}: {first.get('msg')}" if param else first.get("msg", str(exc)), param
