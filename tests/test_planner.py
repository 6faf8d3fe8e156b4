"""The planner is a pure function; each scenario is (desired, observed) → expected actions."""

import pytest

from llmops_engine.errors import PlanError
from llmops_engine.planner import (
    DesiredResource, ObservedResource, Plan, PlanOptions, blockers, diff_paths, make_plan, show_value,
)


def desired(key, fp, spec=None, deps=None, inputs=None):
    kind, name = key.split("/")
    return DesiredResource(key, kind, name, fp, spec or {}, deps or {}, inputs or {})


def observed(key, fp, spec=None, deps=None, inputs=None, status="ready", message="", drift=None, unknown=None, cost=None):
    return ObservedResource(key, fp, spec or {}, deps or {}, inputs or {}, status, message, drift, unknown, cost)


DATA = "Dataset/d"
JOB = "TuningJob/t"
EVAL = "Evaluation/e"
KB = "KnowledgeBase/docs"

SCENARIOS = [
    (
        "fresh project creates everything",
        [desired(DATA, "d1"), desired(JOB, "t1", deps={DATA: "d1"})],
        {},
        [(DATA, "create", ["not applied yet"]), (JOB, "create", ["not applied yet"])],
    ),
    (
        "nothing changed is all no-op",
        [desired(DATA, "d1"), desired(JOB, "t1", deps={DATA: "d1"})],
        {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1", deps={DATA: "d1"})},
        [(DATA, "no-op", []), (JOB, "no-op", [])],
    ),
    (
        "spec field change names the path",
        [desired(JOB, "t2", spec={"training": {"epochs": 3, "seed": 1}})],
        {JOB: observed(JOB, "t1", spec={"training": {"epochs": 2, "seed": 1}})},
        [(JOB, "update", ["spec changed at spec.training.epochs: 2 → 3"])],
    ),
    (
        "raw data change updates the dataset and marks downstream",
        [desired(DATA, "d2", inputs={"data/x.jsonl": "h2"}), desired(JOB, "t2", deps={DATA: "d2"})],
        {DATA: observed(DATA, "d1", inputs={"data/x.jsonl": "h1"}), JOB: observed(JOB, "t1", deps={DATA: "d1"})},
        [(DATA, "update", ["data changed: data/x.jsonl"]), (JOB, "update", ["upstream dataset d changed"])],
    ),
    (
        "each changed, added and removed document is named",
        [desired(KB, "k2", inputs={"kb/a.md": "a1", "kb/b.md": "b2", "kb/new.md": "n1"})],
        {KB: observed(KB, "k1", inputs={"kb/a.md": "a1", "kb/b.md": "b1", "kb/old.md": "o1"})},
        [(KB, "update", ["data changed: kb/b.md", "data added: kb/new.md", "data removed: kb/old.md"])],
    ),
    (
        "transitive upstream change reaches the evaluation",
        [desired(DATA, "d2", spec={"split": 2}), desired(JOB, "t2", deps={DATA: "d2"}), desired(EVAL, "e2", deps={JOB: "t2"})],
        {DATA: observed(DATA, "d1", spec={"split": 1}), JOB: observed(JOB, "t1", deps={DATA: "d1"}),
         EVAL: observed(EVAL, "e1", deps={JOB: "t1"})},
        [(DATA, "update", ["spec changed at spec.split: 1 → 2"]), (JOB, "update", ["upstream dataset d changed"]),
         (EVAL, "update", ["upstream tuningjob t changed"])],
    ),
    (
        "failed last apply is retried even with the same fingerprint",
        [desired(JOB, "t1")],
        {JOB: observed(JOB, "t1", status="failed", message="worker died")},
        [(JOB, "update", ["last apply failed: worker died"])],
    ),
    (
        "live drift is restored",
        [desired("Deployment/api", "a1")],
        {"Deployment/api": observed("Deployment/api", "a1", drift="app missing")},
        [("Deployment/api", "update", ["live app differs: app missing"])],
    ),
    (
        "removed resource is only an orphan without prune",
        [desired(DATA, "d1")],
        {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1")},
        [(DATA, "no-op", [])],
    ),
    (
        "an output-changing environment variable is named",
        [desired(JOB, "t2", inputs={"env:LLMOPS_MAX_STEPS": "10"})],
        {JOB: observed(JOB, "t1")},
        [(JOB, "update", ["environment changed: LLMOPS_MAX_STEPS"])],
    ),
    (
        "new spec key appears as a path",
        [desired(JOB, "t2", spec={"export": ["adapter", "merged"], "lora": {"r": 8}})],
        {JOB: observed(JOB, "t1", spec={"export": ["adapter"], "lora": {"r": 8}})},
        [(JOB, "update", ['spec changed at spec.export: ["adapter"] → ["adapter", "merged"]'])],
    ),
]


@pytest.mark.parametrize("name,want,have,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_plan_scenarios(name, want, have, expected):
    plan = make_plan(want, have)
    got = [(a.key, a.action, list(a.reasons)) for a in plan.actions]
    assert got == expected


PRUNE = PlanOptions(prune=True)
SERVE = "Deployment/api"

# (name, desired, observed, options, expected (key, action, requires)) — deletes and their order.
DELETE_SCENARIOS = [
    (
        "orphans are listed, not deleted, without prune",
        [desired(DATA, "d1")],
        {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1", deps={DATA: "d1"})},
        PlanOptions(),
        [(DATA, "no-op", [])],
    ),
    (
        "a saved plan with deletes: prune plans them, each after its dependents",
        [],
        {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1", deps={DATA: "d1"}),
         EVAL: observed(EVAL, "e1", deps={JOB: "t1", DATA: "d1"})},
        PlanOptions(prune=True, allow_empty=True),
        [(EVAL, "delete", []), (JOB, "delete", [EVAL]), (DATA, "delete", [EVAL, JOB])],
    ),
    (
        "delete order is reverse dependency order, not reverse alphabetical",
        [],
        {"Prompt/a": observed("Prompt/a", "p1"), SERVE: observed(SERVE, "s1", deps={"Prompt/a": "p1"})},
        PlanOptions(prune=True, allow_empty=True),
        [(SERVE, "delete", []), ("Prompt/a", "delete", [SERVE])],
    ),
    (
        "an orphan that depends on a kept resource does not hold that resource",
        [desired(DATA, "d1")],
        {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1", deps={DATA: "d1"})},
        PRUNE,
        [(DATA, "no-op", []), (JOB, "delete", [])],
    ),
]


@pytest.mark.parametrize("name,want,have,options,expected", DELETE_SCENARIOS, ids=[s[0] for s in DELETE_SCENARIOS])
def test_delete_scenarios(name, want, have, options, expected):
    plan = make_plan(want, have, options)
    assert [(a.key, a.action, list(a.requires)) for a in plan.actions] == expected
    assert plan.options == options


@pytest.mark.parametrize(
    "action_index,failed,blocked_by",
    [
        (1, {EVAL}, [EVAL]),          # the evaluation's delete failed: its job stays
        (2, {JOB}, [JOB]),            # ... and so does the dataset the job used
        (2, set(), []),
        (0, {DATA}, []),              # a dependency's failure never blocks a dependent's delete
    ],
)
def test_deletes_blocked_by_a_failed_dependent(action_index, failed, blocked_by):
    have = {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1", deps={DATA: "d1"}),
            EVAL: observed(EVAL, "e1", deps={JOB: "t1"})}
    plan = make_plan([], have, PlanOptions(prune=True, allow_empty=True))
    assert blockers(plan.actions[action_index], failed) == blocked_by


def test_updates_are_blocked_by_their_failed_dependencies():
    plan = make_plan([desired(DATA, "d1"), desired(JOB, "t1", deps={DATA: "d1"})], {})
    assert blockers(plan.actions[1], {DATA}) == [DATA]
    assert blockers(plan.actions[0], {JOB}) == []


def test_saved_plan_round_trips_and_its_digest_covers_the_options():
    have = {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1")}
    plain, pruned = make_plan([desired(DATA, "d1")], have), make_plan([desired(DATA, "d1")], have, PRUNE)
    assert plain.digest != pruned.digest
    assert Plan.from_json(pruned.to_json()) == pruned
    tampered = pruned.to_json() | {"options": {"prune": False, "allow_empty": False}}
    with pytest.raises(PlanError, match="modified"):
        Plan.from_json(tampered)
    dropped = pruned.to_json()
    dropped["actions"] = dropped["actions"][:1]
    with pytest.raises(PlanError, match="modified"):
        Plan.from_json(dropped)
    with pytest.raises(PlanError, match="another llmops version"):
        Plan.from_json({"format": 1, "actions": []})
    assert PlanOptions().differences(PRUNE) == ["--prune"]


def test_live_state_unknown_is_a_note_not_drift():
    plan = make_plan([desired(SERVE, "s1")], {SERVE: observed(SERVE, "s1", unknown="no Ray cluster reachable")})
    (action,) = plan.actions
    assert action.action == "no-op" and action.notes == ("live state unknown: no Ray cluster reachable",)
    known = make_plan([desired(SERVE, "s1")], {SERVE: observed(SERVE, "s1")})
    assert plan.observed_digest == known.observed_digest


def test_update_carries_the_last_run_cost():
    plan = make_plan([desired(JOB, "t2")], {JOB: observed(JOB, "t1", cost="last run 1 m 27 s on 1 worker × 2 CPU")})
    assert plan.actions[0].cost == "last run 1 m 27 s on 1 worker × 2 CPU"


@pytest.mark.parametrize(
    "value,shown",
    [(10, "10"), ("nf4", '"nf4"'), (None, "null"), ({"r": 8}, '{"r": 8}'), ("x" * 100, '"' + "x" * 38 + "…")],
)
def test_values_in_reasons_are_short_and_json_like(value, shown):
    assert show_value(value) == shown


def test_spec_change_names_old_and_new_values_including_unset():
    plan = make_plan([desired(JOB, "t2", spec={"lora": {"r": 16}, "export": ["gguf"]})],
                     {JOB: observed(JOB, "t1", spec={"lora": {"r": 8}})})
    assert plan.actions[0].reasons == (
        'spec changed at spec.export: (unset) → ["gguf"]', "spec changed at spec.lora.r: 8 → 16",
    )


def test_digests_track_state_not_order():
    a = make_plan([desired(DATA, "d1")], {DATA: observed(DATA, "d0")})
    b = make_plan([desired(DATA, "d1")], {DATA: observed(DATA, "d0")})
    c = make_plan([desired(DATA, "d1")], {DATA: observed(DATA, "d9")})
    assert a.observed_digest == b.observed_digest != c.observed_digest
    assert a.desired_digest == c.desired_digest


@pytest.mark.parametrize(
    "old,new,paths",
    [
        ({"a": 1}, {"a": 1}, []),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}, ["a.c"]),
        ({"l": [1, 2]}, {"l": [1, 3]}, ["l.1"]),
        ({"l": [1, 2]}, {"l": [1, 2, 3]}, ["l"]),
        ({"x": 1}, {"y": 1}, ["x", "y"]),
    ],
)
def test_diff_paths(old, new, paths):
    assert diff_paths(old, new) == paths


# --- apply order ------------------------------------------------------------------------------
def test_apply_order_puts_dependencies_first_and_serving_after_the_builds():
    from pathlib import Path

    from llmops_engine.graph import dependencies, topological_order
    from llmops_engine.specs.loader import load_resources

    demo = Path(__file__).resolve().parent.parent
    by_key = {r.key: r for r in load_resources(demo, ["specs"])}
    order = topological_order(by_key)

    assert sorted(order) == sorted(by_key)
    for key in order:
        assert all(order.index(dep) < order.index(key) for dep in dependencies(by_key[key]) if dep in by_key), key
    serving = [key for key in order if key.startswith("Deployment/")]
    assert serving and order[-len(serving):] == serving, "a Deployment came before a build it does not need"
    assert order == topological_order(dict(reversed(by_key.items()))), "the order depends on load order"
    # The gate a deployment waits for runs before the comparison nothing waits for (which then
    # reuses the gate's answers).
    assert order.index("Evaluation/support-gate") < order.index("Evaluation/rag-comparison")
