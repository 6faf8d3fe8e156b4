"""OpenAI-compatible request and response shapes, and the OpenAI error envelope.

Requests tolerate unknown fields (SDKs send new ones all the time). Sampling: a missing
or zero `temperature` means greedy decoding, a positive one samples (seeded by `seed`).

Every field the engine uses is bounded here, so the ingress's parse step turns a hostile
value into a 400 before the request reaches a batch it shares with other clients: a seed
torch cannot take, a temperature so small that logits / temperature overflows, an empty
prompt (an empty sequence crashes bitsandbytes' CPU 4-bit kernel with SIGFPE, killing the
replica), or a prompt list whose generation would hold the replica for seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

MAX_PROMPTS_PER_REQUEST = 16  # each prompt is a batch entry: more would hold the replica for everyone
MAX_STOP_SEQUENCES = 16
# Below this, logits / temperature can overflow (inf, then NaN probabilities); 0 means greedy.
MIN_TEMPERATURE = 0.01
MAX_TOKENS_BOUND = 2**31 - 1  # the deployment's limits.max_new_tokens clamps further
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, what torch.manual_seed and OpenAI clients use


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


class ContentPart(_Lenient):
    type: str
    text: StrictStr | None = None  # strict: 5 or [..] must not become "5" or a crash later

    @model_validator(mode="after")
    def _text_part_has_text(self) -> "ContentPart":
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs a string 'text'")
        return self


# The roles OpenAI's API knows; any other is refused, since a role's text reaches the model
# (earlier turns are rendered "role: content") where no guardrail would see it.
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(_Lenient):
    role: Role
    content: StrictStr | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class _Sampling(_Lenient):
    model: StrictStr
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=128)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: StrictStr | list[StrictStr] | None = Field(default=None)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("temperature")
    @classmethod
    def _not_vanishing(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy decoding) or between {MIN_TEMPERATURE} and 2")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are accepted, got {len(value)}")
        return value

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)

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

    def chat_item(self) -> dict[str, Any]:
        """A slot's work item: the instruction and input (how a text prompt takes a conversation,
        as training data did), and the earlier turns as given (how a chat prompt takes it)."""
        from ..data.examples import turns_before_last_user

        instruction, context = self.instruction_and_input()
        turns = [{"role": m.role, "content": m.text()} for m in self.messages]
        return {"instruction": instruction, "input": context, "history": turns_before_last_user(turns)}


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr]
    max_tokens: int | None = Field(default=16, ge=1, le=MAX_TOKENS_BOUND)

    @field_validator("prompt")
    @classmethod
    def _bounded_and_non_empty(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("needs at least one prompt")
        if len(prompts) > MAX_PROMPTS_PER_REQUEST:
            raise ValueError(f"at most {MAX_PROMPTS_PER_REQUEST} prompts per request are accepted, got {len(prompts)}")
        if any(not p for p in prompts):
            raise ValueError("prompts must not be empty")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_tokens(self) -> int | None:
        return self.max_tokens


# responses -----------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, gen: dict[str, Any], sources: list[dict] | None = None) -> dict[str, Any]:
    """A chat completion; a grounded deployment's adds `sources` (top level: SDKs keep unknown fields)."""
    return {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": gen["text"]},
                     "finish_reason": gen["finish_reason"], "logprobs": None}],
        "usage": usage(gen["prompt_tokens"], gen["completion_tokens"]),
        **({"sources": sources} if sources is not None else {}),
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


class RelayedStream:
    """A chat stream — a provider's, or the local model's as its engine makes it — re-addressed as
    this deployment's (our id and `model`), event by event as its chunks arrive. Only a
    delta's role and content are relayed. The finish chunk names who answered (`answered_by`)
    and a grounded deployment's `sources`; the usage the provider reported goes to the log
    entry, and to the client when it asked for it (stream_options.include_usage).

    With a `guard` (guarding.StreamGuard: the deployment's output checks), content leaves only as
    the guard releases it; a block ends the stream with a `guardrail_blocked` error event."""

    def __init__(self, rid: str, model: str, include_usage: bool, sources: list[dict] | None, answered_by: str | None,
                 guard: Any = None):
        self.head = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model}
        self.include_usage, self.sources, self.answered_by, self.guard = include_usage, sources, answered_by, guard
        self.usage: dict[str, int] | None = None
        self.finish: str | None = None
        self.failed: str | None = None  # the error code of a provider that broke off mid-stream
        self.blocked = False  # a guardrail cut the answer
        self.first_text = False  # the events just returned carry the answer's first text
        self._texts = 0
        self._sent: list[str] = []  # the text that left, for log_payloads

    @property
    def findings(self) -> list[dict[str, Any]]:
        return self.guard.findings if self.guard is not None else []

    def texts(self) -> list[str]:
        """The answer as the client got it."""
        return ["".join(self._sent)]

    def events(self, item: dict[str, Any]) -> list[str]:
        before = self._texts
        events = self._events(item)
        self.first_text = before == 0 and self._texts > 0
        return events

    def _events(self, item: dict[str, Any]) -> list[str]:
        if self.blocked:
            return []
        if "chunk" in item:
            return self._relayed(item["chunk"])
        error = item["error"]
        self.failed = error["code"]
        return [sse({"error": {"message": error["message"], "type": "server_error", "param": None, "code": error["code"]}})]

    def _released(self, text: str, last: bool = False) -> str | None:
        """What of `text` may leave now (all of it without a guard); None when a guardrail blocked."""
        if self.guard is not None:
            released = self.guard.feed(text)
            tail = self.guard.finish() if last and released is not None else ""
            if released is None or tail is None:
                self.blocked, self.failed = True, "guardrail_blocked"
                return None
            text = released + tail
        self._texts += bool(text)
        self._sent.append(text)
        return text

    def _blocked_event(self) -> str:
        message = f"the answer was blocked by guardrail check {self.guard.blocked_by}"
        return sse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                              "code": "guardrail_blocked"}})

    def _relayed(self, chunk: dict[str, Any]) -> list[str]:
        if isinstance(chunk.get("usage"), dict):
            counts = chunk["usage"]
            self.usage = usage(int(counts.get("prompt_tokens") or 0), int(counts.get("completion_tokens") or 0))
        events = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = {k: v for k, v in (choice.get("delta") or {}).items() if k in ("role", "content") and isinstance(v, str)}
            finish = choice.get("finish_reason")
            if "content" in delta or isinstance(finish, str):
                released = self._released(delta.get("content", ""), last=isinstance(finish, str))
                if released is None:
                    return events + [self._blocked_event()]
                delta = {**delta, "content": released} if released or "role" in delta else {}
            if isinstance(finish, str):
                events.append(self._finished(finish, delta))
            elif delta:
                events.append(self._event(delta))
        return events

    def _event(self, delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> str:
        body = {**self.head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if self.include_usage:
            body["usage"] = None
        return sse({**body, **(extra or {})})

    def _finished(self, finish: str, delta: dict[str, Any] | None = None) -> str:
        self.finish = finish
        extra = {**({"answered_by": self.answered_by} if self.answered_by else {}),
                 **({"sources": self.sources} if self.sources is not None else {})}
        return self._event(delta or {}, finish, extra)

    def totals(self) -> dict[str, Any]:
        """What the request log records of the stream: tokens as the provider counted them."""
        counts = self.usage or usage(0, 0)
        failure = {"status": 400 if self.blocked else 502, "error": self.failed} if self.failed else {}  # not a success
        return {"prompt_tokens": counts["prompt_tokens"], "completion_tokens": counts["completion_tokens"],
                "finish_reason": [self.finish], **failure}

    def close(self) -> list[str]:
        held = []
        if self.finish is None and not self.blocked and self.guard is not None:  # no finish chunk came
            text = self._released("", last=True)
            held = [self._blocked_event()] if text is None else [self._event({"content": text})] if text else []
        tail = [sse({**self.head, "choices": [], "usage": self.usage})] if self.include_usage and self.usage else []
        return held + tail + [sse("[DONE]")]


class CompletionRelay:
    """A streamed `/v1/completions` answer: each prompt's text as the local model makes it, as
    text_completion chunks per choice `index` (OpenAI interleaves the choices the same way).
    Each choice has its own output checks (`guards`); a block ends the whole stream with a
    `guardrail_blocked` error event, as a chat stream does."""

    def __init__(self, rid: str, model: str, include_usage: bool, guards: list[Any]):
        self.head = {"id": f"cmpl-{rid}", "object": "text_completion", "created": int(time.time()), "model": model}
        self.include_usage, self.guards = include_usage, guards
        self.counts: dict[int, dict[str, int]] = {}  # usage per choice, from its last chunk
        self.finishes: list[str | None] = [None] * len(guards)
        self.failed: str | None = None
        self.blocked = False
        self.blocked_by: str | None = None
        self.first_text = False
        self._texts = 0
        self._sent: list[list[str]] = [[] for _ in guards]  # each choice's text that left, for log_payloads

    def texts(self) -> list[str]:
        """Each choice's answer as the client got it."""
        return ["".join(parts) for parts in self._sent]

    @property
    def findings(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for guard in self.guards:
            found += [f for f in (guard.findings if guard is not None else []) if f not in found]
        return found

    def events(self, item: dict[str, Any]) -> list[str]:
        before = self._texts
        events = [] if self.blocked else self._events(item)
        self.first_text = before == 0 and self._texts > 0
        return events

    def _events(self, item: dict[str, Any]) -> list[str]:
        if "error" in item:
            error = item["error"]
            self.failed = error["code"]
            return [sse({"error": {"message": error["message"], "type": "server_error", "param": None, "code": error["code"]}})]
        chunk, events = item["chunk"], []
        for choice in chunk["choices"]:
            index, finish = choice["index"], choice.get("finish_reason")
            if isinstance(chunk.get("usage"), dict):
                self.counts[index] = chunk["usage"]
            text = self._released(index, choice["delta"].get("content", ""), last=finish is not None)
            if text is None:
                message = f"the answer was blocked by guardrail check {self.blocked_by}"
                return events + [sse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                                "code": "guardrail_blocked"}})]
            if text or finish:
                self.finishes[index] = finish or self.finishes[index]
                events.append(sse({**self.head, "choices": [{"index": index, "text": text, "finish_reason": finish,
                                                             "logprobs": None}]}))
        return events

    def _released(self, index: int, text: str, last: bool) -> str | None:
        guard = self.guards[index]
        if guard is not None:
            released = guard.feed(text)
            tail = guard.finish() if last and released is not None else ""
            if released is None or tail is None:
                self.blocked, self.failed, self.blocked_by = True, "guardrail_blocked", guard.blocked_by
                return None
            text = released + tail
        self._texts += bool(text)
        self._sent[index].append(text)
        return text

    def _usage(self) -> dict[str, int]:
        return usage(sum(c["prompt_tokens"] for c in self.counts.values()),
                     sum(c["completion_tokens"] for c in self.counts.values()))

    def totals(self) -> dict[str, Any]:
        counts = self._usage()
        failure = {"status": 400 if self.blocked else 502, "error": self.failed} if self.failed else {}
        return {"prompt_tokens": counts["prompt_tokens"], "completion_tokens": counts["completion_tokens"],
                "finish_reason": self.finishes, **failure}

    def close(self) -> list[str]:
        tail = [sse({**self.head, "choices": [], "usage": self._usage()})] if self.include_usage and self.counts else []
        return tail + [sse("[DONE]")]


def validation_message(exc: Exception) -> tuple[str, str | None]:
    """The most specific pydantic error as (message, param)."""
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return str(exc), None
    # A union field reports one error per member ("content.str", "content.list[ContentPart].0.text");
    # the deepest one is what the client got wrong, and the member names are no parameter path.
    deepest = max(errors, key=lambda e: len(e.get("loc", ())))
    path = [str(p) for p in deepest.get("loc", ()) if not _is_union_member(p)]
    param = ".".join(path) or None
    message = str(deepest.get("msg", exc)).removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


def _is_union_member(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)
