"""Object-store artifact store vs. plain fsspec, side by side on one S3 API.

    python bench/store_bench.py                 # 64 MB object, plan at 100 and 1000 resources
    python bench/store_bench.py --mb 256 --n 100

Needs the test extra (s3fs, moto[server]): the S3 API is moto's server on 127.0.0.1, so the
numbers show llmops' own overhead (manifest, sha256 verification, listing) without network
latency — a real bucket adds round trips to both columns alike.

1. Publish and fetch one model-shaped object (4 files): `RemoteStore.publish` / `local_path`
   on a fresh cache vs. `fs.put` / `fs.get` of the same directory.
2. `llmops plan` with nothing to do (real CLI process) for N resources, store on s3:// vs. a
   local directory — the same projects as bench/plan_bench.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def start_s3() -> object:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    return server


def new_bucket() -> str:
    import fsspec

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return bucket


def model_like(directory: Path, megabytes: int) -> None:
    sizes = {"adapter/adapter_model.safetensors": 0.9, "model.safetensors": 0.09, "tokenizer/tokenizer.json": 0.01}
    for name, share in sizes.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(int(megabytes * share * 1024 * 1024)))
    (directory / "model.json").write_text('{"method": "qlora"}')


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench_object(megabytes: int, repeats: int) -> None:
    import fsspec

    from llmops_engine.state.remote import RemoteStore

    fs = fsspec.filesystem("s3")
    rows = {"publish": ([], []), "fetch": ([], [])}
    for _ in range(repeats):
        bucket = new_bucket()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            source = tmp / "source"
            model_like(source, megabytes)
            rows["publish"][1].append(timed(lambda: fs.put(str(source), f"{bucket}/plain", recursive=True)))
            rows["fetch"][1].append(timed(lambda: fs.get(f"{bucket}/plain", str(tmp / "plain-copy"), recursive=True)))

            publisher = RemoteStore(f"s3://{bucket}/store", tmp / "a")
            staging = publisher.staging_dir("f" * 64)
            shutil.copytree(source, staging, dirs_exist_ok=True)
            rows["publish"][0].append(timed(lambda: publisher.publish("f" * 64, staging)))
            reader = RemoteStore(f"s3://{bucket}/store", tmp / "b")
            rows["fetch"][0].append(timed(lambda: reader.local_path("f" * 64)))
        fs.rm(bucket, recursive=True)
    print(f"\n1. one {megabytes} MB object, 4 files (median of {repeats})")
    print(f"{'':>9} {'llmops s':>9} {'plain fsspec s':>15} {'ratio':>6} {'llmops MB/s':>12}")
    for name, (engine, plain) in rows.items():
        e, p = statistics.median(engine), statistics.median(plain)
        print(f"{name:>9} {e:>9.3f} {p:>15.3f} {e / p:>6.2f} {megabytes / e:>12.1f}")


def bench_plan(counts: list[int], repeats: int) -> None:
    from plan_bench import apply_once, build, time_plan

    print(f"\n2. `llmops plan`, nothing to do (median of {repeats})")
    print(f"{'N':>6} {'s3:// s':>8} {'local dir s':>12} {'ratio':>6}")
    for n in counts:
        medians = {}
        for kind in ("s3", "local"):
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                build(root, n)
                if kind == "s3":
                    (root / "llmops.yaml").write_text(f"spec_dirs: [specs]\nartifact_store: s3://{new_bucket()}/store\n")
                apply_once(root)
                time_plan(root, 1)
                medians[kind] = statistics.median(time_plan(root, repeats))
        print(f"{n:>6} {medians['s3']:>8.3f} {medians['local']:>12.3f} {medians['s3'] / medians['local']:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--n", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server = start_s3()
    try:
        bench_object(args.mb, args.repeats)
        bench_plan(args.n, args.repeats)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
