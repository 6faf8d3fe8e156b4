"""What the virtual users ask: the deployment's own eval questions, shaped by its own Prompt.

A load test that sends one fixed "hello" measures a cache, not the model: answer lengths and
prompt sizes vary with real questions. So the pool is the first rows of the eval split of the
Dataset the deployment's TuningJob trained on (as `llmops apply` shows in its usage example:
the row's input as the system message when the Prompt's template uses {input}, the instruction
as the user turn), falling back to a few generic questions (a base model or a provider
deployment has no eval split). Reads the store only; used by `llmops loadtest` and a rollout's
load-test step, which is why it lives here and not beside `report.py` (above the controllers).
"""

from __future__ import annotations

import json
from typing import Any

from ..state.artifacts import ArtifactStore
from ..state.records import ResourceRecord

POOL_ROWS = 64  # distinct questions: enough variety, and a bounded read of the eval split
MAX_ROW_BYTES = 1 << 16
GENERIC_QUESTIONS = (
    "Hello! What can you help me with?",
    "Summarize what you do in one sentence.",
    "Give me three tips for writing a clear support ticket.",
    "What should I do if I forgot my password?",
)


def load_messages(store: ArtifactStore, records: dict[str, ResourceRecord],
                  deployment_spec: dict[str, Any]) -> list[list[dict]]:
    """A pool of chat message lists for a deployment (its spec as recorded or as applied)."""
    prompt = records.get(f"Prompt/{deployment_spec.get('prompt')}")
    uses_input = prompt is not None and "{input}" in str(prompt.spec.get("template", ""))
    pool = [_messages(row, uses_input) for row in eval_rows(store, records, deployment_spec, POOL_ROWS)]
    return pool or [[{"role": "user", "content": question}] for question in GENERIC_QUESTIONS]


def _messages(row: dict, uses_input: bool) -> list[dict]:
    system = [{"role": "system", "content": str(row["input"])}] if uses_input and row.get("input") else []
    return system + [{"role": "user", "content": row["instruction"]}]


def eval_rows(store: ArtifactStore, records: dict[str, ResourceRecord], deployment_spec: dict[str, Any],
              limit: int) -> list[dict]:
    """The first `limit` rows of the eval split the deployment's TuningJob trained beside (none for a
    base model or a provider); a bounded read that stops quietly at what it could read (`apply`'s
    usage example uses it too)."""
    from ..data.pipeline import EVAL

    job = records.get(f"TuningJob/{deployment_spec.get('model')}")
    dataset = records.get(f"Dataset/{job.spec.get('dataset')}") if job else None
    if dataset is None:
        return []
    rows = []
    try:
        with (store.local_path(dataset.fingerprint) / EVAL).open(encoding="utf-8") as handle:
            for _ in range(limit):
                line = handle.readline(MAX_ROW_BYTES)
                if not line:
                    break
                rows.append(json.loads(line))
    except (OSError, ValueError):
        pass  # the rows read so far, or the generic questions: a load test does not need the eval split
    return [row for row in rows if isinstance(row, dict) and isinstance(row.get("instruction"), str)]
