"""Dataset benchmark: 1 M support-ticket rows (~500 MB JSONL), generated on the fly.

Compares, in the same run and each in its own process (so peak RSS is its own):
  engine  - llmops_engine.data.pipeline.build: DuckDB reads and transforms out of core → hash
            split → Great Expectations on DuckDB's batches in chunks → train/eval JSONL;
  naive   - pandas.read_json(lines=True) → the same transforms in pandas → GX validating
            the whole DataFrame → to_json.
Both use the demo Dataset's transforms and its 6 validation rules.

    python bench/data_bench.py [--rows 1000000] [--modes engine,naive] [--keep DIR]

At 10 M rows (~5 GB) the naive path needs tens of GB: run `--rows 10000000 --modes engine`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC = {
    "source": {"path": "raw.jsonl"},
    "columns": {"instruction": "question", "input": "context", "output": "answer"},
    "transforms": [
        {"strip_whitespace": {}},
        {"drop_empty": ["instruction", "output"]},
        {"dedupe": ["instruction", "input"]},
        {"max_chars": {"output": 2000}},
    ],
    "split": {"eval_fraction": 0.15, "seed": 42},
    "validation": [
        {"expect": "column_values_to_not_be_null", "column": "instruction"},
        {"expect": "column_values_to_not_be_null", "column": "output"},
        {"expect": "table_row_count_to_be_between", "min_value": 200},
        {"expect": "column_value_lengths_to_be_between", "column": "output", "min_value": 5, "max_value": 2000},
        {"expect": "column_values_to_not_match_regex", "column": "output", "regex": "(?i)lorem ipsum"},
        {"expect": "compound_columns_to_be_unique", "column_list": ["instruction", "input"]},
    ],
}


def generate(path: Path, rows: int) -> None:
    from llmops_engine.data.demo import all_rows

    pool = all_rows()
    filler = "The customer attached logs from the desktop app and the web app; both show the same state. "
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            base = pool[i % len(pool)]
            row = {
                "id": f"T{i:07d}",
                "question": f"{base['question']} (ticket {i})",
                "context": f"{base['context']} Ticket {i}. {filler * 2}",
                "answer": f"{base['answer']} Reference {i}. {filler}",
            }
            handle.write(json.dumps(row) + "\n")


def run_engine(raw: Path, out: Path) -> dict:
    from llmops_engine.data.pipeline import build
    from llmops_engine.specs.dataset import DatasetSpec

    result = build("bench", DatasetSpec.model_validate(SPEC), raw.parent, out, out.parent / "failed")
    return {"rows_out": result.train_rows + result.eval_rows, "valid": result.report["success"]}


def run_naive(raw: Path, out: Path) -> dict:
    import pandas as pd

    from llmops_engine.data.validation import batch_definition, build_expectation
    from llmops_engine.specs.dataset import ValidationRule

    from great_expectations.execution_engine import pandas_execution_engine

    gx_default = pandas_execution_engine.HASH_THRESHOLD
    batch_definition()  # the engine's context turns GX's frame fingerprint off; the naive path keeps GX's defaults
    pandas_execution_engine.HASH_THRESHOLD = gx_default
    frame = pd.read_json(raw, lines=True)
    frame = frame.rename(columns={"question": "instruction", "context": "input", "answer": "output"})
    frame = frame[["instruction", "input", "output"]]
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    frame = frame.dropna(subset=["instruction", "output"])
    frame = frame[(frame["instruction"] != "") & (frame["output"] != "")]
    frame = frame.drop_duplicates(subset=["instruction", "input"])
    frame = frame[frame["output"].str.len() <= 2000]
    batch = batch_definition().get_batch(batch_parameters={"dataframe": frame})
    valid = all(batch.validate(build_expectation(ValidationRule.model_validate(r))).success for r in SPEC["validation"])
    is_eval = frame.index.to_series().sample(frac=0.15, random_state=42).index
    out.mkdir(parents=True, exist_ok=True)
    frame.drop(is_eval).to_json(out / "train.jsonl", orient="records", lines=True)
    frame.loc[is_eval].to_json(out / "eval.jsonl", orient="records", lines=True)
    return {"rows_out": len(frame), "valid": valid}


def child(mode: str, raw: Path, out: Path) -> None:
    started = time.perf_counter()
    result = (run_engine if mode == "engine" else run_naive)(raw, out)
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(mode: str, raw: Path, work: Path, rows: int) -> dict:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False"}
    return in_child(__file__, mode, [str(raw), str(work / mode)], env, rows)


def in_child(script: str, mode: str, args: list[str], env: dict, rows: int) -> dict:
    """`script --child MODE ARGS…` in its own process (so peak RSS is its own): its JSON result."""
    done = subprocess.run([sys.executable, script, "--child", mode, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"mode": mode, "error": done.stderr.strip()[-500:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"mode": mode, **result, "rows_per_s": rows / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--modes", default="engine,naive", help="comma-separated: engine, naive")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temp dir, removed)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory(prefix="llmops-data-bench-") as temp:
        work = args.keep or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        raw = work / "raw.jsonl"
        started = time.perf_counter()
        generate(raw, args.rows)
        size_mb = raw.stat().st_size / 1e6
        print(f"generated {args.rows:,} rows, {size_mb:.0f} MB in {time.perf_counter() - started:.1f}s "
              f"({os.cpu_count()} CPUs)")
        for mode in args.modes.split(","):
            r = measure(mode, raw, work, args.rows)
            if "error" in r:
                print(f"{mode:7s} failed: {r['error']}")
                continue
            print(f"{mode:7s} {r['rows_per_s']:>9,.0f} rows/s  {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB"
                  f"  rows out {r['rows_out']:,}  valid={r['valid']}")


if __name__ == "__main__":
    main()
