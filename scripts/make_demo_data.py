"""Write the demo raw data (support tickets for the fictional "Nimbus" products).

The generator lives in llmops_engine/data/demo.py so that `llmops apply` can rebuild the
file on a fresh clone; this script is the same thing for people:

    python scripts/make_demo_data.py [--rows 500] [--seed 7] [--out data/support_tickets.jsonl]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmops_engine.data.demo import DEFAULT_ROWS, DEFAULT_SEED, generate, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=REPO / "data/support_tickets.jsonl")
    args = parser.parse_args()
    write_jsonl(generate(args.rows, args.seed), args.out)
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
