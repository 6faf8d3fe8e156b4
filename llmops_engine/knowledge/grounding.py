"""How retrieved chunks ground an answer: the Prompt's {context}, and the sources a response lists.

Shared by a grounded deployment's model slot (serving/slot.py, per request) and the evaluation
runner (per example), so a variant is scored on exactly the prompts the deployment would build.
"""

from __future__ import annotations


def context_of(hits) -> str:
    """Retrieved chunks as the Prompt's {context}: best first, one paragraph each."""
    return "\n\n".join(hit.text.strip() for hit in hits)


def sources_of(hits) -> list[dict]:
    """What a response says it was grounded in: chunk ids, their documents and scores, never text."""
    return [{"id": hit.id, "source": hit.source, "score": round(float(hit.score), 6)} for hit in hits]
