"""`--target KIND/NAME`: a plan of the named resources and everything they depend on, nothing else."""

import json

import pytest

from llmops_engine.errors import PlanError
from llmops_engine.planner import DesiredResource, ObservedResource, Plan, PlanOptions, make_plan


def desired(key, fp, deps=()):
    kind, name = key.split("/")
    return DesiredResource(key, kind, name, fp, {}, {dep: "x" for dep in deps}, {})


def observed(key, fp, deps=()):
    return ObservedResource(key, fp, {}, {dep: "x" for dep in deps})


PROMPT, DATA, JOB, EVAL, DEPLOY = "Prompt/p", "Dataset/d", "TuningJob/t", "Evaluation/e", "Deployment/api"
OTHER_DATA, OTHER_JOB = "Dataset/d2", "TuningJob/t2"

# A project: p, d → t → e → api, and an unrelated d2 → t2 (everything new).
PROJECT = [
    desired(PROMPT, "p1"), desired(DATA, "d1"), desired(OTHER_DATA, "o1"),
    desired(JOB, "t1", [DATA, PROMPT]), desired(OTHER_JOB, "u1", [OTHER_DATA]),
    desired(EVAL, "e1", [JOB]), desired(DEPLOY, "a1", [EVAL, PROMPT]),
]

# (name, targets, observed, options, expected keys of the plan's actions in order)
SCENARIOS = [
    ("no target plans everything", (), {}, {}, [a.key for a in PROJECT]),
    ("a leaf brings nothing else", (PROMPT,), {}, {}, [PROMPT]),
    ("a training brings its data and prompt", (JOB,), {}, {}, [PROMPT, DATA, JOB]),
    ("a deployment brings its whole chain, transitively", (DEPLOY,), {}, {}, [PROMPT, DATA, JOB, EVAL, DEPLOY]),
    ("two targets: the union, in plan order", (OTHER_JOB, JOB), {}, {}, [PROMPT, DATA, OTHER_DATA, JOB, OTHER_JOB]),
    ("unchanged dependencies stay as no-ops (apply reads their outputs)", (JOB,),
     {DATA: observed(DATA, "d1"), PROMPT: observed(PROMPT, "p1")}, {}, [PROMPT, DATA, JOB]),
    ("an orphan is not pruned by a plan that targets another", (JOB,),
     {"Dataset/gone": observed("Dataset/gone", "g1")}, {"prune": True}, [PROMPT, DATA, JOB]),
    ("a targeted orphan is deleted with its orphaned dependents, not other orphans", ("Dataset/gone",),
     {"Dataset/gone": observed("Dataset/gone", "g1"), "TuningJob/gone": observed("TuningJob/gone", "h1", ["Dataset/gone"]),
      "Prompt/gone": observed("Prompt/gone", "q1")},
     {"prune": True}, ["TuningJob/gone", "Dataset/gone"]),
]


@pytest.mark.parametrize("name,targets,have,flags,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_target_scenarios(name, targets, have, flags, expected):
    plan = make_plan(PROJECT, have, PlanOptions(targets=targets, **flags))
    assert [a.key for a in plan.actions] == expected


def test_orphans_not_deleted_by_a_targeted_prune_stay_listed():
    gone = {"Dataset/gone": observed("Dataset/gone", "g1"), "Prompt/gone": observed("Prompt/gone", "q1")}
    plan = make_plan(PROJECT, gone, PlanOptions(prune=True, targets=("Dataset/gone",)))
    assert plan.orphans == ("Prompt/gone",)
    assert make_plan(PROJECT, gone, PlanOptions(prune=True)).orphans == ()


@pytest.mark.parametrize("targets,says", [
    (("TuningJob/nope",), "unknown --target TuningJob/nope; the plan's resources are: Dataset/d, Dataset/d2,"),
    (("tuningjob/t",), "unknown --target tuningjob/t;"),
    (("Dataset/gone",), "unknown --target Dataset/gone (not in the specs: add --prune to delete it)"),
])
def test_an_unknown_target_names_it_and_the_known_resources(targets, says):
    with pytest.raises(PlanError) as caught:
        make_plan(PROJECT, {"Dataset/gone": observed("Dataset/gone", "g1")}, PlanOptions(targets=targets))
    assert says in str(caught.value)
    assert "Deployment/api" in str(caught.value)


def test_targets_are_in_the_saved_plan_and_its_digest():
    plan = make_plan(PROJECT, {}, PlanOptions(targets=(JOB, DATA)))
    saved = json.loads(json.dumps(plan.to_json()))
    assert saved["options"]["targets"] == [DATA, JOB]  # sorted: the order of the flags does not matter
    assert Plan.from_json(saved) == plan
    widened = saved | {"options": {**saved["options"], "targets": [DATA, JOB, DEPLOY]}}
    with pytest.raises(PlanError, match="digest mismatch"):
        Plan.from_json(widened)


def test_untargeted_options_keep_the_shape_older_plans_were_saved_with():
    assert PlanOptions().to_json() == {"prune": False, "allow_empty": False}
    assert Plan.from_json(make_plan(PROJECT, {}).to_json()).options == PlanOptions()


@pytest.mark.parametrize("mine,theirs,flags", [
    (PlanOptions(targets=(JOB,)), PlanOptions(), ["--target TuningJob/t"]),
    (PlanOptions(targets=(JOB,)), PlanOptions(targets=(DATA,)), ["--target Dataset/d", "--target TuningJob/t"]),
    (PlanOptions(targets=(JOB, DATA)), PlanOptions(targets=(DATA, JOB)), []),
    (PlanOptions(prune=True), PlanOptions(targets=(JOB,)), ["--prune", "--target TuningJob/t"]),
])
def test_option_differences_name_the_flags(mine, theirs, flags):
    assert mine.differences(theirs) == flags


# through the CLI, with recording controllers: what runs is exactly the targeted plan ---------------
def invoke(*args, registry=None):
    from typer.testing import CliRunner

    from llmops_engine.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, obj=registry)


def applied(root):
    log = root / "calls.log"
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("done")] if log.exists() else []


def test_apply_target_runs_only_the_target_and_its_dependencies(project_root):
    from tests import recording_controllers

    recording = recording_controllers.registry()
    result = invoke("apply", "-C", project_root, "--target", "Dataset/d", registry=recording)
    assert result.exit_code == 0, result.output
    assert applied(project_root) == ["Dataset/d"]
    plan = json.loads(invoke("plan", "-C", project_root, "--json").output)
    assert {a["key"]: a["action"] for a in plan["actions"]} == {
        "Dataset/d": "no-op", "Prompt/p": "create", "TuningJob/t": "create"}


def test_a_saved_targeted_plan_is_executed_as_reviewed(project_root, tmp_path):
    from tests import recording_controllers

    reviewed = tmp_path / "plan.json"
    assert invoke("plan", "-C", project_root, "--target", "Prompt/p", "--out", reviewed).exit_code == 0
    refused = invoke("apply", reviewed, "-C", project_root, "--target", "Dataset/d")
    assert refused.exit_code == 1 and "--target Dataset/d, --target Prompt/p" in refused.output
    result = invoke("apply", reviewed, "-C", project_root, registry=recording_controllers.registry())
    assert result.exit_code == 0, result.output
    assert applied(project_root) == ["Prompt/p"]


def test_an_unknown_target_is_a_clear_cli_error(project_root):
    result = invoke("plan", "-C", project_root, "--target", "TuningJob/nope")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "unknown --target TuningJob/nope; the plan's resources are: Dataset/d, Prompt/p, TuningJob/t" in result.output
