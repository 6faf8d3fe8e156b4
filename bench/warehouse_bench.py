"""Warehouse extract benchmark: a 1 M-row support-ticket table (~500 B/row) in a private PostgreSQL.

Starts a throwaway cluster (tests/postgres.py: initdb + pg_ctl on 127.0.0.1, a free port, a temp
dir; stopped and removed at the end), fills `tickets` with generate_series over the demo's
tickets (the same rows as bench/data_bench.py), then times, each in its own process so peak RSS
is its own (the server's memory is not counted in either):
  extract - llmops_engine.data.warehouse.extract: server-side cursor → Arrow batches → Parquet;
  naive   - pandas.read_sql(query, engine) → DataFrame.to_parquet.

    python bench/warehouse_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUERY = "SELECT id, question, context, answer FROM tickets ORDER BY id"
URL_ENV = "LLMOPS_BENCH_WAREHOUSE_URL"  # the URL reaches the children by environment, not argv
FILLER = "The customer attached logs from the desktop app and the web app; both show the same state. "


def fill(cluster, rows: int) -> None:
    from llmops_engine.data.demo import all_rows

    pool = all_rows()
    with cluster.connect() as connection:
        connection.execute("CREATE TEMP TABLE pool (n int, question text, context text, answer text)")
        with connection.cursor().copy("COPY pool FROM STDIN") as copy:
            for n, row in enumerate(pool):
                copy.write_row((n, row["question"], row["context"], row["answer"]))
        connection.execute("""
            CREATE TABLE tickets AS
            SELECT 'T' || lpad(g::text, 7, '0') AS id,
                   p.question || ' (ticket ' || g || ')' AS question,
                   p.context || ' Ticket ' || g || '. ' || repeat(%(filler)s, 2) AS context,
                   p.answer || ' Reference ' || g || '. ' || %(filler)s AS answer
            FROM generate_series(0, %(last)s) g JOIN pool p ON p.n = g %% %(pool)s""",
                           {"filler": FILLER, "last": rows - 1, "pool": len(pool)})
        connection.execute("ALTER TABLE tickets ADD PRIMARY KEY (id)")
        connection.execute("VACUUM ANALYZE tickets")


def run_extract(out: Path) -> dict:
    from llmops_engine.data.warehouse import extract

    result = extract(URL_ENV, QUERY, out)
    return {"rows_out": result.rows, "mb_out": result.path.stat().st_size / 1e6, "sha256": result.sha256[:12]}


def run_naive(out: Path) -> dict:
    import pandas as pd
    from sqlalchemy import create_engine

    engine = create_engine(os.environ[URL_ENV])
    frame = pd.read_sql(QUERY, engine)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "naive.parquet")
    return {"rows_out": len(frame), "mb_out": (out / "naive.parquet").stat().st_size / 1e6, "sha256": "-"}


def child(mode: str, out: Path) -> None:
    started = time.perf_counter()
    result = (run_extract if mode == "extract" else run_naive)(out)
    result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(mode: str, url: str, work: Path, rows: int) -> dict:
    from data_bench import in_child  # bench/, beside this script

    return in_child(__file__, mode, [str(work / mode)], {**os.environ, URL_ENV: url}, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    from tests.postgres import PostgresCluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql-15 or set LLMOPS_PG_BIN")
    cluster = PostgresCluster(bindir)
    try:
        started = time.perf_counter()
        cluster.start()
        fill(cluster, args.rows)
        with cluster.connect() as connection:
            table_mb = connection.execute("SELECT pg_total_relation_size('tickets')").fetchone()[0] / 1e6
        print(f"PostgreSQL {bindir.parent.name}: {args.rows:,} rows, {table_mb:.0f} MB table, ready in "
              f"{time.perf_counter() - started:.1f}s ({os.cpu_count()} CPUs)")
        with tempfile.TemporaryDirectory(prefix="llmops-warehouse-bench-") as work:
            for mode in ("extract", "naive"):
                r = measure(mode, cluster.url, Path(work), args.rows)
                if "error" in r:
                    print(f"{mode:7s} failed: {r['error']}")
                    continue
                print(f"{mode:7s} {r['rows_per_s']:>9,.0f} rows/s  {r['seconds']:6.1f} s  peak RSS "
                      f"{r['peak_rss_mb']:7.0f} MB  rows {r['rows_out']:,}  parquet {r['mb_out']:.0f} MB  "
                      f"sha256 {r['sha256']}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
