#!/usr/bin/env bash
# Set up, then run the whole test suite (pytest's exit code is ours: 5 = no tests ran = failure).
# Arguments go to pytest: ./scripts/test.sh -m "not slow" is the fast lane (no Ray, no training).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# LLMOPS_LOCAL_RAY_IN_CI: the suite deploys onto throw-away local heads on purpose (also under CI=true).
export DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 LLMOPS_LOCAL_RAY_IN_CI=1
exec .venv/bin/python -m pytest "$@"
