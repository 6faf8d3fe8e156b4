#!/usr/bin/env bash
# Set up, then reconcile the example project in specs/: data → validation → QLoRA tuning
# → evaluation gate → Ray Serve deployment, then `llmops report`. Run it again: it is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
if [ -z "${LLMOPS_API_KEYS:-}" ]; then
  # A local demo key, readable only by you; real deployments set LLMOPS_API_KEYS from a secret store.
  mkdir -p .llmops && umask 077
  [ -s .llmops/demo-api-key ] || .venv/bin/python -c "import secrets; print('sk-demo-' + secrets.token_hex(16))" > .llmops/demo-api-key
  LLMOPS_API_KEYS=$(cat .llmops/demo-api-key)
  export LLMOPS_API_KEYS
fi
status=0
.venv/bin/llmops apply "$@" || status=$?
# The page to look at: resources, loss curves, evaluations, guardrails, rollouts, load tests, latency.
.venv/bin/llmops report || true
exit "$status"
