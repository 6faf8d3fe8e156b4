"""A provider's side of a model slot: requests as the provider takes them, answers as the slot gives them.

A provider version of a Deployment is a chain: the provider's model, then its fallbacks (other
provider models, or one local model the replica loads). The slot asks them in order; a provider
that fails after its own retries hands the request to the next one, and the answer names who
gave it. A request the provider refuses as malformed (400/413/422) is the client's, not the
provider's, failure: it goes back to the client and no fallback is asked.
Pure functions of dicts: the slot (slot.py) does the calling.
"""

from __future__ import annotations

from typing import Any

from ..specs.prompt import PromptSpec

UNSUPPORTED_COMPLETIONS = {
    "status": 400, "code": "unsupported_endpoint", "param": "prompt",
    "message": "this deployment relays a provider's chat model; use POST /v1/chat/completions",
}


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


def refused(label: str, exc: Exception) -> dict[str, Any]:
    """The 400 for a request the provider refused as malformed, without the provider's host:port
    (clients learn which model refused, not where it lives): '<label>: <what the provider said>'."""
    said = str(exc).partition(": ")[2] or "the provider rejected the request"
    return relay_error(400, getattr(exc, "code", "provider_rejected"), f"{label}: {said}")


def relay_error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"status": status, "code": code, "message": message[:500], **({"param": param} if param else {})}


def exhausted(failures: list[tuple[str, Any]]) -> dict[str, Any]:
    """The error when every model of the chain failed: 502 with the last provider's code, and
    who failed how (codes only: upstream text may quote the request)."""
    last_code = next((code for _, code in reversed(failures) if code.startswith("provider_")), "provider_error")
    tried = "; ".join(f"{label}: {code}" for label, code in failures)
    return relay_error(502, last_code, f"no model could answer ({tried})")
