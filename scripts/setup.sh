#!/usr/bin/env bash
# Create (or reuse) .venv with the engine and its test tools. Idempotent: a second run
# only checks that pyproject.toml (and LLMOPS_EXTRAS) have not changed since the last install.
# LLMOPS_EXTRAS adds optional extras, e.g. LLMOPS_EXTRAS=gs for a gs:// artifact store.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.llmops-installed
extras=test${LLMOPS_EXTRAS:+,$LLMOPS_EXTRAS}
want=$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: anything else that asks for torch would fetch a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "$want" > "$stamp"
