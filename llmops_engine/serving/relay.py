"""A provider's side of a model slot: requests as the provider takes them, answers as the slot gives them.

A provider version of a Deployment is a chain: the provider's model, then its fallbacks (other
provider models, or one local model the replica loads). The slot asks them in order; a provider
that fails after its own retries hands the request to the next one, and the answer names who
gave it. A request the provider refuses as malformed (400/413/422) is the client's, not the
provider's, failure: it goes back to the client and no fallback is asked.
Pure functions of dicts: the slot (slot.py) does the calling; the request itself is
providers/chat.py's, as an Evaluation of the same provider model renders it.
"""

from __future__ import annotations

from typing import Any


UNSUPPORTED_COMPLETIONS = {
    "status": 400, "code": "unsupported_endpoint", "param": "prompt",
    "message": "this deployment relays a provider's chat model; use POST /v1/chat/completions",
}


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
