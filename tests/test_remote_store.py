"""Artifact stores at object-store URLs: publish/fetch through the manifest, records, the
apply lease, clear errors — on fsspec's memory:// (in-process) and on a real S3 API over
HTTP (moto's server on 127.0.0.1), including two clones sharing an s3:// store, a lock
across processes, and an evaluation on a "second machine" that fetches its model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from llmops_engine.engine import Engine
from llmops_engine.errors import LockError, ProjectError, StoreError
from llmops_engine.project import load_project
from llmops_engine.state.lock import LEASE, Lease
from llmops_engine.state.records import ResourceRecord
from llmops_engine.state.remote import RemoteStore
from tests import recording_controllers
from tests.conftest import SPECS, write_project
from tests.plugins.s3_server import SECRET

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def memory_url():
    import fsspec

    url = f"memory://llmops-{uuid.uuid4().hex[:8]}/store"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def make_staging(store: RemoteStore, fingerprint: str) -> Path:
    staging = store.staging_dir(fingerprint)
    (staging / "model").mkdir()
    (staging / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (staging / "metrics.json").write_text('{"loss": 0.1}')
    (staging / "empty").mkdir()
    return staging


# --- objects ------------------------------------------------------------------------------
def test_an_object_published_on_one_machine_is_fetched_verified_on_another(memory_url, tmp_path):
    machine_a = RemoteStore(memory_url, tmp_path / "a")
    published = machine_a.publish("f" * 64, make_staging(machine_a, "f" * 64))
    assert (published / "model" / "weights.bin").is_file()  # the publisher keeps a cached copy

    machine_b = RemoteStore(memory_url, tmp_path / "b")
    assert machine_b.has("f" * 64) and not machine_b.has("e" * 64)
    local = machine_b.local_path("f" * 64)
    assert local.is_relative_to(tmp_path / "b")
    assert (local / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert (local / "metrics.json").read_text() == '{"loss": 0.1}' and (local / "empty").is_dir()
    assert list((tmp_path / "b").rglob("staging/*")) == []  # no download left behind


def test_an_upload_without_its_manifest_is_not_published(memory_url, tmp_path):
    store = RemoteStore(memory_url, tmp_path / "a")
    store.fs.pipe_file(f"{store.base}/objects/{'d' * 64}/model.bin", b"half an upload")
    assert not RemoteStore(memory_url, tmp_path / "b").has("d" * 64)
    assert not (RemoteStore(memory_url, tmp_path / "b").local_path("d" * 64)).exists()


def test_a_corrupted_object_is_refused_and_not_cached(memory_url, tmp_path):
    machine_a = RemoteStore(memory_url, tmp_path / "a")
    machine_a.publish("c" * 64, make_staging(machine_a, "c" * 64))
    machine_a.fs.pipe_file(f"{machine_a.base}/objects/{'c' * 64}/metrics.json", b'{"loss": 9.9}')
    machine_b = RemoteStore(memory_url, tmp_path / "b")
    with pytest.raises(StoreError, match="metrics.json does not match its manifest"):
        machine_b.local_path("c" * 64)
    assert not (tmp_path / "b").joinpath(machine_b.root.name, "objects", "c" * 64).exists()


def test_a_manifest_naming_files_outside_its_object_is_refused(memory_url, tmp_path):
    store = RemoteStore(memory_url, tmp_path / "a")
    manifest = {"format": 1, "dirs": [], "files": {"../../escaped.txt": {"size": 1, "sha256": "0"}}}
    store.fs.pipe_file(f"{store.base}/manifests/{'e' * 64}.json", json.dumps(manifest).encode())
    with pytest.raises(StoreError, match="outside itself"):
        RemoteStore(memory_url, tmp_path / "b").local_path("e" * 64)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_records_round_trip_and_foreign_files_are_ignored(memory_url, tmp_path):
    store = RemoteStore(memory_url, tmp_path / "a")
    assert store.read_records() == {}
    record = ResourceRecord(kind="Dataset", name="d", fingerprint="a" * 64, spec={"x": 1}, outputs={"rows": 3})
    store.write_record(record)
    store.fs.pipe_file(f"{store.base}/refs/Dataset/torn.json", b'{"kind": "Data')
    assert RemoteStore(memory_url, tmp_path / "b").read_records() == {"Dataset/d": record}
    store.delete_record("Dataset", "d")
    store.delete_record("Dataset", "never-written")
    assert store.read_records() == {}


def test_the_records_index_serves_unchanged_refs_and_never_hides_a_change(memory_url, tmp_path, monkeypatch):
    writer = RemoteStore(memory_url, tmp_path / "a")
    records = [ResourceRecord(kind="Dataset", name=f"d{i}", fingerprint=f"{i}" * 64, spec={}) for i in range(5)]
    for record in records:
        writer.write_record(record)
    assert writer.write_index() is None and writer.fs.exists(f"{writer.base}/refs-index.json")
    time.sleep(0.01)  # memory:// tokens are creation times
    changed = records[1].model_copy(update={"status": "failed", "message": "gate failed"})
    writer.write_record(changed)  # after the index: e.g. an apply killed before writing it
    writer.delete_record("Dataset", "d2")

    reader = RemoteStore(memory_url, tmp_path / "b")
    fetched = []
    original_cat = reader.fs.cat
    monkeypatch.setattr(reader.fs, "cat", lambda paths, **kw: fetched.extend(paths) or original_cat(paths, **kw))
    seen = reader.read_records()
    assert seen == {r.key: r for r in [records[0], changed, records[3], records[4]]}
    assert fetched == [f"{reader.base}/refs/Dataset/d1.json"]  # only the ref the index does not know

    writer.fs.pipe_file(f"{writer.base}/refs-index.json", b"{torn")
    assert RemoteStore(memory_url, tmp_path / "c").read_records() == seen


# --- the apply lease ----------------------------------------------------------------------
def test_the_lease_excludes_a_second_holder_and_names_the_first(memory_url, tmp_path):
    first = RemoteStore(memory_url, tmp_path / "a").lock(ttl_s=60)
    lease = first.acquire(command="llmops apply (terminal)")
    with pytest.raises(LockError) as caught:
        RemoteStore(memory_url, tmp_path / "b").lock(ttl_s=60).acquire()
    assert f"lock {lease.id} held by pid" in str(caught.value) and "llmops apply (terminal)" in str(caught.value)
    first.release()
    second = RemoteStore(memory_url, tmp_path / "b").lock(ttl_s=60)
    second.acquire()
    second.release()


def expired_lease_of_another_machine(store: RemoteStore) -> Lease:
    lease = Lease("stale0000000", "ci-runner-gone", 4242, time.time() - 600, time.time() - 300, "llmops apply")
    assert store.lease_files().create(LEASE, lease.encode())
    return lease


@pytest.fixture(params=["memory", "s3"])
def lease_store_url(request):
    """The lease on fsspec's memory:// and on the S3 server (its conditional writes over HTTP)."""
    return request.getfixturevalue("memory_url" if request.param == "memory" else "s3_store")


def test_an_expired_lease_is_taken_over_by_exactly_one_contender(lease_store_url, tmp_path):
    store = RemoteStore(lease_store_url, tmp_path / "a")
    expired_lease_of_another_machine(store)
    winners, barrier = [], threading.Barrier(6)

    def contend():
        lock = RemoteStore(lease_store_url, tmp_path / "b").lock(ttl_s=60)
        barrier.wait()
        try:
            winners.append(lock.acquire())
        except LockError:
            pass

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert store.lock().holder().id == winners[0].id
    assert [p for p in store.fs.ls(f"{store.base}/locks", detail=False) if "takeover" in p] == []


def test_a_torn_lease_or_an_abandoned_takeover_does_not_block_forever(memory_url, tmp_path):
    store = RemoteStore(memory_url, tmp_path / "a")
    assert store.lease_files().create(LEASE, b'{"id": "torn')  # a crash mid-write on some backend
    lock = store.lock(ttl_s=60)
    lock.acquire()
    lock.release()

    stale = expired_lease_of_another_machine(store)
    dead_taker = Lease("taker0000000", "gone", 1, time.time() - 600, time.time() - 300, "llmops apply")
    assert store.lease_files().create(f"takeover-{stale.id}.json", dead_taker.encode())
    lock = store.lock(ttl_s=60)
    assert lock.acquire(timeout_s=5).id != stale.id
    lock.release()


def test_force_unlock_needs_the_held_id(memory_url, tmp_path):
    store = RemoteStore(memory_url, tmp_path / "a")
    stale = expired_lease_of_another_machine(store)
    with pytest.raises(LockError, match="mismatch"):
        store.lock().force_unlock("not-the-id")
    assert store.lock().force_unlock(stale.id).host == "ci-runner-gone"
    assert store.lock().holder() is None
    with pytest.raises(LockError, match=f"no lock is held in {memory_url}"):
        store.lock().force_unlock(stale.id)


# --- URLs ---------------------------------------------------------------------------------
def test_unknown_scheme_and_missing_backend_are_project_errors(tmp_path):
    with pytest.raises(ProjectError, match="artifact store nosuch://b/x: .*nosuch"):
        RemoteStore("nosuch://b/x", tmp_path)
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ProjectError, match=r"backend for gs:// is not installed.*gcsfs.*llmops-engine\[gs\]"):
            RemoteStore("gs://bucket/prefix", tmp_path)


def test_credentials_in_a_url_are_refused_and_never_echoed(tmp_path):
    for url in ("s3://user:hunter2@bucket/x", "nosuch://user:hunter2@host/x"):
        with pytest.raises(ProjectError, match="put credentials in environment variables") as caught:
            RemoteStore(url, tmp_path)
        assert "hunter2" not in str(caught.value) and "://***@" in str(caught.value)


# --- a real S3 API over HTTP --------------------------------------------------------------
def clones(tmp_path: Path, store_url: str, names=("a", "b")) -> list[Path]:
    roots = []
    for name in names:
        root = write_project(tmp_path / name, SPECS, settings=f"spec_dirs: [specs]\nartifact_store: {store_url}\n")
        (root / "data").mkdir()
        (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
        roots.append(root)
    return roots


def llmops(root: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "llmops"
    return subprocess.run([str(exe), *args], cwd=root, capture_output=True, text=True, timeout=120)


def apply_in_process(root: Path):
    return Engine(load_project(root), report=lambda _: None, registry=recording_controllers.registry()).apply()


def calls(root: Path) -> list[str]:
    path = root / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow  # four CLI processes against the S3 server: ~3 s idle, 9 s on a busy runner
def test_two_clones_sharing_an_s3_store(s3_store, tmp_path):
    a, b = clones(tmp_path, s3_store)
    assert apply_in_process(a).exit_code() == 0

    plan = llmops(b, "plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes" in plan.stdout
    assert apply_in_process(b).exit_code() == 0 and calls(b) == []  # a fresh clone does no work
    assert not list((b / ".llmops").rglob("objects/*"))  # and fetches nothing it does not need

    data = b / "specs" / "data.yaml"
    data.write_text(data.read_text().replace("output: a}", "output: a}\n  split: {seed: 7}"))
    plan = llmops(b, "plan", "--json")
    changed = {a["key"]: a["action"] for a in json.loads(plan.stdout)["actions"] if a["action"] != "no-op"}
    assert changed == {"Dataset/d": "update", "TuningJob/t": "update"}
    assert apply_in_process(b).exit_code() == 0
    assert calls(b) == ["start Dataset/d", "done Dataset/d", "start TuningJob/t", "done TuningJob/t"]
    assert "No changes" in llmops(b, "plan").stdout

    status = llmops(a, "status")
    assert status.returncode == 0 and "TuningJob" in status.stdout, status.stdout
    import fsspec

    fs = fsspec.filesystem("s3")
    stored = b"".join(fs.cat(fs.find(s3_store.removeprefix("s3://"))).values())
    seen = plan.stdout + status.stdout + stored.decode(errors="replace")
    seen += "".join(p.read_text(errors="replace") for p in (b / ".llmops").rglob("*") if p.is_file())
    assert SECRET not in seen


RUNNER = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests import recording_controllers
from llmops_engine.engine import Engine
from llmops_engine.project import load_project
registry = recording_controllers.registry(TuningJob={{"hold": True}})
result = Engine(load_project(Path({root!r})), report=print, registry=registry).apply()
print("EXIT", result.exit_code())
"""


def test_the_apply_lock_in_s3_excludes_a_process_on_another_clone(s3_store, tmp_path):
    a, b = clones(tmp_path, s3_store)
    holder = subprocess.Popen([sys.executable, "-c", RUNNER.format(repo=str(REPO), root=str(a))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (a / "running-TuningJob").exists():
        assert time.monotonic() < deadline and holder.poll() is None, holder.communicate()
        time.sleep(0.05)
    blocked = llmops(b, "apply")  # the holder keeps the lock until release-TuningJob exists
    assert blocked.returncode == 4, blocked.stdout + blocked.stderr
    assert f"held by pid {holder.pid}" in blocked.stdout + blocked.stderr
    (a / "release-TuningJob").touch()
    out, err = holder.communicate(timeout=60)
    assert "EXIT 0" in out, err
    waited = apply_in_process(b)  # the lock is free again and the work is done
    assert waited.exit_code() == 0 and calls(b) == []


def test_a_missing_bucket_is_a_clear_error_and_no_traceback(s3_store, tmp_path):
    (a,) = clones(tmp_path, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/store", names=("a",))
    result = llmops(a, "apply")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "artifact store s3://no-such-bucket-" in output and "bucket exists" in output
    assert "Traceback" not in output and SECRET not in output


# --- real consumers: Ray Train, an evaluation task, a second machine --------------------
@pytest.mark.slow
def test_training_keeps_its_run_and_checkpoints_in_the_s3_store(ray_project, s3_store, tmp_path):
    import fsspec

    from tests.test_tuning_e2e import apply_once, tuning_setup

    store = RemoteStore(s3_store, tmp_path / "cache")
    tune, ctx = tuning_setup(tmp_path, ray_project, store=store, max_steps=4, batch_size=8, save_every_steps=2)
    outputs, staging = apply_once(tune, ctx)
    assert outputs["steps"] == 4 and (staging / "adapter" / "adapter_model.safetensors").is_file()
    runs = fsspec.filesystem("s3").find(f"{s3_store.removeprefix('s3://')}/ray_runs")
    assert any("/checkpoint_" in p and p.endswith("state.json") for p in runs), runs
    assert not (store.root / "ray_runs").exists()  # nothing only this machine could resume from


@pytest.mark.slow
def test_an_evaluation_on_a_second_machine_fetches_its_model_from_s3(ray_project, s3_store, tmp_path, monkeypatch):
    import ray

    from llmops_engine.controllers.evaluation import EvaluationController
    from llmops_engine.evaluation.contenders import Contender
    from llmops_engine.evaluation.runner import Suite, run_on_cluster
    from llmops_engine.specs.evaluation import Generation
    from llmops_engine.state.stores import node_cache_dir
    from tests.eval_helpers import DATASET, PROMPT, ROWS, TEMPLATE, make_context, resource, train_tiny

    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    tuning = resource("TuningJob", "tuned", base_model="builtin:tiny-llama", dataset="d", prompt="p", method="full")
    evaluation = resource("Evaluation", "gate", model="tuned", dataset="d", compare_to="none",
                          metrics=["rouge_l"], thresholds=[{"metric": "output_tokens_mean", "min": 1}],
                          generation={"max_new_tokens": 16, "batch_size": 8})
    resources = [resource("Prompt", "p", **PROMPT), resource("Dataset", "d", **DATASET), tuning, evaluation]

    machine_a = make_context(tmp_path / "a", resources, store=RemoteStore(s3_store, tmp_path / "a" / "cache"))
    model = machine_a.store.staging_dir("model")
    train_tiny(machine_a.store.root, model, steps=5)
    model_fingerprint = machine_a.fingerprint(tuning.key)
    machine_a.store.publish(model_fingerprint, model)
    data = machine_a.store.staging_dir("data")
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    machine_a.store.publish(machine_a.fingerprint("Dataset/d"), data)

    # Machine B's apply fetches what its step reads (dataset, model) into its own cache.
    machine_b = make_context(tmp_path / "b", resources, store=RemoteStore(s3_store, tmp_path / "b" / "cache"))
    staging = tmp_path / "staging"
    staging.mkdir()
    outputs = EvaluationController().apply(evaluation, machine_b, staging)
    assert outputs["passed"] is True and outputs["metrics"]["output_tokens_mean"] >= 1
    assert (machine_b.store.root / "objects" / model_fingerprint / "model" / "config.json").is_file()
    assert json.loads((staging / "metrics.json").read_text())["examples"] == len(ROWS)

    # A Ray worker on a node without that path fetches the model itself, into its node cache.
    elsewhere = Contender("candidate", model_fingerprint, TEMPLATE, "", model_dir=str(tmp_path / "not-on-this-node"),
                          store_url=s3_store)
    suites = [Suite("main", ROWS[:2], ["candidate"])]
    runs = run_on_cluster(machine_b.project, machine_b.store.root, [elsewhere], suites,
                          Generation(max_new_tokens=4), repeats=1, gpus=0, cpus=1, run_name="elsewhere")
    assert len(runs["main"]["candidate"][0].outputs) == 2
    assert any(node_cache_dir().rglob(f"objects/{model_fingerprint}/model/config.json"))
