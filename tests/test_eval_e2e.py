"""Evaluation end to end on a real Ray cluster with real (tiny) models: a tuned model passes
a gate that its untuned base fails, greedy results are reproducible, sampled repeats are seeded
and aggregated by the worst one, a broken model fails closed, a regression set catches a model
that forgot what its base knew, and a failed gate blocks the real Deployment after it
(`llmops apply` exits 3) until the gate passes."""

import json
import shutil
import textwrap

import pytest

from llmops_engine.controllers import Registry
from llmops_engine.controllers.evaluation import EvaluationController
from llmops_engine.errors import EvaluationError, GateFailed
from llmops_engine.evaluation.metrics import NOT_DETERMINISTIC
from tests.eval_helpers import (
    DATASET, PROMPT, ROWS, as_model_folder, make_context, publish_dataset, resource, train_tiny,
)

pytestmark = pytest.mark.slow

TUNING = resource("TuningJob", "tuned", base_model="builtin:tiny-llama", dataset="d", prompt="p", method="full")
GATE = [{"metric": "rouge_l", "min": 0.5}, {"metric": "rouge_l", "min_delta_vs_baseline": 0.3}]
GENERATION = {"max_new_tokens": 32, "batch_size": 8}


@pytest.fixture(scope="module")
def workspace(ray_project, tmp_path_factory):
    """A store shared by this module's tests, holding a tiny model tuned on ROWS."""
    import ray

    from llmops_engine import raycluster

    root = tmp_path_factory.mktemp("eval-e2e")
    ctx = make_context(root, [TUNING])
    train_tiny(ctx.store.root, ctx.artifact_dir(TUNING.key))
    return {"root": root, "address": ray.get_runtime_context().gcs_address,
            "dashboard": raycluster.ensure_cluster(ray_project).dashboard_url,
            "token": raycluster.token_path(ray_project).read_text().strip()}


@pytest.fixture
def on_cluster(workspace, monkeypatch):
    # The session's Ray head, reached the way CI reaches a shared cluster.
    monkeypatch.setenv("RAY_ADDRESS", workspace["address"])
    monkeypatch.setenv("RAY_DASHBOARD_URL", workspace["dashboard"])  # Serve's REST API, for Deployments
    monkeypatch.setenv("RAY_AUTH_TOKEN", workspace["token"])
    return workspace["root"]


def evaluate(root, tmp_path, tuning=TUNING, regression_rows=None, **spec):
    """Apply one Evaluation through its controller; return (outputs, staging dir).
    `regression_rows` is the eval-only Dataset 'general' its regression block may name."""
    spec = {"dataset": "d", "thresholds": GATE, "generation": GENERATION, **spec}
    evaluation = resource("Evaluation", "gate", **spec)
    resources = [resource("Prompt", "p", **PROMPT), resource("Dataset", "d", **DATASET), tuning, evaluation]
    if regression_rows is not None:
        resources.append(resource("Dataset", "general", **{**DATASET, "split": {"eval_fraction": 1.0}}))
    ctx = make_context(root, resources)
    publish_dataset(ctx, "d", eval_rows=ROWS, train_rows=ROWS)
    if regression_rows is not None:
        publish_dataset(ctx, "general", eval_rows=regression_rows)
    staging = tmp_path / f"staging-{len(list(tmp_path.iterdir()))}"
    staging.mkdir()
    return EvaluationController().apply(evaluation, ctx, staging), staging


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tuned_model_passes_and_base_model_fails_the_same_gate(on_cluster, tmp_path):
    outputs, staging = evaluate(on_cluster, tmp_path, model="tuned")
    assert outputs["passed"] is True
    assert outputs["metrics"]["rouge_l"] >= 0.5
    assert outputs["metrics"]["rouge_l"] - outputs["baseline_metrics"]["base"]["rouge_l"] >= 0.3

    metrics = json.loads((staging / "metrics.json").read_text())
    assert metrics["examples"] == len(ROWS)
    assert metrics["template_hash"] and metrics["model_fingerprints"]["base"] == "base:builtin:tiny-llama"
    rows = read_jsonl(staging / "examples.jsonl")
    assert [r["expected"] for r in rows] == [r["output"] for r in ROWS]
    assert {"output", "scores"} <= rows[0]["candidate"].keys() and "rouge_l" in rows[0]["base"]["scores"]
    report = (staging / "report.md").read_text()
    assert "gate PASSED" in report and "| rouge_l |" in report and "Worst" in report

    with pytest.raises(GateFailed) as caught:
        evaluate(on_cluster, tmp_path, model="base:builtin:tiny-llama", prompt="p")
    assert "| rouge_l |" in caught.value.table and "FAIL" in caught.value.table
    assert (caught.value.report_dir / "report.md").is_file()


def test_greedy_evaluation_is_deterministic(on_cluster, tmp_path):
    spec = {"model": "tuned", "metrics": ["exact_match", "bleu", "chrf", "eval_loss", "perplexity", "output_tokens_mean"]}
    first, staging_1 = evaluate(on_cluster, tmp_path, **spec)
    second, staging_2 = evaluate(on_cluster, tmp_path, **spec)

    def stable(values):
        return {k: v for k, v in values.items() if k not in NOT_DETERMINISTIC}

    assert stable(first["metrics"]) == stable(second["metrics"])
    assert stable(first["baseline_metrics"]["base"]) == stable(second["baseline_metrics"]["base"])
    outputs = lambda staging: [(r["candidate"]["output"], r["base"]["output"]) for r in read_jsonl(staging / "examples.jsonl")]  # noqa: E731
    assert outputs(staging_1) == outputs(staging_2)


def sampled_outputs(on_cluster, tmp_path, seed):
    """A sampled evaluation with 2 repeats aggregated by min: (outputs, each repeat's answers)."""
    outputs, staging = evaluate(
        on_cluster, tmp_path, model="tuned", compare_to="none", repeats=2, aggregate="min",
        generation={**GENERATION, "do_sample": True, "temperature": 1.5, "seed": seed},
        thresholds=[{"metric": "output_tokens_mean", "min": 1}],
        metrics=["rouge_l"],
    )
    rows = read_jsonl(staging / "examples.jsonl")
    answers = [[r["candidate"]["output"] for r in rows], [r["candidate"]["other_repeats"][0] for r in rows]]
    return outputs, answers


def test_sampled_repeats_differ_are_seeded_and_min_takes_the_worst(on_cluster, tmp_path):
    from llmops_engine.evaluation.metrics import ModelRun, score
    from llmops_engine.specs.evaluation import MetricOptions

    outputs, answers = sampled_outputs(on_cluster, tmp_path, seed=3)
    assert answers[0] != answers[1]  # each repeat samples anew
    expected = [r["output"] for r in ROWS]
    per_repeat = [score(["rouge_l"], expected, ModelRun(a, [1] * len(a), [0.0] * len(a)), MetricOptions()).values["rouge_l"]
                  for a in answers]
    assert per_repeat[0] != per_repeat[1]  # so mean and min differ, and the check below can tell them apart
    assert outputs["metrics"]["rouge_l"] == pytest.approx(min(per_repeat))

    assert sampled_outputs(on_cluster, tmp_path, seed=3)[1] == answers  # the seed reproduces the samples
    assert sampled_outputs(on_cluster, tmp_path, seed=4)[1] != answers  # and another seed changes them


def test_a_model_that_cannot_load_fails_closed_with_a_clear_error(on_cluster, tmp_path):
    broken = resource("TuningJob", "broken", base_model="builtin:tiny-llama", dataset="d", prompt="p", method="full")
    ctx = make_context(on_cluster, [broken, TUNING])
    directory = ctx.artifact_dir(broken.key)
    shutil.copytree(ctx.artifact_dir(TUNING.key), directory, dirs_exist_ok=True)
    shutil.rmtree(directory / "model")
    (directory / "model").mkdir()  # weights gone
    with pytest.raises(EvaluationError, match="evaluation task evaluate-.* failed: .*cannot load model"):
        evaluate(on_cluster, tmp_path, tuning=broken, model="broken")


# --- the gate against forgetting ---------------------------------------------------------------
FORGETFUL = resource("TuningJob", "forgetful", base_model="builtin:tiny-llama", dataset="d", prompt="p", method="full")


@pytest.fixture(scope="module")
def forgetful(workspace):
    """A base that knows ROWS (this module's tuned model, as a path: model folder) and a
    candidate declared as tuned from it that has forgotten them all (the untrained tiny model):
    forgetting as large and measurable as it gets, without training another model."""
    root = workspace["root"]
    ctx = make_context(root, [TUNING, FORGETFUL])
    knowing = as_model_folder(ctx.artifact_dir(TUNING.key), root / "knowing-base")
    train_tiny(ctx.store.root, ctx.artifact_dir(FORGETFUL.key), steps=0, base_model=f"path:{knowing}")
    return knowing


# Half of the regression set is what the base knows (ROWS it memorized), half general questions
# neither model can answer, so the forgetting measured is partial and a threshold can sit below it.
GENERAL = ROWS[:3] + [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "How many legs does a spider have?", "input": "", "output": "Eight."},
    {"instruction": "What colour is the sky?", "input": "", "output": "Blue."},
]


def test_the_regression_set_catches_forgetting_and_its_threshold_decides(on_cluster, forgetful, tmp_path):
    def gate(min_delta):
        return evaluate(
            on_cluster, tmp_path, tuning=FORGETFUL, model="forgetful", regression_rows=GENERAL,
            compare_to="none",  # the base is scored on the regression set only
            thresholds=[{"metric": "eval_loss", "max": 100}],  # main gate: always met here
            regression={"dataset": "general", "metrics": ["exact_match"],
                        "thresholds": [{"metric": "rouge_l", "min_delta_vs_baseline": min_delta}]},
        )

    with pytest.raises(GateFailed) as caught:
        gate(-0.05)
    table = caught.value.table
    assert "| regression.rouge_l |" in table and "improvement >= -0.05 vs base" in table
    assert "1 on the regression set general" in str(caught.value)
    metrics = json.loads((caught.value.report_dir / "metrics.json").read_text())
    main, regression = metrics["thresholds"]
    assert (main["metric"], main["status"]) == ("eval_loss", "pass")
    assert (regression["metric"], regression["status"]) == ("regression.rouge_l", "fail")
    knows = metrics["regression"]["base"]["metrics"]["rouge_l"]
    forgot = metrics["regression"]["candidate"]["metrics"]["rouge_l"]
    assert knows >= 0.4 and forgot <= 0.2, (knows, forgot)  # the base knows half the set; the candidate lost it
    assert regression["observed"] == pytest.approx(forgot - knows)
    assert -0.9 < regression["observed"] < -0.2  # partial forgetting: not the -1 floor
    assert metrics["regression_dataset"]["base_model"] == f"base:path:{forgetful}"
    assert metrics["regression"]["examples"] == len(GENERAL)

    # the same measured forgetting passes a threshold just below it: the threshold decides
    outputs, staging = gate(round(regression["observed"] - 0.01, 4))
    assert outputs["passed"] is True
    assert outputs["regression_metrics"]["candidate"]["rouge_l"] == pytest.approx(forgot)  # greedy: same numbers
    assert outputs["regression_metrics"]["base"]["rouge_l"] == pytest.approx(knows)
    assert "base" not in outputs["baseline_metrics"]  # compare_to: none; base scored on regression only
    report = (staging / "report.md").read_text()
    assert "## Regression set: general" in report and "| regression.rouge_l |" in report
    assert len((staging / "regression_examples.jsonl").read_text().splitlines()) == len(GENERAL)


# --- through the reconciler: a failed gate stops the Deployment ---------------------------------
SPECS = {
    "prompt.yaml": """
        apiVersion: llmops/v1
        kind: Prompt
        metadata: {name: p}
        spec: {template: "Q: {instruction}\\nA:"}
        """,
    "data.yaml": """
        apiVersion: llmops/v1
        kind: Dataset
        metadata: {name: d}
        spec: {source: {path: data/x.jsonl}, columns: {instruction: q, output: a}}
        """,
    "tuning.yaml": """
        apiVersion: llmops/v1
        kind: TuningJob
        metadata: {name: tuned}
        spec: {base_model: "builtin:tiny-llama", dataset: d, prompt: p, method: full}
        """,
    "gate.yaml": """
        apiVersion: llmops/v1
        kind: Evaluation
        metadata: {name: gate}
        spec:
          model: tuned
          dataset: d
          generation: {max_new_tokens: 32}
          thresholds:
            - {metric: rouge_l, min_delta_vs_baseline: 2.0}   # out of reach: rouge_l <= 1
        """,
    "deploy.yaml": """
        apiVersion: llmops/v1
        kind: Deployment
        metadata: {name: api}
        spec: {model: tuned, prompt: p, gate: gate, auth: {api_keys_env: API_KEYS}}
        """,
}


class PublishRows:
    """Test-only Dataset controller: publishes ROWS as both splits."""

    kind = "Dataset"

    def apply(self, resource, ctx, staging):
        for split in ("train", "eval"):
            (staging / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        return {"train_rows": len(ROWS), "eval_rows": len(ROWS)}

    def delete(self, record, ctx):
        return None

    def observe(self, record, project):
        return None


class CopyTunedModel(PublishRows):
    """Test-only TuningJob controller: publishes the model this module tuned."""

    kind = "TuningJob"

    def __init__(self, model_dir):
        self.model_dir = model_dir

    def apply(self, resource, ctx, staging):
        shutil.copytree(self.model_dir, staging, dirs_exist_ok=True)
        return {"model_version": ctx.fingerprint(resource.key)[:12]}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pipeline(on_cluster, tmp_path, monkeypatch):
    """A project whose Dataset and TuningJob are stand-ins (the module's tuned model); its
    Prompt, Evaluation and Deployment are the real controllers, on the session's cluster."""
    import ray
    from ray import serve

    root = tmp_path / "project"
    for name, text in SPECS.items():
        (root / "specs").mkdir(parents=True, exist_ok=True)
        (root / "specs" / name).write_text(textwrap.dedent(text).lstrip("\n"))
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    # Same store as the rest of the module: the builtin base model is already there.
    (root / "llmops.yaml").write_text(
        f"spec_dirs: [specs]\nartifact_store: {on_cluster / 'store'}\nserve: {{port: {free_port()}}}\n"
    )
    monkeypatch.setenv("API_KEYS", "sk-gate-test-key")
    tuned_dir = make_context(on_cluster, [TUNING]).artifact_dir(TUNING.key)
    yield root, Registry({"Dataset": PublishRows(), "TuningJob": CopyTunedModel(tuned_dir)})
    if ray.is_initialized():
        serve.shutdown()  # leave the session's cluster without Serve, as the next module expects


def test_failed_gate_blocks_the_deployment_then_a_reachable_gate_lets_it_through(pipeline):
    from typer.testing import CliRunner

    from llmops_engine.cli import app

    root, registry = pipeline

    def llmops(*args):
        return CliRunner().invoke(app, [*args, "-C", str(root)], obj=registry, catch_exceptions=False)

    def states():
        return {f"{r['kind']}/{r['name']}": r["state"] for r in json.loads(llmops("status", "--json").output)}

    blocked = llmops("apply")
    assert blocked.exit_code == 3, blocked.output
    assert "improvement >= 2 vs base" in blocked.output and "FAIL" in blocked.output
    assert "Deployment/api not applied" in blocked.output
    assert states()["Deployment/api"] == "pending"  # the real Deployment controller never ran

    gate = root / "specs" / "gate.yaml"
    gate.write_text(gate.read_text().replace("min_delta_vs_baseline: 2.0", "min_delta_vs_baseline: 0.3"))
    through = llmops("apply")
    assert through.exit_code == 0, through.output
    assert states()["Deployment/api"] == "ready"


def test_variants_are_scored_side_by_side_with_their_retrieved_context(on_cluster, tmp_path):
    from llmops_engine.controllers.knowledge_base import KnowledgeBaseController

    (on_cluster / "faq").mkdir(exist_ok=True)
    for index, row in enumerate(ROWS):
        (on_cluster / "faq" / f"faq-{index}.md").write_text(f"# {row['instruction']}\n\n{row['output']}\n")
    kb = resource("KnowledgeBase", "docs", source={"path": "faq/*.md"}, retrieval={"mode": "bm25", "top_k": 1})
    variants = [{"name": "base+rag", "model": "base", "prompt": "rag", "knowledge_base": "docs"},
                {"name": "tuned+rag", "model": "tuned", "prompt": "rag", "knowledge_base": "docs"}]
    thresholds = GATE + [{"metric": "rouge_l", "min_delta_vs_baseline": -1.0, "baseline": "base+rag"}]
    evaluation = resource("Evaluation", "gate", model="tuned", dataset="d", thresholds=thresholds,
                          generation=GENERATION, variants=variants)
    rag = resource("Prompt", "rag", template="{context}\nQ: {instruction}\nA:")
    ctx = make_context(on_cluster, [resource("Prompt", "p", **PROMPT), rag, resource("Dataset", "d", **DATASET),
                                    TUNING, kb, evaluation])
    publish_dataset(ctx, "d", eval_rows=ROWS, train_rows=ROWS)
    kb_staging = ctx.store.staging_dir(ctx.fingerprint(kb.key))
    KnowledgeBaseController().apply(kb, ctx, kb_staging)
    ctx.store.publish(ctx.fingerprint(kb.key), kb_staging)

    staging = tmp_path / "staging"
    staging.mkdir()
    outputs = EvaluationController().apply(evaluation, ctx, staging)
    assert set(outputs["variant_metrics"]) == {"base+rag", "tuned+rag"}
    metrics = json.loads((staging / "metrics.json").read_text())
    named = metrics["thresholds"][-1]  # the threshold that names a variant as its baseline
    assert named["baseline"] == "base+rag" and named["baseline_value"] == outputs["variant_metrics"]["base+rag"]["rouge_l"]
    assert set(metrics["variants"]) == {"base+rag", "tuned+rag"}
    assert metrics["variants"]["base+rag"]["knowledge_base"] == "docs"
    for index, row in enumerate(read_jsonl(staging / "examples.jsonl")):
        # Each example retrieved its own FAQ entry; the plain candidate retrieved nothing.
        assert row["base+rag"]["sources"] == row["tuned+rag"]["sources"] == [f"faq/faq-{index}.md#0"]
        assert "sources" not in row["candidate"]
    report = (staging / "report.md").read_text()
    assert "## Side by side" in report and "| tuned+rag |" in report
    assert (staging / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("side by side on the same examples" in line for line in ctx.reported)
