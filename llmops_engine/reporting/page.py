"""The report page: `ReportData` drawn as one self-contained HTML document.

Inline CSS, inline SVG, no script, no external URL: the file is mailed, attached to a CI run
and opened offline. A Content-Security-Policy that allows no script and no fetch makes that a
property of the page, not only of this code. Every foreign value passes through
`markup.h`, which escapes it. Pure: `render(data)` returns the text; `reporting.write_report` writes it.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from ..evaluation.metrics import LOWER_IS_BETTER, NEUTRAL
from . import svg
from .collect import EvaluationView, GuardrailView, KnowledgeView, LatencyGroup, LossCurve, ReportData, RolloutEvent
from .markup import Html, h, join, number

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
REGRESSION_PREFIX = "regression."
EVENT_BADGES = {"apply": "ok", "failed": "bad"}  # rollback, interrupted, started: worth a look
BOUNDS = {"min": ">= {limit}", "max": "<= {limit}", "min_delta_vs_baseline": "improvement >= {limit} vs {baseline}",
          "min_ratio_vs_baseline": "ratio >= {limit} vs {baseline}"}

STYLE = Html("""
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c9d1e0; }
nav { padding: 8px 28px; background: #fff; border-bottom: 1px solid #dde1e8; position: sticky; top: 0; }
nav a { margin-right: 14px; color: #2457c5; text-decoration: none; }
main { padding: 8px 28px 40px; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; margin: 18px 0; padding: 6px 18px 14px; }
h2 { font-size: 18px; margin: 12px 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #dde1e8; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600; }
.ok { background: #d8f3dc; color: #1b5e20; } .bad { background: #fde2e1; color: #9b1c1c; }
.warn { background: #fff1c7; color: #7a5300; } .muted { color: #6b7385; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
svg.chart { background: #fff; border: 1px solid #eef1f5; }
svg .axis { stroke: #6b7385; } svg .grid { stroke: #eef1f5; }
svg text { font: 11px system-ui, sans-serif; fill: #1d2330; } svg .title { font-weight: 600; font-size: 12px; }
svg .tick, svg .legend { fill: #4a5163; } svg .value { font-size: 10px; fill: #4a5163; }
code { font-size: 12px; background: #eef1f5; padding: 0 3px; border-radius: 3px; }
""")


def render(data: ReportData) -> str:
    sections = [
        ("resources", "Resources", _resources(data.resources)),
        ("training", "Loss curves", _training(data.losses)),
        ("evaluations", "Evaluations", _evaluations(data.evaluations)),
        ("retrieval", "Retrieval", _knowledge(data.knowledge)),
        ("guardrails", "Guardrails", _guardrails(data.guardrails)),
        ("rollouts", "Rollout history", _rollouts(data.rollouts)),
        ("load-tests", "Load tests", _load_tests(data.load_tests)),
        ("latency", "Request latency", _latency(data.latency)),
    ]
    if data.problems:  # first: what the reader should know before trusting the rest
        sections.insert(0, ("notes", "Notes", h("ul", [h("li", p) for p in data.problems])))
    title = f"llmops report: {data.project}"
    head = h("head", h("meta", charset="utf-8"),
             h("meta", http_equiv="Content-Security-Policy", content=CSP),
             h("meta", name="viewport", content="width=device-width, initial-scale=1"),
             h("title", title), h("style", STYLE))
    header = h("header", h("h1", title),
               h("p", f"generated {_when(data.generated_at)} · artifact store {data.store_url}"))
    nav = h("nav", [h("a", label, href=f"#{anchor}") for anchor, label, _ in sections])
    body = h("main", [h("section", h("h2", label), content, id=anchor) for anchor, label, content in sections])
    return "<!DOCTYPE html>\n" + h("html", head, h("body", header, nav, body), lang="en") + "\n"


# sections ------------------------------------------------------------------------------------

def _resources(rows: list[dict[str, Any]]) -> Html:
    if not rows:
        return _none("No resources applied yet.")
    return _table(["kind", "name", "fingerprint", "state", "last applied", "outputs"], [
        [row["kind"], row["name"], h("code", str(row["fingerprint"])[:12], title=row["fingerprint"]),
         _state_badge(row["state"]), _when(row["applied_at"]), row["summary"]] for row in rows])


def _training(curves: list[LossCurve]) -> Html:
    if not curves:
        return _none("No TuningJob applied yet.")
    parts = []
    for curve in curves:
        facts = ", ".join(f"{k.replace('_', ' ')} {number(v)}" for k, v in curve.summary.items() if v is not None)
        series = [svg.Series("train loss", curve.train)]
        if curve.eval_points:
            series.append(svg.Series("eval loss", curve.eval_points, dashed=True))
        parts += [h("h3", f"{curve.job} (model version {curve.version})"), h("p", facts, class_="muted"),
                  h("div", svg.line_chart(series, f"{curve.job}: loss per optimizer step", "step", "loss"), class_="charts")]
    return join(parts)


def _evaluations(views: list[EvaluationView]) -> Html:
    if not views:
        return _none("No Evaluation applied yet.")
    return join(_evaluation(view) for view in views)


def _evaluation(view: EvaluationView) -> list:
    roles = list(view.systems)
    verdict = _verdict(view.passed, "gate passed", "gate failed")
    labels = ", ".join(f"{role}: {_short(s['label'])}" for role, s in view.systems.items() if s["label"])
    parts = [h("h3", f"Evaluation {view.name} ", verdict, " ", _state_badge(view.state)),
             h("p", f"{number(view.examples)} examples. {labels}", class_="muted")]
    metrics = list(dict.fromkeys(m for s in view.systems.values() for m in s["metrics"]))
    parts.append(_table(["metric", *[_role_header(r, view.variants) for r in roles], "better"],
                        [[m, *[_num(view.systems[r]["metrics"].get(m)) for r in roles], _direction(m)] for m in metrics],
                        class_="metrics"))
    if view.regression:
        regression = view.regression
        parts.append(h("h3", f"Regression set {regression['dataset']} ({number(regression['examples'])} examples): "
                             "what tuning must not forget"))
        reg_roles = list(regression["systems"])
        reg_metrics = list(dict.fromkeys(m for values in regression["systems"].values() for m in values))
        parts.append(_table(["metric", *reg_roles, "better"],
                            [[m, *[_num(regression["systems"][r].get(m)) for r in reg_roles], _direction(m)]
                             for m in reg_metrics], class_="regression"))
    if view.checks:
        parts.append(h("h3", "Thresholds"))
        parts.append(_table(["metric", "bound", "candidate", "baseline", "result", "note"], [
            [c.get("metric", ""), _bound(c), _num(c.get("candidate")),
             f"{c.get('baseline') or ''} {number(c.get('baseline_value')) if c.get('baseline_value') is not None else ''}".strip(),
             _result(c.get("status")), c.get("note", "")] for c in view.checks], class_="gate"))
    parts += [h("p", f"note: {note}", class_="muted") for note in view.notes]
    parts.append(h("div", _comparison_charts(view), class_="charts"))
    return parts


def _comparison_charts(view: EvaluationView) -> list[Html]:
    """One small bar chart per metric (scales differ: a ROUGE score beside a latency), systems side by side."""
    roles = list(view.systems)
    charts = []
    for metric in dict.fromkeys(m for s in view.systems.values() for m in s["metrics"]):
        values = [_float(view.systems[r]["metrics"].get(metric)) for r in roles]
        charts.append(svg.bar_chart(roles, values, f"{metric} ({_direction(metric)} is better)"
                                    if _direction(metric) != "-" else metric))
    if view.regression:
        systems = view.regression["systems"]
        for metric in dict.fromkeys(m for values in systems.values() for m in values):
            charts.append(svg.bar_chart(list(systems), [_float(systems[r].get(metric)) for r in systems],
                                        f"{REGRESSION_PREFIX}{metric} (regression set)"))
    return charts


def _knowledge(views: list[KnowledgeView]) -> Html:
    if not views:
        return _none("No KnowledgeBase applied yet.")
    parts = []
    for view in views:
        facts = ", ".join(f"{k} {number(v) if not isinstance(v, str) else v}" for k, v in view.facts.items())
        queries = f"; {view.queries} test questions" if view.queries is not None else ""
        parts += [h("h3", f"KnowledgeBase {view.name} ", _state_badge(view.state)),
                  h("p", facts + queries, class_="muted")]
        if view.checks:
            parts.append(_table(["metric", "value", "threshold", "result"], [
                [c["metric"], _num(c["value"]), ">= " + number(c["min"]) if c["min"] is not None else "-",
                 _result("pass" if c["passed"] else "fail" if c["passed"] is False else "reported")] for c in view.checks],
                class_="retrieval"))
            parts.append(h("div", svg.bar_chart([c["metric"] for c in view.checks], [c["value"] for c in view.checks],
                                                f"{view.name}: retrieval"), class_="charts"))
        else:
            parts.append(_none("No retrieval gate in its spec."))
        if view.missed:
            parts.append(h("p", f"Missed questions (first {len(view.missed)}):"))
            parts.append(h("ul", [h("li", str(q.get("question", ""))[:300], " — expected ",
                                    ", ".join(map(str, q.get("expected") or []))[:300]) for q in view.missed]))
    return join(parts)


def _guardrails(views: list[GuardrailView]) -> Html:
    if not views:
        return _none("No Guardrail applied yet.")
    parts = []
    for view in views:
        parts += [h("h3", f"Guardrail {view.name} ", _verdict(view.passed, "cases pass", "cases fail"), " ",
                    _state_badge(view.state)),
                  h("p", f"{number(view.cases)} test cases; policy sha256 {view.policy_sha256[:12] or '-'}", class_="muted"),
                  _table(["check", "stage", "type", "action", "tp", "fp", "fn", "precision", "recall"], [
                      [c["id"], c.get("stage", ""), c.get("check", ""), c.get("action", ""), _num(c.get("tp")),
                       _num(c.get("fp")), _num(c.get("fn")), _num(c.get("precision")), _num(c.get("recall"))]
                      for c in view.checks], class_="guardrail")]
    return join(parts)


def _rollouts(events: list[RolloutEvent]) -> Html:
    if not events:
        return _none("No Deployment applied yet.")
    return _table(["time", "deployment", "event", "version", "previous", "strategy", "canary steps", "message"], [
        [_when(e.time), e.deployment, h("span", e.event, class_=f"badge {EVENT_BADGES.get(e.event, 'warn')}"),
         h("code", e.version[:12]) if e.version else "-", e.previous_version[:12] or "-", e.strategy or "-",
         _canary(e.canary), e.message[:500]] for e in events], class_="rollouts")


def _canary(steps: list[dict[str, Any]]) -> Html:
    return join(h("div", f"{s.get('step', '?')}%: ", _result("pass" if s.get("passed") else "fail"), " ",
                  str(s.get("summary", ""))[:200]) for s in steps) or Html("-")


def _load_tests(runs_by_deployment: dict[str, list[dict[str, Any]]]) -> Html:
    parts = []
    for deployment, runs in runs_by_deployment.items():
        if not runs:
            continue
        parts.append(h("h3", f"Deployment {deployment}"))
        rows = []
        for run in runs:
            latency, ttft = _sub(run, "latency_ms"), _sub(run, "ttft_ms")
            rows.append([_when(run.get("started_at")), run.get("source", ""), str(run.get("model_version") or "")[:12],
                         _num(run.get("clients")), _num(run.get("duration_s")), _num(run.get("requests")),
                         _num(run.get("rps")), _num(run.get("tokens_per_s")), _num(latency.get("p50")),
                         _num(latency.get("p95")), _num(latency.get("p99")), _num(ttft.get("p95")),
                         _num(run.get("error_rate")),
                         _load_verdict(run.get("verdict"))])
        parts.append(_table(["started", "source", "version", "clients", "duration s", "requests", "rps", "tokens/s",
                             "p50 ms", "p95 ms", "p99 ms", "ttft p95 ms", "error rate", "verdict"], rows,
                            class_="loadtests"))
        series = [svg.Series(p, [(i + 1, _float(_sub(r, "latency_ms").get(p))) for i, r in enumerate(runs)])
                  for p in ("p50", "p95", "p99")]
        parts.append(h("div", svg.line_chart(series, f"{deployment}: latency per load test", "run", "ms"),
                       svg.bar_chart([str(i + 1) for i in range(len(runs))], [_float(r.get("rps")) for r in runs],
                                     f"{deployment}: requests/s per run"), class_="charts"))
    return join(parts) or _none("No load test recorded yet.")


def _load_verdict(verdict: Any) -> Html:
    if not isinstance(verdict, dict):
        return h("span", "no thresholds", class_="muted")
    return h("span", _result("pass" if verdict.get("passed") is True else "fail"), " ", str(verdict.get("summary", ""))[:300])


def _latency(groups: list[LatencyGroup]) -> Html:
    if not groups:
        return _none("No request logged yet.")
    rows, charts = [], []
    for group in groups:
        ordered = sorted(group.latencies_ms)
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(group.status_counts.items()))
        rows.append([group.deployment, h("code", group.version), _num(group.requests), _num(group.errors),
                     _num(_percentile(ordered, 50)), _num(_percentile(ordered, 95)), _num(_percentile(ordered, 99)),
                     _num(ordered[-1] if ordered else None), statuses])
        charts.append(svg.histogram(group.latencies_ms, f"{group.deployment} {group.version}: latency", "ms"))
    return join([_table(["deployment", "version", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms",
                         "status codes"], rows, class_="latency"),
                 h("p", "From the last entries of each deployment's request log.", class_="muted"),
                 h("div", charts, class_="charts")])


# cells ---------------------------------------------------------------------------------------

def _table(headers: list, rows: Iterable[list], class_: str | None = None) -> Html:
    return h("table", h("thead", h("tr", [h("th", c) for c in headers])),
             h("tbody", [h("tr", [c if isinstance(c, Html) and c.startswith("<td") else h("td", c) for c in row])
                         for row in rows]), class_=class_)


def _num(value: Any) -> Html:
    return h("td", number(value), class_="num")


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _sub(run: dict, key: str) -> dict:
    value = run.get(key)
    return value if isinstance(value, dict) else {}


def _percentile(ordered: list[float], percent: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * percent // 100) - 1))]


def _bound(check: dict) -> str:
    template = BOUNDS.get(str(check.get("bound")))
    if template is None:
        return str(check.get("bound", ""))
    text = template.format(limit=number(check.get("limit")), baseline=check.get("baseline") or "baseline")
    return text + (f" (got {number(check['observed'])})" if check.get("observed") is not None
                   and str(check.get("bound")).endswith("_vs_baseline") else "")


def _short(label: Any) -> str:
    """A model label as people compare them: a 64-hex fingerprint by its first 12, like versions."""
    text = str(label)
    return text if len(text) <= 40 else text[:12] + "…"


def _direction(metric: str) -> str:
    return "-" if metric in NEUTRAL else "lower" if metric in LOWER_IS_BETTER else "higher"


def _role_header(role: str, variants: list[str]) -> str:
    return f"{role} (variant)" if role in variants else role


def _state_badge(state: Any) -> Html:
    text = str(state)
    kind = "ok" if text == "ready" else "warn" if text in ("pending", "out of date", "orphan") else "bad"
    return h("span", text[:200], class_=f"badge {kind}", title=text)


def _verdict(passed: Any, yes: str, no: str) -> Html:
    if passed is None:
        return h("span", "no verdict", class_="badge warn")
    return h("span", yes if passed else no, class_=f"badge {'ok' if passed else 'bad'}")


def _result(status: Any) -> Html:
    text = str(status)
    kind = {"pass": "ok", "fail": "bad", "skipped": "warn", "reported": "warn"}.get(text, "warn")
    return h("span", text, class_=f"badge {kind}")


def _none(text: str) -> Html:
    return h("p", text, class_="muted")


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool) or timestamp <= 0:
        return str(timestamp) if isinstance(timestamp, str) else "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return "-"
