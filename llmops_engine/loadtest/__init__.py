"""Load tests of a deployment: bounded async load on its own endpoint, k6-style thresholds.

    target.py      who may be loaded (the deployment's own serve address only) — Target, target_of
    generator.py   the load and its numbers — run_load
    thresholds.py  the pass/fail decision, pure — judge_load
    messages.py    what the virtual users ask (the deployment's eval questions) — load_messages
    results.py     the record's history and its one-line summary (light: `llmops status` uses it)
    command.py     `llmops loadtest`

Nothing is imported here, so that `status` can read results without loading httpx.
"""
