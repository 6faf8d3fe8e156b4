"""The planner is a pure function; each scenario is (desired, observed) → expected actions."""

import pytest

from llmops_engine.planner import DesiredResource, ObservedResource, diff_paths, make_plan


def desired(key, fp, spec=None, deps=None, inputs=None):
    kind, name = key.split("/")
    return DesiredResource(key, kind, name, fp, spec or {}, deps or {}, inputs or {})


def observed(key, fp, spec=None, deps=None, inputs=None, status="ready", message="", drift=None):
    return ObservedResource(key, fp, spec or {}, deps or {}, inputs or {}, status, message, drift)


DATA = "Dataset/d"
JOB = "TuningJob/t"
EVAL = "Evaluation/e"

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
        [(JOB, "update", ["spec changed at spec.training.epochs"])],
    ),
    (
        "raw data change updates the dataset and marks downstream",
        [desired(DATA, "d2", inputs={"data/x.jsonl": "h2"}), desired(JOB, "t2", deps={DATA: "d2"})],
        {DATA: observed(DATA, "d1", inputs={"data/x.jsonl": "h1"}), JOB: observed(JOB, "t1", deps={DATA: "d1"})},
        [(DATA, "update", ["data changed: data/x.jsonl"]), (JOB, "update", ["upstream dataset d changed"])],
    ),
    (
        "transitive upstream change reaches the evaluation",
        [desired(DATA, "d2", spec={"split": 2}), desired(JOB, "t2", deps={DATA: "d2"}), desired(EVAL, "e2", deps={JOB: "t2"})],
        {DATA: observed(DATA, "d1", spec={"split": 1}), JOB: observed(JOB, "t1", deps={DATA: "d1"}),
         EVAL: observed(EVAL, "e1", deps={JOB: "t1"})},
        [(DATA, "update", ["spec changed at spec.split"]), (JOB, "update", ["upstream dataset d changed"]),
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
        [(JOB, "update", ["spec changed at spec.export"])],
    ),
]


@pytest.mark.parametrize("name,want,have,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_plan_scenarios(name, want, have, expected):
    plan = make_plan(want, have)
    got = [(a.key, a.action, list(a.reasons)) for a in plan.actions]
    assert got == expected


def test_orphans_listed_and_pruned_only_on_request():
    want = [desired(DATA, "d1")]
    have = {DATA: observed(DATA, "d1"), JOB: observed(JOB, "t1")}
    assert make_plan(want, have).orphans == (JOB,)
    pruned = make_plan(want, have, prune=True)
    assert [(a.key, a.action) for a in pruned.actions] == [(DATA, "no-op"), (JOB, "delete")]
    assert pruned.orphans == ()


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
