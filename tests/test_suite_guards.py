"""The test suite's own guards, run on tiny pytest sessions that use this project's pytest
settings: an exception in a worker thread fails the test that was running."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def with_our_settings(pytester) -> None:
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    pytester.makeini("[pytest]\nfilterwarnings =\n" + "".join(f"    {w}\n" for w in settings["filterwarnings"]))


def test_an_exception_in_a_worker_thread_fails_the_test(pytester):
    with_our_settings(pytester)
    pytester.makepyfile(
        """
        import threading

        def run_in_thread(target):
            thread = threading.Thread(target=target, name="worker")
            thread.start()
            thread.join()

        def test_worker_raises():
            run_in_thread(lambda: 1 / 0)

        def test_worker_succeeds():
            run_in_thread(lambda: None)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_worker_raises*", "*Exception in thread worker*"])
    assert "ZeroDivisionError" in result.stdout.str()
