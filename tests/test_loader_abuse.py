"""Hostile specs against the real loader and CLI: each reproduction from the red-team pass
fails as a located error in bounded time and memory, never as a traceback, and no path in a
spec reads outside the repository — at validate time, when hashing, or when reading data."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmops_engine.data.sources import source_files
from llmops_engine.data.transforms import REGEX_SECONDS_PER_ROW
from llmops_engine.errors import DataError, PlanError
from llmops_engine.fingerprint import ContentHasher
from llmops_engine.specs.dataset import FilterRegex, Source, Transform
from llmops_engine.specs.loader import load_resources
from llmops_engine.specs.prompt import PromptSpec
from llmops_engine.specs.regexes import regex_problem
from tests.conftest import REPO
from tests.test_data_pipeline import transform_rows
from tests.test_loader_errors import ALIAS_BOMB, PROMPT_Q


@dataclass
class CliRun:
    exit_code: int
    output: str
    cpu_s: float
    max_rss_mb: float


# Peak memory is the child's own VmHWM, read at exit: wait4's ru_maxrss would also count the
# pytest process it was forked from (Linux carries the pre-exec high-water mark over).
_MEASURED_CLI = (
    "import atexit, re, runpy, sys\n"
    "def peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('VMHWM_KB', re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    "atexit.register(peak)\n"
    "sys.argv = ['llmops', *sys.argv[1:]]\n"
    "runpy.run_module('llmops_engine', run_name='__main__')\n"
)


def run_cli(root: Path, *args: str, kill_after_s: float = 60) -> CliRun:
    """Run `llmops` in a child process and measure that child alone (CPU from os.wait4, memory
    from its own VmHWM), so the bounds hold however busy the machine is."""
    out = root / "cli-output.txt"
    with out.open("w") as handle:
        child = subprocess.Popen([sys.executable, "-c", _MEASURED_CLI, *args], cwd=root,
                                 stdout=handle, stderr=subprocess.STDOUT)
        watchdog = threading.Timer(kill_after_s, child.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            watchdog.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped; keep Popen from waiting again
    text = out.read_text()
    peak = re.search(r"^VMHWM_KB (\d+)$", text, re.MULTILINE)
    output = re.sub(r"^VMHWM_KB \d+\n", "", text, flags=re.MULTILINE)
    return CliRun(child.returncode, output, usage.ru_utime + usage.ru_stime,
                  int(peak.group(1)) / 1024 if peak else float("inf"))


def _project(tmp_path: Path, specs: dict[str, str], settings: str = "spec_dirs: [specs]\n") -> Path:
    root = tmp_path / "proj"
    (root / "specs").mkdir(parents=True)
    (root / "llmops.yaml").write_text(settings)
    for name, text in specs.items():
        (root / "specs" / name).write_text(text)
    return root


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_alias_bomb_is_refused_quickly_by_the_cli(tmp_path, command):
    root = _project(tmp_path, {"bomb.yaml": ALIAS_BOMB})
    assert len(ALIAS_BOMB) < 500  # nine levels of nine-way aliases: 9**9 values if expanded
    run = run_cli(root, command)
    assert run.exit_code == 1, run.output
    assert "specs/bomb.yaml:9:3: spec.e.0: aliases expand to more than 10,000 copied values" in run.output
    assert "Traceback" not in run.output
    assert run.cpu_s < 2, f"{run.cpu_s:.1f} s of CPU"
    assert run.max_rss_mb < 250, f"{run.max_rss_mb:.0f} MiB"


@pytest.mark.parametrize("case,text,message", [
    ("self-alias", "apiVersion: llmops/v1\nkind: Prompt\nmetadata: {name: q}\nspec: &s\n  template: *s\n",
     "specs/broken.yaml:5:3: spec.template: this alias refers to an anchor that contains it"),
    ("nested-list", PROMPT_Q.format(template="[" * 20_000 + "]" * 20_000), "nesting deeper than 64 levels"),
    ("nested-map", PROMPT_Q.format(template="{a: " * 5_000 + "1" + "}" * 5_000), "nesting deeper than 64 levels"),
], ids=["self-alias", "nested-list", "nested-map"])
def test_recursive_or_deep_yaml_is_a_located_error(tmp_path, case, text, message):
    run = run_cli(_project(tmp_path, {"broken.yaml": text}), "validate")
    assert run.exit_code == 1, run.output
    assert message in run.output
    assert "Traceback" not in run.output and "RecursionError" not in run.output


def test_oversized_spec_is_refused_before_parsing(tmp_path):
    """A 50 MB spec took 13–20 s to validate; the size cap refuses it without reading it all."""
    root = _project(tmp_path, {})
    with (root / "specs" / "huge.yaml").open("w") as handle:
        handle.write(PROMPT_Q.format(template="'{instruction}'"))
        line = "# " + "x" * 1021 + "\n"
        handle.writelines(line for _ in range(50 * 1024))
    run = run_cli(root, "validate")
    assert run.exit_code == 1, run.output
    assert "specs/huge.yaml:1:1: spec file is 52,428,8" in run.output
    assert "raise max_spec_bytes in llmops.yaml" in run.output
    assert run.cpu_s < 2, f"{run.cpu_s:.1f} s of CPU"


def test_many_long_regexes_cannot_stall_validate(tmp_path):
    """Checking a regex costs up to ~50 µs per character; a file's patterns share a budget."""
    pattern = "\\w+," * 1249  # 4,996 characters, accepted on its own
    transforms = "".join(f"    - filter_regex: {{column: output, pattern: '{pattern}'}}\n" for _ in range(150))
    dataset = ("apiVersion: llmops/v1\nkind: Dataset\nmetadata: {name: d}\nspec:\n  source: {path: data/x.jsonl}\n"
               "  columns: {instruction: q, output: a}\n  transforms:\n" + transforms)
    run = run_cli(_project(tmp_path, {"regexes.yaml": dataset}), "validate")
    assert run.exit_code == 1, run.output
    assert "regular expressions in this file exceed 20,000 characters in all" in run.output
    assert run.cpu_s < 3, f"{run.cpu_s:.1f} s of CPU"


def test_max_spec_bytes_setting_reaches_the_loader(tmp_path):
    text = PROMPT_Q.format(template="'{instruction}'")
    root = _project(tmp_path, {"p.yaml": text}, settings="spec_dirs: [specs]\nmax_spec_bytes: 40\n")
    run = run_cli(root, "validate")
    assert run.exit_code == 1, run.output
    assert f"spec file is {len(text)} bytes, over the limit of 40" in run.output
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    assert run_cli(root, "validate").exit_code == 0


def test_validate_accepts_the_demo_on_a_fresh_clone(tmp_path):
    """The demo's raw data is DVC-tracked and git-ignored: a fresh clone has its record only."""
    root = tmp_path / "clone"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "kb", root / "kb")  # the help center is in git too
    shutil.copytree(REPO / "guardrails", root / "guardrails")  # and the guardrail cases
    for name in ("llmops.yaml", "data.dvc", "data/general_chat.jsonl", "data/regression/general_qa.jsonl"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)  # in git, unlike the tickets
    assert not (root / "data/support_tickets.jsonl").exists()
    assert {r.kind for r in load_resources(root, ["specs"])} >= {"Dataset", "TuningJob", "Deployment"}


@pytest.fixture
def leaky_repo(tmp_path):
    """A repository whose data/ holds a symlink to a file outside it, and one to a directory."""
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (root / "data" / "own.jsonl").write_text('{"q": "1", "a": "2"}\n')
    (outside / "secret.jsonl").write_text('{"q": "secret", "a": "secret"}\n')
    (root / "data" / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "data" / "shared").symlink_to(outside, target_is_directory=True)
    return root


@pytest.mark.parametrize("pattern", ["data/*.jsonl", "data/leak.jsonl", "data/*/secret.jsonl", "data/**/*.jsonl",
                                     "*/../../outside/*.jsonl", "../outside/secret.jsonl"])
def test_no_pattern_reads_outside_the_repository(leaky_repo, pattern):
    with pytest.raises(PlanError, match="outside the repository|contains '..'"):
        ContentHasher(leaky_repo).hash_inputs([pattern])
    with pytest.raises(DataError, match="outside the repository|contains '..'"):
        source_files(leaky_repo, Source(path=pattern, format="jsonl"))


def test_confined_patterns_still_match(leaky_repo):
    (leaky_repo / "data" / "leak.jsonl").unlink()
    assert [p.name for p in source_files(leaky_repo, Source(path="data/*.jsonl"))] == ["own.jsonl"]
    assert list(ContentHasher(leaky_repo).hash_inputs(["data/*.jsonl"])) == ["data/own.jsonl"]


def test_a_slow_regex_that_validate_accepts_is_stopped_per_row(tmp_path):
    pattern = "a*a*b"  # quadratic per start position: seconds on a few thousand characters
    assert regex_problem(pattern) is None
    transform = Transform(filter_regex=FilterRegex(column="instruction", pattern=pattern))
    rows = [{"instruction": "ok b", "output": "x"}, {"instruction": "a" * 6000, "output": "x"}]
    started = time.monotonic()
    with pytest.raises(DataError, match="ran longer than 1 s on row 2"):
        transform_rows(rows, [transform], tmp_path)
    assert time.monotonic() - started < REGEX_SECONDS_PER_ROW + 3
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # disarmed: no stray SIGALRM can kill the process
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_request_text_is_never_a_format_spec():
    prompt = PromptSpec(template="### Q: {instruction}\n### Context: {input}\n### A:")
    hostile = {"instruction": "{instruction:>2000000000}", "input": "{input.__class__.__mro__}{0}{"}
    rendered = prompt.render(**hostile)
    assert rendered == f"### Q: {hostile['instruction']}\n### Context: {hostile['input']}\n### A:"


@pytest.mark.parametrize("template", ["{instruction}", "Q: {instruction}\n{input}\nA:", "{{json}} {instruction} }}{{",
                                      "{input}{instruction}{input}", "Ünïcødé {instruction} 🙂"])
def test_rendering_is_byte_identical_to_str_format(template):
    values = {"instruction": "say {hi}", "input": "ctx }{"}
    assert PromptSpec(template=template).render(**values) == template.format(**values)


def test_shipped_prompts_render_as_before():
    prompts = [r for r in load_resources(REPO, ["specs"]) if r.kind == "Prompt"]
    assert prompts
    for prompt in prompts:
        spec = prompt.spec
        for values in ({"instruction": "How do I reset?", "input": "Nimbus Chat", "context": "Docs."},
                       {"instruction": "Hi", "input": "", "context": ""}):
            chosen = spec.template_no_input if (not values["input"] and spec.template_no_input) else spec.template
            expected = chosen.format(**values)
            if spec.format == "chat":  # the user turn; the model's chat template wraps it (test_chat_prompts)
                assert spec.user_turn(**values) == expected
            else:
                assert spec.render(**values) == (f"{spec.system}\n{expected}" if spec.system else expected)


def test_a_regex_too_deeply_nested_to_check_is_refused_not_a_crash():
    assert "nests groups too deeply" in regex_problem("(" * 300 + "a" + ")" * 300)
