"""A chat request as a provider takes it, and its answer as llmops uses it.

One rendering for every caller of a provider — a prompt-only Deployment's slot and an Evaluation
scoring a provider model — so that what was evaluated is what is served.
"""

from __future__ import annotations

from typing import Any

from ..specs.prompt import PromptSpec


def chat_body(prompt: dict[str, Any], item: dict[str, Any], params: dict[str, Any], stops: list[str]) -> dict[str, Any]:
    """The provider request for one chat item: the Deployment's Prompt rendered as messages (as an
    Evaluation of the same provider model renders them), with the request's sampling settings."""
    body: dict[str, Any] = {
        "messages": PromptSpec.from_saved(prompt).messages_for(item),
        "max_tokens": params["max_new_tokens"],
        "temperature": params["temperature"] if params["do_sample"] else 0.0,
        "top_p": params["top_p"] if params["do_sample"] else 1.0,
    }
    if params["do_sample"] and params.get("seed"):
        body["seed"] = params["seed"]
    if stops:
        body["stop"] = stops
    return body


def gen_of(answer: dict[str, Any]) -> dict[str, Any]:
    """A provider's chat completion as the slot's generation result (text, token counts, finish)."""
    choice = answer["choices"][0]
    usage = answer.get("usage") or {}
    return {"text": choice["message"].get("content") or "", "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "finish_reason": choice.get("finish_reason") or "stop"}
