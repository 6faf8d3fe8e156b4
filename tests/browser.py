"""Open an HTML file in headless Chromium (Debian's `chromium`, driven by Playwright) with the
network cut off, and report what a person's browser would have complained about.

Playwright's own browser downloads are never used: `scripts/setup.sh` installs the distribution's
chromium, found here on PATH (or at $LLMOPS_CHROMIUM). Without it the test is skipped, except on CI
(CI=true), where setup must have installed it and its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "install Debian's chromium (apt-get install -y --no-install-recommends chromium; scripts/setup.sh does it as root)"


@dataclass
class Rendered:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)  # every request other than the file itself
    dialogs: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # selector -> {"all", "visible"}
    text: str = ""
    screenshot: Path | None = None


def chromium() -> str:
    """The chromium executable, or skip (fail on CI) saying how to get it."""
    path = os.environ.get("LLMOPS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None if path else f"chromium is not installed: {INSTALL_HINT}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = problem or "the playwright package is missing: pip install -e '.[test]' (scripts/setup.sh)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (on CI the browser test must run)", pytrace=False)
        pytest.skip(problem)
    return path


def screenshot_dir(tmp_path: Path) -> Path:
    """Where screenshots are kept: $LLMOPS_TEST_ARTIFACTS (CI uploads it), else the test's tmp dir."""
    directory = Path(os.environ.get("LLMOPS_TEST_ARTIFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def render_offline(html_file: Path, selectors: list[str], screenshot: Path | None = None) -> Rendered:
    """Load `html_file` from disk with every other request aborted; count `selectors` (all and
    visible); collect console errors, page errors and dialogs; take a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    url = html_file.resolve().as_uri()
    seen = Rendered()

    def gate(route):
        if route.request.url == url:
            route.continue_()
        else:
            seen.network.append(route.request.url)
            route.abort()

    with tempfile.TemporaryDirectory(prefix="llmops-chromium-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=FLAGS, offline=True,
            viewport={"width": 1280, "height": 900})
        try:
            context.route("**/*", gate)
            page = context.new_page()
            page.on("console", lambda message: message.type == "error" and seen.console_errors.append(message.text))
            page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
            page.on("request", lambda request: request.url != url and seen.network.append(request.url))
            page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(url, wait_until="load", timeout=30_000)
            seen.counts = page.evaluate(_COUNT_JS, selectors)
            seen.text = page.inner_text("body")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
                seen.screenshot = screenshot
        finally:
            context.close()
    seen.network = sorted(set(seen.network))
    return seen


_COUNT_JS = """(selectors) => Object.fromEntries(selectors.map((selector) => {
  const nodes = Array.from(document.querySelectorAll(selector));
  const visible = nodes.filter((node) => {
    const box = node.getBoundingClientRect();
    const style = getComputedStyle(node);
    return (box.width > 0 || box.height > 0) && style.visibility !== 'hidden' && style.display !== 'none';
  });
  return [selector, {all: nodes.length, visible: visible.length}];
}))"""
