"""`llmops report`: a project with every section filled (records, artifacts, journal, request
logs written by the engine's own store, journal and log writers) becomes one offline HTML page.

Hostile strings travel in names, messages and log fields: they must reach the page as text.
The browser test opens the page in headless Chromium with the network cut off and keeps a
screenshot (under $LLMOPS_TEST_ARTIFACTS when set).
"""

import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_engine.engine import Engine
from llmops_engine.project import Project, ProjectSettings, load_project
from llmops_engine.reporting import write_report
from llmops_engine.reporting.collect import collect
from llmops_engine.reporting.markup import h, number
from llmops_engine.reporting.page import render
from llmops_engine.reporting import svg
from llmops_engine.serving import logs
from llmops_engine.state.records import ResourceRecord
from tests.browser import render_offline, screenshot_dir

HOSTILE = "<script>alert(1)</script>"
HOSTILE_NAME = "<img src=x onerror=alert(2)>"
TUNED, EVAL, KB, GUARD, DEPLOY = "a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64
NOW = 1_790_000_000.0


def publish(engine: Engine, fingerprint: str, files: dict[str, object]) -> None:
    staging = engine.store.staging_dir(fingerprint)
    for name, content in files.items():
        (staging / name).write_text(json.dumps(content))
    engine.store.publish(fingerprint, staging)


def write(engine: Engine, kind: str, name: str, fingerprint: str, outputs: dict, spec: dict | None = None, **extra):
    engine.store.write_record(ResourceRecord(kind=kind, name=name, fingerprint=fingerprint, spec=spec or {},
                                             outputs=outputs, applied_at=NOW, **extra))


def eval_metrics() -> dict:
    def entry(model, rouge, loss, latency):
        return {"model": model, "metrics": {"rouge_l": rouge, "eval_loss": loss, "latency_p95_ms": latency}, "errors": {}}

    return {
        "passed": True, "examples": 40,
        "candidate": entry(TUNED, 0.61, 1.12, 310.0),
        "baselines": {"base": entry("builtin:smollm2-135m-instruct", 0.22, 2.05, 290.0)},
        "variants": {"with-kb": {**entry(TUNED, 0.66, 1.10, 420.0), "knowledge_base": "help-center"}},
        "thresholds": [
            {"metric": "rouge_l", "bound": "min", "limit": 0.4, "candidate": 0.61, "status": "pass", "note": ""},
            {"metric": "rouge_l", "bound": "min_delta_vs_baseline", "limit": 0.1, "candidate": 0.61, "baseline": "base",
             "baseline_value": 0.22, "observed": 0.39, "status": "pass", "note": HOSTILE},
            {"metric": "regression.exact_match", "bound": "min_delta_vs_baseline", "limit": -0.05, "candidate": 0.5,
             "baseline": "base", "baseline_value": 0.52, "observed": -0.02, "status": "pass", "note": ""},
        ],
        "regression": {"dataset": "general-qa", "examples": 20, "candidate": {"metrics": {"exact_match": 0.5}, "errors": {}},
                       "base": {"metrics": {"exact_match": 0.52}, "errors": {}}},
        "notes": [f"note with {HOSTILE}"],
    }


def load_test(index: int, passed: bool) -> dict:
    """A run as the load tester records it; the first (a CLI run) had no thresholds, so no verdict."""
    return {"clients": 16, "duration_s": 20, "requests": 400 + index, "ok": 398, "errors": 2, "error_rate": 0.005,
            "rps": 19.5 + index, "tokens_per_s": 250.0, "latency_ms": {"p50": 120.0 + index, "p95": 300.0, "p99": 450.0,
                                                                       "max": 700.0},
            "ttft_ms": {"p50": 40.0, "p95": 90.0, "p99": 120.0}, "status_counts": {"200": 398, "500": 2},
            "started_at": NOW + index,
            "verdict": {"passed": passed, "problems": [], "summary": f"run {index} {HOSTILE}"} if index else None,
            "source": "rollout" if index else "cli", "model_version": TUNED[:12]}


def filled_project(root: Path) -> Engine:
    """A project as after a few applies: every kind the report shows, with hostile text in it."""
    (root / "specs").mkdir(parents=True, exist_ok=True)  # the default spec_dirs: specs that load, none declared
    engine = Engine(load_project(root), report=lambda _: None)
    losses = [[step, 2.5 * 0.97 ** step + 0.4] for step in range(1, 121)]
    publish(engine, TUNED, {"metrics.json": {"loss_per_step": losses, "steps": 120, "initial_loss": 2.4,
                                             "final_loss": 0.45, "tokens_per_second": 812.5}})
    write(engine, "TuningJob", "support-lora", TUNED, {"model_version": TUNED[:12], "initial_loss": 2.4,
                                                        "final_loss": 0.45, "steps": 120, "method": "qlora"})
    publish(engine, EVAL, {"metrics.json": eval_metrics()})
    write(engine, "Evaluation", "support-gate", EVAL, {"passed": True, "model_fingerprint": TUNED,
                                                        "metrics": {"eval_loss": 1.12}})
    retrieval = {"k": 3, "metrics": {"hit_at_k": 0.9, "mrr": 0.8, "recall_at_k": 0.85},
                 "queries": [{"question": f"where is {HOSTILE}?", "line": 3, "expected": ["kb/a.md"], "retrieved": [], "rank": None},
                             {"question": "ok", "line": 1, "expected": ["kb/b.md"], "retrieved": ["kb/b.md"], "rank": 1}]}
    publish(engine, KB, {"retrieval.json": retrieval})
    write(engine, "KnowledgeBase", "help-center", KB, {"documents": 12, "chunks": 48, "embedder": "builtin:wordllama-256",
                                                       "retrieval_metrics": retrieval["metrics"]},
          spec={"evaluation": {"thresholds": [{"metric": "hit_at_k", "min": 0.8}, {"metric": "mrr", "min": 0.85}]}})
    checks = {"email": {"stage": "output", "check": "pii", "action": "mask", "tp": 9, "fp": 1, "fn": 0, "precision": 0.9,
                        "recall": 1.0},
              HOSTILE: {"stage": "input", "check": "regex", "action": "block", "tp": 4, "fp": 0, "fn": 1,
                        "precision": 1.0, "recall": 0.8}}
    write(engine, "Guardrail", HOSTILE_NAME, GUARD, {"cases": 15, "passed": False, "checks": checks,
                                                     "policy_sha256": "f" * 64}, status="failed", message=HOSTILE)
    canary = [{"step": 25, "passed": True, "summary": "30 requests, error rate 0.000, p95 200 ms"},
              {"step": 100, "passed": True, "summary": "31 requests, error rate 0.000, p95 210 ms"}]
    deployment_outputs = {"model_version": TUNED[:12], "previous_model_version": "0123456789ab", "strategy": "canary",
                          "canary_analysis": canary, "load_tests": [load_test(0, True), load_test(1, False)],
                          "endpoint": "http://127.0.0.1:8000/v1",
                          "rolled_back_at": time.time() + 3600}  # after the journal's steps below
    write(engine, "Deployment", "support-api", DEPLOY, deployment_outputs)
    journal = engine.journal()
    journal.begin_apply("apply-1", "apply")
    journal.step_started("apply-1", "Deployment/support-api", "create", DEPLOY)
    journal.step_finished("apply-1", "Deployment/support-api", "succeeded", outputs=deployment_outputs)
    journal.step_started("apply-2", "Deployment/support-api", "update", DEPLOY)
    journal.step_finished("apply-2", "Deployment/support-api", "failed",
                          f"canary model version 999999999999 failed analysis at 25% traffic: {HOSTILE}; rolled back")
    path = logs.log_path(engine.project, "support-api")
    for index in range(300):
        version, status = (TUNED[:12], 200) if index % 3 else (HOSTILE, 500 if index % 10 == 0 else 200)
        logs.append(path, {"id": f"r{index}", "time": NOW + index, "deployment": "support-api", "model_version": version,
                           "endpoint": HOSTILE, "status": status, "latency_ms": 50.0 + (index * 7919) % 400,
                           "prompt_tokens": 10, "completion_tokens": 20})
    with path.open("a") as handle:
        handle.write("not json\n[1, 2]\n")  # a torn line and a foreign one are skipped
    return engine


# collection ----------------------------------------------------------------------------------

def test_collect_reads_every_section(tmp_path):
    data = collect(filled_project(tmp_path))
    assert data.problems == []
    assert {(r["kind"], r["name"]) for r in data.resources} == {
        ("TuningJob", "support-lora"), ("Evaluation", "support-gate"), ("KnowledgeBase", "help-center"),
        ("Guardrail", HOSTILE_NAME), ("Deployment", "support-api")}
    [curve] = data.losses
    assert len(curve.train) == 120 and curve.eval_points == [(120.0, 1.12)]
    [evaluation] = data.evaluations
    assert list(evaluation.systems) == ["candidate", "base", "with-kb"] and evaluation.variants == ["with-kb"]
    assert evaluation.regression["systems"] == {"candidate": {"exact_match": 0.5}, "base": {"exact_match": 0.52}}
    [kb] = data.knowledge
    assert [(c["metric"], c["passed"]) for c in kb.checks] == [("hit_at_k", True), ("mrr", False), ("recall_at_k", None)]
    assert len(kb.missed) == 1 and kb.queries == 2
    [guardrail] = data.guardrails
    assert {c["id"] for c in guardrail.checks} == {"email", HOSTILE}
    assert [e.event for e in data.rollouts] == ["rollback", "failed", "apply"]
    assert [s["step"] for s in data.rollouts[2].canary] == [25, 100]
    assert len(data.load_tests["support-api"]) == 2
    groups = {g.version: g for g in data.latency}
    assert set(groups) == {TUNED[:12], HOSTILE}
    assert sum(g.requests for g in groups.values()) == 300 and groups[HOSTILE].errors == 10


def test_collect_reads_only_the_last_log_lines(tmp_path):
    data = collect(filled_project(tmp_path), log_lines=30)
    assert sum(g.requests for g in data.latency) <= 30


def test_collect_writes_nothing(tmp_path):
    engine = filled_project(tmp_path)
    # Journal.__init__ leaves its schema connection to the garbage collector, which checkpoints the
    # WAL when it closes it: let that happen before looking, or it is blamed on the report.
    gc.collect()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    collect(engine)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("writer_open", [True, False])
def test_the_journal_is_read_with_or_without_a_wal(tmp_path, writer_open):
    """While a writer holds the journal its changes are in the -wal file; once closed, in the main file."""
    import sqlite3

    engine = filled_project(tmp_path)
    gc.collect()
    wal = tmp_path / ".llmops" / "journal.sqlite-wal"
    writer = sqlite3.connect(tmp_path / ".llmops" / "journal.sqlite") if writer_open else None
    if writer:
        writer.execute("INSERT INTO steps VALUES ('apply-3', 'Deployment/support-api', 'update', 'f', 'interrupted', "
                       "?, NULL, '', NULL)", (time.time(),))
        writer.commit()
    try:
        assert wal.exists() is writer_open
        events = [e.event for e in collect(engine).rollouts]
    finally:
        if writer:
            writer.close()
    assert events == (["rollback", "interrupted", "failed", "apply"] if writer_open else ["rollback", "failed", "apply"])


def test_an_unapplied_project_gets_a_page_and_no_store(tmp_path):
    engine = Engine(Project(tmp_path, ProjectSettings()), report=lambda _: None)
    html = render(collect(engine))
    assert "No resources applied yet." in html and "nothing has been applied" in html
    assert not (tmp_path / ".llmops").exists()


def test_specs_that_do_not_load_are_named(tmp_path):
    """Status then calls every resource an orphan; the page says why instead of leaving the reader to guess."""
    (tmp_path / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "broken.yaml").write_text("apiVersion: llmops/v1\nkind: Nope\nmetadata: {name: x}\nspec: {}\n")
    engine = filled_project(tmp_path)
    data = collect(engine)
    assert {row["state"] for row in data.resources} == {"orphan"}
    assert any("the specs do not load" in p and "specs/broken.yaml:2" in p for p in data.problems), data.problems


def keep_failed_report(engine: Engine, fingerprint: str) -> None:
    """What the executor leaves when a gate fails: the results under reports/<fingerprint>, nothing published."""
    failed = {**eval_metrics(), "passed": False}
    failed["thresholds"] = [{**failed["thresholds"][0], "candidate": 0.1, "status": "fail"}]
    kept = engine.store.root / "reports" / fingerprint
    kept.mkdir(parents=True)
    (kept / "metrics.json").write_text(json.dumps(failed))


def test_a_failed_gate_shows_its_kept_report(tmp_path):
    engine = filled_project(tmp_path)
    write(engine, "Evaluation", "retried-gate", "9" * 64, {"passed": True, "model_fingerprint": TUNED}, status="failed",
          message="gate failed")
    keep_failed_report(engine, "9" * 64)
    view = next(v for v in collect(engine).evaluations if v.name == "retried-gate")
    assert view.passed is False and [c["status"] for c in view.checks] == ["fail"]


def test_a_gate_that_never_passed_is_shown_from_its_report(tmp_path):
    from llmops_engine.reporting.collect import _Artifacts, _failed_first_attempts

    engine = filled_project(tmp_path)
    keep_failed_report(engine, "8" * 64)
    rows = [{"kind": "Evaluation", "name": "new-gate", "desired_fingerprint": "8" * 64},
            {"kind": "Evaluation", "name": "untried", "desired_fingerprint": "7" * 64},
            {"kind": "TuningJob", "name": "support-lora", "desired_fingerprint": TUNED}]
    found = _failed_first_attempts(rows, engine.records(), _Artifacts(engine.store, [], {}))
    assert list(found) == ["Evaluation/new-gate"] and found["Evaluation/new-gate"].status == "failed"


def test_guardrail_results_come_from_its_report_when_the_record_has_none(tmp_path):
    engine = filled_project(tmp_path)
    report = {"cases": 3, "passed": True, "checks": {"iban": {"stage": "input", "check": "pii", "action": "block", "tp": 2,
                                                              "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0}}}
    publish(engine, "6" * 64, {"guardrail_report.json": report})
    write(engine, "Guardrail", "older", "6" * 64, {"policy_sha256": "0" * 64})
    view = next(v for v in collect(engine).guardrails if v.name == "older")
    assert (view.cases, view.passed, [c["id"] for c in view.checks], view.policy_sha256) == (3, True, ["iban"], "0" * 64)


def test_unreadable_artifacts_are_listed_not_raised(tmp_path):
    engine = filled_project(tmp_path)
    (engine.store.local_path(EVAL) / "metrics.json").write_text("{torn")
    data = collect(engine)
    assert any("metrics.json is not readable JSON" in p for p in data.problems)
    assert data.evaluations[0].passed is True  # the record's outputs stand in


# the page ------------------------------------------------------------------------------------

def test_hostile_text_is_escaped_everywhere(tmp_path):
    html = render(collect(filled_project(tmp_path)))
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace("http://127.0.0.1:8000/v1", "")
    assert "https://" not in html


def test_page_has_every_section_table_and_chart(tmp_path):
    html = render(collect(filled_project(tmp_path)))
    for anchor in ("resources", "training", "evaluations", "retrieval", "guardrails", "rollouts", "load-tests", "latency"):
        assert f'id="{anchor}"' in html
    for table in ("metrics", "regression", "gate", "retrieval", "guardrail", "rollouts", "loadtests", "latency"):
        assert f'<table class="{table}">' in html
    assert html.count("<svg") >= 10
    assert "improvement &gt;= 0.1 vs base (got 0.39)" in html
    assert "no thresholds" in html and "run 1 &lt;script&gt;" in html  # the CLI run had none; the rollout's failed


def test_report_is_import_light(tmp_path):
    """`llmops report` runs where apply's heavy libraries may be absent or slow to import."""
    filled_project(tmp_path)
    code = ("import sys; from pathlib import Path; from llmops_engine.engine import Engine; "
            "from llmops_engine.project import load_project; from llmops_engine.reporting import write_report; "
            f"write_report(Engine(load_project(Path({str(tmp_path)!r}))), Path({str(tmp_path / 'r.html')!r})); "
            "print(sorted(m for m in ('torch', 'ray', 'lancedb', 'duckdb', 'great_expectations', 'matplotlib', "
            "'transformers', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("value, shown", [(None, "-"), (True, "true"), (3, "3"), (12345, "12,345"), (0.123456, "0.1235"),
                                          (2.5, "2.5"), (123.456, "123.5"), (1234.5, "1,234"), (float("nan"), "nan")])
def test_numbers_read_well(value, shown):
    assert number(value) == shown


def test_markup_escapes_children_and_attributes():
    assert h("td", "<b>", title='"x"') == '<td title="&quot;x&quot;">&lt;b&gt;</td>'
    assert h("meta", charset="utf-8") == '<meta charset="utf-8">'


@settings(max_examples=300, deadline=None)
@given(text=st.text(), attribute=st.text())
def test_any_text_survives_markup_as_text(text, attribute):
    """Whatever a name or log field holds, a parser reads back exactly that text, and no tag of its own."""
    from html.parser import HTMLParser

    class Reader(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.data, self.attrs = [], "", []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.attrs += attrs

        def handle_data(self, data):
            self.data += data

    reader = Reader()
    reader.feed(h("td", text, title=attribute))
    reader.close()
    assert reader.tags == ["td"] and reader.attrs == [("title", attribute)]
    assert reader.data == text


def test_charts_scale_and_skip_bad_numbers():
    line = svg.line_chart([svg.Series("train", [(1, 2.0), (2, float("inf")), (3, 1.0)])], "loss", "step", "loss")
    assert line.count("<circle") == 2 and "inf" not in line
    single = svg.line_chart([svg.Series("p95", [(1, 300.0)])], "one run", "run", "ms")
    assert re.search(r'<circle cx="(\d+\.?\d*)"', single).group(1) == str((svg.MARGIN_LEFT + svg.WIDTH - svg.MARGIN_RIGHT) / 2)
    bars = svg.bar_chart(["a", "b"], [0.5, None], "x")
    assert bars.count('class="bar"') == 1 and "n/a" in bars
    histogram = svg.histogram([1.0] * 5 + [10.0] * 3, "lat", "ms", bins=4)
    assert [int(t) for t in re.findall(r": (\d+)</title>", histogram)] == [5, 3]
    assert "no data" in svg.histogram([], "lat", "ms")
    assert "no data" in svg.line_chart([svg.Series("s", [(0, 1e308), (1, -1e308)])], "t", "x", "y")


def test_long_series_are_thinned():
    chart = svg.line_chart([svg.Series("s", [(i, i * 0.5) for i in range(50_000)])], "t", "x", "y")
    points = re.search(r'points="([^"]*)"', chart).group(1).split()
    assert len(points) <= svg.MAX_POINTS + 1 and len(chart) < 60_000


# the command ---------------------------------------------------------------------------------

def test_cli_writes_the_default_path_and_out(tmp_path):
    filled_project(tmp_path)
    exe = Path(sys.executable).parent / "llmops"
    started = time.monotonic()
    default = subprocess.run([str(exe), "report", "-C", str(tmp_path)], capture_output=True, text=True, timeout=60)
    print(f"llmops report: {time.monotonic() - started:.2f} s")
    assert default.returncode == 0, default.stderr
    assert Path(default.stdout.strip()) == tmp_path / ".llmops" / "report.html"
    chosen = tmp_path / "out" / "r.html"
    out = subprocess.run([str(exe), "report", "-C", str(tmp_path), "--out", str(chosen)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and chosen.is_file(), out.stderr
    blocked = subprocess.run([str(exe), "report", "-C", str(tmp_path), "--out", str(chosen / "x" / "r.html")],
                             capture_output=True, text=True, timeout=60)
    assert blocked.returncode == 1 and "cannot write the report" in blocked.stderr and "Traceback" not in blocked.stderr


def test_write_report_replaces_the_file_whole(tmp_path):
    engine = filled_project(tmp_path)
    target = write_report(engine, tmp_path / "r.html")
    assert target.read_text().startswith("<!DOCTYPE html>") and target.read_text().rstrip().endswith("</html>")
    assert [p.name for p in tmp_path.glob(".r.html*")] == []


# in a browser --------------------------------------------------------------------------------

CHARTS = "svg.chart"
TABLES = ["table.metrics", "table.regression", "table.gate", "table.retrieval", "table.guardrail", "table.rollouts",
          "table.loadtests", "table.latency", "section table"]


@pytest.mark.slow
def test_report_renders_offline_in_chromium(tmp_path):
    page = write_report(filled_project(tmp_path / "project"), tmp_path / "report.html")
    shot = screenshot_dir(tmp_path) / "llmops-report.png"
    started = time.monotonic()
    seen = render_offline(page, [CHARTS, "svg.chart polyline", "svg.chart rect.bar", "script", "img", *TABLES], shot)
    print(f"\nchromium render: {time.monotonic() - started:.1f} s; screenshot: {shot}")
    assert seen.network == [], "the page asked the network"
    assert seen.console_errors == [] and seen.page_errors == [] and seen.dialogs == []
    assert seen.counts["script"]["all"] == 0 and seen.counts["img"]["all"] == 0
    for table in TABLES[:-1]:
        assert seen.counts[table]["visible"] >= 1, table
    assert seen.counts["section table"]["visible"] >= 9
    assert seen.counts[CHARTS]["visible"] >= 10 and seen.counts[CHARTS]["visible"] == seen.counts[CHARTS]["all"]
    assert seen.counts["svg.chart polyline"]["visible"] >= 4 and seen.counts["svg.chart rect.bar"]["visible"] >= 10
    assert HOSTILE in seen.text  # shown as text
    assert shot.stat().st_size > 20_000


@pytest.mark.slow
def test_the_browser_check_catches_a_page_that_fetches(tmp_path):
    """The harness itself: a page with an external image and a script is caught (so the test above can fail)."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://192.0.2.1/x.png">'
                    "<script>console.error('boom'); null.x;</script></body></html>")
    seen = render_offline(page, ["img"])
    assert seen.network == ["http://192.0.2.1/x.png"]
    assert any("boom" in e for e in seen.console_errors) and seen.page_errors
