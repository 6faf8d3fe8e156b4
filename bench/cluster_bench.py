"""What running training as a detached step on a cluster costs, and how fast a killed apply is re-attached.

One spec repository (the tiny demo's Dataset and Prompt, a LoRA TuningJob on builtin:tiny-llama),
its Dataset applied once; then each measured apply retrains (the TuningJob's seed changes), timed
from the `llmops apply` process start to the first training step it reports:

  embedded, warm   no RAY_ADDRESS: the engine's own local head, already running
  embedded, cold   no RAY_ADDRESS, after `llmops down`: the apply starts the head too
  cluster          RAY_ADDRESS of a head started separately with `ray start --head`

and, on the cluster, an apply SIGKILLed after its first checkpoint, then a second apply, timed from
its start to "attached to training run" and to the first progress line it relays.

    python bench/cluster_bench.py [--repeats 2]

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LLMOPS = str(Path(sys.executable).with_name("llmops"))

TUNING = """\
apiVersion: llmops/v1
kind: TuningJob
metadata: {{name: support-lora}}
spec:
  base_model: builtin:tiny-llama
  dataset: support-tickets
  prompt: support-answer
  method: lora
  training: {{max_steps: 30, batch_size: 8, save_every_steps: 5, max_seq_len: 128, seed: {seed}}}
"""
FIRST_STEP = re.compile(r"step \d+/\d+")


def make_repo(root: Path) -> Path:
    (root / "specs").mkdir(parents=True)
    for name in ("dataset.yaml", "prompt.yaml"):
        shutil.copy(REPO / "tests" / "fixtures" / "tiny_demo" / name, root / "specs" / name)
    shutil.copy(REPO / "data.dvc", root / "data.dvc")
    (root / "llmops.yaml").write_text("spec_dirs: [specs]\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def timed_apply(root: Path, env: dict, seed: int, until: list[re.Pattern], kill_after: re.Pattern | None = None):
    """Seconds from the apply's start to the first line matching each pattern (None: never seen)."""
    (root / "specs" / "tuning.yaml").write_text(TUNING.format(seed=seed))
    started = time.perf_counter()
    apply = subprocess.Popen([LLMOPS, "apply", "--dir", str(root)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[float | None] = [None] * len(until)
    for line in apply.stdout:
        for index, pattern in enumerate(until):
            if seen[index] is None and pattern.search(line):
                seen[index] = time.perf_counter() - started
        if kill_after is not None and kill_after.search(line):
            os.killpg(apply.pid, signal.SIGKILL)
            break
    apply.wait()
    if kill_after is None and apply.returncode != 0:
        raise SystemExit(f"apply failed (exit {apply.returncode})")
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from tests.external_ray import external_head

    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LLMOPS_MAX_STEPS", "CI")}
    base_env.update(DVC_NO_ANALYTICS="1", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    results: dict[str, list[float]] = {"embedded, warm": [], "embedded, cold": [], "cluster": [],
                                       "re-attach: attached": [], "re-attach: first progress": []}
    seed = 1
    with tempfile.TemporaryDirectory(prefix="llmops-cluster-bench-") as work:
        root = make_repo(Path(work) / "repo")
        try:
            timed_apply(root, base_env, seed, [FIRST_STEP])  # the Dataset, the head, a first training
            for _ in range(args.repeats):
                seed += 1
                results["embedded, warm"].append(timed_apply(root, base_env, seed, [FIRST_STEP])[0])
                subprocess.run([LLMOPS, "down", "--dir", str(root)], env=base_env, check=True, capture_output=True)
                seed += 1
                results["embedded, cold"].append(timed_apply(root, base_env, seed, [FIRST_STEP])[0])
        finally:
            subprocess.run([LLMOPS, "down", "--dir", str(root)], env=base_env, capture_output=True)
        with external_head() as cluster_env:
            cluster_env = {**cluster_env, **{k: base_env[k] for k in ("DVC_NO_ANALYTICS", "HF_HUB_OFFLINE")}}
            cluster_env.pop("LLMOPS_MAX_STEPS", None)
            seed += 1
            timed_apply(root, cluster_env, seed, [FIRST_STEP])  # warm the cluster's workers once
            for _ in range(args.repeats):
                seed += 1
                results["cluster"].append(timed_apply(root, cluster_env, seed, [FIRST_STEP])[0])
                seed += 1
                timed_apply(root, cluster_env, seed, [], kill_after=re.compile(r"checkpoint saved at step"))
                attached, progress = timed_apply(root, cluster_env, seed, [re.compile("attached to training run"),
                                                                           re.compile(r"step \d+/\d+|checkpoint saved")])
                results["re-attach: attached"].append(attached)
                results["re-attach: first progress"].append(progress)

    print(f"{'apply start to':<32}{'median s':>10}  runs")
    for name, values in results.items():
        shown = [f"{v:.1f}" if v is not None else "-" for v in values]
        valid = [v for v in values if v is not None]
        print(f"{name:<32}{statistics.median(valid) if valid else float('nan'):>10.1f}  {', '.join(shown)}")
    warm, cluster = statistics.median(results["embedded, warm"]), statistics.median(results["cluster"])
    print(f"cluster / embedded warm: x{cluster / warm:.2f} (first training step)")


if __name__ == "__main__":
    main()
