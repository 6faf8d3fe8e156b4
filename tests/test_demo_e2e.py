"""The README's main command, end to end, on a fresh copy of the repository's demo:
DVC data → GX validation → LoRA on SmolLM2-135M-Instruct in Ray Train → evaluation gate with
a regression set and RAG variants → Ray Serve → real HTTP; and the help center's knowledge base
→ retrieval gate → a grounded base-model deployment.

Same code path and specs as `./scripts/demo.sh`, uncapped: the shipped gate must pass on
what the shipped tuning job really achieves. Timings are printed, not asserted.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import render_offline, screenshot_dir

REPO = Path(__file__).resolve().parent.parent
DEMO_PATHS = ("specs", "kb", "guardrails", "llmops.yaml", "llmops.params.yaml", "data.dvc", ".dvc", ".dvcignore", "data", "dvc.yaml", "dvc.lock", "schema")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_clone(target: Path) -> Path:
    """What `git clone` would give: tracked (and not-ignored) files only."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *DEMO_PATHS],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    for rel in listed:
        if (REPO / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clone"]):
        subprocess.run(["git", *args], cwd=target, check=True, capture_output=True, env=env)
    return target


def llmops(root: Path, *args: str, env: dict, timeout: float = 2700):
    exe = Path(sys.executable).parent / "llmops"
    return subprocess.run([str(exe), *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_apply_end_to_end(tmp_path):
    root = fresh_clone(tmp_path / "demo")
    assert not (root / "data" / "support_tickets.jsonl").exists(), "raw data must come from data.dvc, not git"
    port = free_port()
    settings = (root / "llmops.yaml").read_text().replace("port: 8000", f"port: {port}")
    (root / "llmops.yaml").write_text(settings)
    key = "sk-e2e-" + os.urandom(8).hex()
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_MAX_STEPS"} | {"LLMOPS_API_KEYS": key}
    try:
        started = time.monotonic()
        first = llmops(root, "apply", env=env)
        elapsed = time.monotonic() - started
        print(f"\nfirst apply: {elapsed:.1f} s\n{first.stdout[-3000:]}")
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        assert f"http://127.0.0.1:{port}/v1" in first.stdout
        assert "curl -s" in first.stdout and "openai.OpenAI" in first.stdout
        assert key not in first.stdout + first.stderr, "the API key leaked into output"
        # The gate and the comparison ask the tuned and the base model the same questions: once.
        assert "answers reused from earlier evaluations" in first.stdout

        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        reply = client.chat.completions.create(
            model="support-api", max_tokens=96,
            messages=[{"role": "system", "content": "Product: Nimbus Chat. Plan: Plus."},
                      {"role": "user", "content": "How do I reset my password?"}],
        )
        assert "Reset password" in reply.choices[0].message.content  # learned in tuning
        general = client.chat.completions.create(
            model="support-api", max_tokens=32, messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in general.choices[0].message.content  # kept through tuning (the regression gate)
        assert general.usage.prompt_tokens > 20 and general.usage.completion_tokens > 1  # the real tokenizer's counts
        # The second deployment: the untuned base model, grounded in the help center (no TuningJob, no gate).
        grounded = client.chat.completions.create(
            model="help-center", max_tokens=48,
            messages=[{"role": "user", "content": "How much storage does the Team plan include?"}])
        assert grounded.model_extra["sources"][0]["source"] == "kb/storage-limits.md"
        assert "1 TB" in grounded.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong").models.list()

        started = time.monotonic()
        second = llmops(root, "apply", env=env)
        print(f"second apply (no-op): {time.monotonic() - started:.2f} s")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "No changes" in second.stdout
        for path in (root / ".llmops").rglob("*"):
            if path.is_file() and path.stat().st_size < 5_000_000:
                assert key.encode() not in path.read_bytes(), f"API key written to {path}"
        check_report(root, env, tmp_path)
    finally:
        llmops(root, "down", env=env, timeout=120)


def check_report(root: Path, env: dict, tmp_path: Path) -> None:
    """`llmops report` after the demo: its resources, the evaluation tables, and a clean offline render."""
    started = time.monotonic()
    report = llmops(root, "report", env=env, timeout=300)
    print(f"llmops report: {time.monotonic() - started:.2f} s")
    assert report.returncode == 0, report.stdout + report.stderr
    page = Path(report.stdout.strip())
    html = page.read_text()
    for name in ("support-lora", "support-gate", "rag-comparison", "nimbus-docs", "support-api", "help-center"):
        assert name in html, name
    assert '<table class="metrics">' in html and '<table class="regression">' in html and '<table class="gate">' in html
    shot = screenshot_dir(tmp_path) / "demo-report.png"
    seen = render_offline(page, ["svg.chart", "table"], shot)
    print(f"demo report screenshot: {shot}")
    assert not (seen.network or seen.console_errors or seen.page_errors), (seen.network, seen.console_errors, seen.page_errors)
    assert seen.counts["svg.chart"]["visible"] >= 5 and seen.counts["table"]["visible"] >= 5
