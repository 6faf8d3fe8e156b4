"""Time `llmops plan` with nothing to do, for N synthetic resources.

    python bench/plan_bench.py            # N = 100 and 1000
    python bench/plan_bench.py --n 5000

Each N gets a temp project of N/3 Dataset → TuningJob → Evaluation chains sharing one
Prompt, applied once through recording controllers; then the real CLI (`llmops plan`,
a fresh process, as a user runs it) is timed. Targets: ≤ 1 s at 100, ≤ 3 s at 1,000.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPT = "apiVersion: llmops/v1\nkind: Prompt\nmetadata: {name: p}\nspec: {template: 'Q: {instruction}'}\n"
CHAIN = """---
apiVersion: llmops/v1
kind: Dataset
metadata: {{name: d{i}}}
spec:
  source: {{path: data/d{i}.jsonl}}
  columns: {{instruction: q, output: a}}
  validation:
    - {{expect: column_values_to_not_be_null, column: output}}
---
apiVersion: llmops/v1
kind: TuningJob
metadata: {{name: t{i}}}
spec: {{base_model: "builtin:tiny-llama", dataset: d{i}, prompt: p, training: {{epochs: 2}}}}
---
apiVersion: llmops/v1
kind: Evaluation
metadata: {{name: e{i}}}
spec:
  model: t{i}
  dataset: d{i}
  thresholds: [{{metric: rouge_l, min: 0.1}}]
"""


def build(root: Path, n: int) -> None:
    chains = max(1, (n - 1) // 3)
    (root / "specs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    per_file = 50
    for start in range(0, chains, per_file):
        text = PROMPT if start == 0 else ""
        text += "".join(CHAIN.format(i=i) for i in range(start, min(chains, start + per_file)))
        (root / "specs" / f"s{start:05d}.yaml").write_text(text)
    for i in range(chains):
        (root / "data" / f"d{i}.jsonl").write_text(f'{{"q": "{i}", "a": "answer {i}"}}\n' * 50)


def apply_once(root: Path) -> int:
    from llmops_engine.engine import Engine
    from llmops_engine.project import load_project
    from tests import recording_controllers

    result = Engine(load_project(root), report=lambda _: None, registry=recording_controllers.registry()).apply()
    return len(result.steps)


def time_plan(root: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "llmops"), "plan", "--detailed-exitcode"],
            cwd=root, capture_output=True, text=True,
        )
        times.append(time.perf_counter() - start)
        if out.returncode != 0:
            raise SystemExit(f"plan did not report 'no changes' (exit {out.returncode}):\n{out.stdout}{out.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'N':>6} {'resources':>9} {'plan median s':>14} {'min s':>7} {'max s':>7}")
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            build(root, n)
            count = apply_once(root)
            time_plan(root, 1)  # warm the content-hash cache, as any second plan would be
            times = time_plan(root, args.repeats)
            print(f"{n:>6} {count:>9} {statistics.median(times):>14.3f} {min(times):>7.3f} {max(times):>7.3f}")
    baseline = time_python_startup()
    print(f"(python interpreter start alone: {baseline:.3f} s)")


def time_python_startup() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
