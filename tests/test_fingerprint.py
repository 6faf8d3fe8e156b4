"""Fingerprints change exactly when outputs could: spec, upstream, or data — not layout."""

from llmops_engine.data.sources import source_files
from llmops_engine.engine import Engine
from llmops_engine.project import load_project

SPECS = """
apiVersion: llmops/v1
kind: Prompt
metadata: {name: p}
spec:
  template: "Q: {instruction}"
---
apiVersion: llmops/v1
kind: Dataset
metadata: {name: d}
spec:
  source: {path: data/x.jsonl}
  columns: {instruction: q, output: a}
  split: {eval_fraction: 0.2, seed: 1}
---
apiVersion: llmops/v1
kind: TuningJob
metadata: {name: t, labels: {team: a}}
spec:
  base_model: builtin:tiny-llama
  dataset: d
  prompt: p
  training: {epochs: 2, seed: 3}
"""

# Same meaning: comments, flow vs block style, key order, quoting.
REFORMATTED = """
# a comment
apiVersion: llmops/v1
kind: Prompt
metadata:
  name: p
spec: {template: 'Q: {instruction}'}
---
kind: Dataset
apiVersion: llmops/v1
metadata: {name: d}
spec:
  columns:
    output: a
    instruction: q
  source:
    path: data/x.jsonl
  split: {seed: 1, eval_fraction: 0.2}
---
apiVersion: llmops/v1
kind: TuningJob
metadata: {name: t, labels: {team: b}}   # labels never change outputs
spec:
  training: {seed: 3, epochs: 2}
  prompt: p
  dataset: d
  base_model: "builtin:tiny-llama"
"""


def fingerprints(root):
    return Engine(load_project(root)).load().fingerprints


def project(make_project, text, name="p1"):
    root = make_project({"all.yaml": text}, name=name)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "x.jsonl").write_text('{"q": "a", "a": "b"}\n')
    return root


def test_layout_comments_and_labels_do_not_change_fingerprints(make_project):
    assert fingerprints(project(make_project, SPECS, "a")) == fingerprints(project(make_project, REFORMATTED, "b"))


def test_spec_change_moves_resource_and_dependents_only(make_project):
    before = fingerprints(project(make_project, SPECS, "a"))
    after = fingerprints(project(make_project, SPECS.replace("eval_fraction: 0.2", "eval_fraction: 0.3"), "b"))
    assert before["Prompt/p"] == after["Prompt/p"]
    assert before["Dataset/d"] != after["Dataset/d"]
    assert before["TuningJob/t"] != after["TuningJob/t"]


def test_data_content_change_moves_fingerprint(make_project):
    root = project(make_project, SPECS)
    before = fingerprints(root)
    (root / "data" / "x.jsonl").write_text('{"q": "a", "a": "c"}\n')
    after = fingerprints(root)
    assert before["Dataset/d"] != after["Dataset/d"]
    assert before["TuningJob/t"] != after["TuningJob/t"]
    assert before["Prompt/p"] == after["Prompt/p"]


def test_the_engines_own_output_is_never_an_input(make_project):
    """A `**` glob also matches what the engine writes (reports in the store, request logs):
    its fingerprint must not move when the engine writes them."""
    root = project(make_project, SPECS.replace("source: {path: data/x.jsonl}", "source: {path: '**/*.jsonl'}"))
    before = fingerprints(root)
    for written in (".llmops/serve/requests/support-api.jsonl", ".llmops/store/objects/ab/eval.jsonl"):
        (root / written).parent.mkdir(parents=True, exist_ok=True)
        (root / written).write_text('{"q": "x", "a": "y"}\n')
    assert fingerprints(root)["Dataset/d"] == before["Dataset/d"]
    dataset = Engine(load_project(root)).load().by_key["Dataset/d"]
    assert [p.relative_to(root).as_posix() for p in source_files(root, dataset.spec.source)] == ["data/x.jsonl"]
    (root / "data" / "more.jsonl").write_text('{"q": "x", "a": "y"}\n')
    assert fingerprints(root)["Dataset/d"] != before["Dataset/d"]  # a real input still counts
