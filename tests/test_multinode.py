"""More than one node, for real: `llmops apply` against a two-node Ray cluster whose head and
worker node live in separate network namespaces (tests/plugins/netns_cluster.py), with the
artifact store on an S3 server. Every command runs through the CLI in the head namespace.

- a TuningJob asking for the worker node's custom resource trains there;
- a Deployment asking for it gets a replica there, which fetches the model from the store;
- the worker node killed during training: the apply fails cleanly, the next one (node back)
  resumes from the checkpoint in the store;
- `workers: 2` data-parallel training across both nodes gives the same loss curve shape as one worker.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_project
from tests.plugins.netns_cluster import DASHBOARD_PORT, NetnsCluster, store_fs

pytestmark = pytest.mark.slow
TINY_DEMO = Path(__file__).resolve().parent / "fixtures" / "tiny_demo"

STEPS = 12
SAVE_EVERY = 2
# Small and fast on two shared cores: plain LoRA on the builtin random-init model, which learns
# only with its embeddings and head trained in full (as in the tiny demo).
TRAINING = {"max_steps": STEPS, "learning_rate": 3.0e-3, "batch_size": 8, "max_seq_len": 192,
            "save_every_steps": SAVE_EVERY, "seed": 42, "lr_scheduler": "constant"}
ON_WORKER_NODE = {"llmops_worker_node": 1}
ONE_PER_NODE = {"llmops_node": 1}


def tuning_spec(custom: dict, workers: int = 1, **training) -> str:
    spec = {
        "base_model": "builtin:tiny-llama", "dataset": "tickets", "prompt": "support-answer", "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                 "modules_to_save": ["embed_tokens", "lm_head"]},
        "training": {**TRAINING, **training},
        "resources": {"workers": workers, "cpus_per_worker": 1, "custom": custom},
    }
    return yaml.safe_dump({"apiVersion": "llmops/v1", "kind": "TuningJob", "metadata": {"name": "tuned"}, "spec": spec})


DATASET = """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: tickets}
spec:
  source: {path: data/tickets.jsonl}
  columns: {instruction: question, input: context, output: answer}
  split: {eval_fraction: 0.1, seed: 42}
"""

DEPLOYMENT = f"""
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: api}}
spec:
  model: tuned
  prompt: support-answer
  gate: null
  auth: none
  limits: {{max_new_tokens: 8}}
  resources: {{custom: {json.dumps(ON_WORKER_NODE)}}}
"""


def make_project(root: Path, store_url: str, tuning: str) -> Path:
    specs = {"prompt.yaml": (TINY_DEMO / "prompt.yaml").read_text(), "dataset.yaml": DATASET, "tuning.yaml": tuning}
    write_project(root, specs, settings=f"spec_dirs: [specs]\nartifact_store: {store_url}\n")
    from llmops_engine.data.demo import generate

    rows = generate()[:160]
    (root / "data").mkdir()
    (root / "data" / "tickets.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def apply(cluster: NetnsCluster, root: Path, *args: str, **kwargs) -> str:
    started = time.monotonic()
    code, output = cluster.llmops(root, "apply", *args, **kwargs)
    print(f"\n--- llmops apply {' '.join(args)}: exit {code} in {time.monotonic() - started:.0f} s\n{output[-3000:]}")
    assert code == 0, output[-4000:]
    return output


def record(cluster: NetnsCluster, store_url: str, key: str) -> dict:
    kind, name = key.split("/")
    return json.loads(store_fs(cluster).cat_file(f"{store_url.removeprefix('s3://')}/refs/{kind}/{name}.json"))


def published(cluster: NetnsCluster, store_url: str, key: str, name: str) -> dict:
    """A JSON file of the object the record of `key` points to, read from the store."""
    fingerprint = record(cluster, store_url, key)["fingerprint"]
    return json.loads(store_fs(cluster).cat_file(f"{store_url.removeprefix('s3://')}/objects/{fingerprint}/{name}"))


def losses(metrics: dict) -> list[float]:
    return [loss for _, loss in metrics["loss_per_step"]]


# a: scheduled on the worker node by its custom resource ----------------------------------------
@pytest.fixture(scope="module")
def one_worker(netns_cluster, tmp_path_factory):
    """The project trained with one worker on the worker node; its metrics as they were then (c retrains it)."""
    bucket = f"llmops-one-{time.time_ns() % 10**9}"
    store_fs(netns_cluster).mkdir(bucket)
    store_url = f"s3://{bucket}/store"
    root = make_project(tmp_path_factory.mktemp("one-worker"), store_url, tuning_spec(ON_WORKER_NODE))
    started = time.monotonic()
    output = apply(netns_cluster, root)
    seconds = time.monotonic() - started
    metrics = published(netns_cluster, store_url, "TuningJob/tuned", "metrics.json")
    return {"root": root, "store": store_url, "output": output, "seconds": seconds, "metrics": metrics}


def test_a_tuning_job_asking_for_the_worker_nodes_resource_trains_there(netns_cluster, one_worker):
    metrics = one_worker["metrics"]
    assert metrics["nodes"] == [netns_cluster.worker.ip]
    assert metrics["steps"] == STEPS and metrics["final_loss"] < metrics["initial_loss"]
    # The worker node resolved the base model itself: the apply's copy was in another mount namespace.
    assert list(netns_cluster.worker.cache_dir.rglob("config.json"))
    print(f"one worker: {STEPS} steps, loss {metrics['initial_loss']} -> {metrics['final_loss']}, "
          f"train {metrics['train_seconds']} s, apply {one_worker['seconds']:.0f} s")


# b: a replica on the worker node, fetching its model from the store ------------------------------
def chat(cluster: NetnsCluster, port: int = 8000) -> tuple[int, dict]:
    """POST a chat request to the Serve endpoint on the head's loopback (from the head namespace)."""
    code = (
        "import json, sys, urllib.request, urllib.error\n"
        "body = json.dumps({'model': 'api', 'max_tokens': 8,"
        " 'messages': [{'role': 'user', 'content': 'How do I reset my password?'}]}).encode()\n"
        f"request = urllib.request.Request('http://127.0.0.1:{port}/v1/chat/completions', body,"
        " {'Content-Type': 'application/json'})\n"
        "try:\n"
        "    with urllib.request.urlopen(request, timeout=120) as response:\n"
        "        print(json.dumps([response.status, json.loads(response.read())]))\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(json.dumps([error.code, {'error': error.read().decode(errors='replace')}]))\n"
    )
    result = cluster.in_head(sys.executable, "-c", code, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    status, body = json.loads(result.stdout.strip().splitlines()[-1])
    return status, body


def replica_nodes(cluster: NetnsCluster, app: str) -> dict[str, list[str]]:
    """Node IP of every running replica of each deployment of `app`, from Serve's REST API."""
    request = urllib.request.Request(f"http://{cluster.head.ip}:{DASHBOARD_PORT}/api/serve/applications/",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        details = json.loads(response.read())
    deployments = details["applications"][app]["deployments"]
    return {name: [r["node_ip"] for r in d["replicas"] if r["state"] == "RUNNING"] for name, d in deployments.items()}


def test_b_a_replica_on_the_worker_node_serves_the_model_it_fetched_from_the_store(netns_cluster, one_worker):
    root, store_url = one_worker["root"], one_worker["store"]
    (root / "specs" / "deployment.yaml").write_text(DEPLOYMENT)
    try:
        apply(netns_cluster, root)
        status, body = chat(netns_cluster)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] is not None and body["usage"]["completion_tokens"] > 0
        fingerprint = record(netns_cluster, store_url, "TuningJob/tuned")["fingerprint"]
        slots = {name: ips for name, ips in replica_nodes(netns_cluster, "api").items() if ips and name != "ingress"}
        assert slots and all(ips == [netns_cluster.worker.ip] for ips in slots.values()), slots
        # Its only copy of the model is the one it fetched from the store into the worker node's cache.
        fetched = list(netns_cluster.worker.cache_dir.glob(f"store-cache/*/objects/{fingerprint}"))
        assert fetched and (fetched[0] / "adapter" / "adapter_config.json").is_file()
        assert not list(netns_cluster.head.cache_dir.glob(f"store-cache/*/objects/{fingerprint}"))
    finally:
        (root / "specs" / "deployment.yaml").unlink()
        netns_cluster.llmops(root, "apply", "--prune")  # frees the worker node for the next tests


# c: the worker node lost mid-training -----------------------------------------------------------
def registered_checkpoint_step(cluster: NetnsCluster, store_url: str, skip_runs: set[str]) -> int:
    """Latest step Ray Train has registered in the store for a run not in `skip_runs` (what a resume can see)."""
    fs, steps = store_fs(cluster), [0]
    for path in fs.glob(f"{store_url.removeprefix('s3://')}/ray_runs/*/checkpoint_manager_snapshot.json"):
        if path.split("/")[-2] in skip_runs:
            continue
        try:
            steps += [r["metrics"]["step"] for r in json.loads(fs.cat_file(path))["checkpoint_results"]]
        except (OSError, ValueError, KeyError):
            continue  # being rewritten
    return max(steps)


def test_c_a_lost_worker_node_fails_the_apply_and_the_next_one_resumes_from_the_store(netns_cluster, one_worker):
    root, store_url = one_worker["root"], one_worker["store"]
    good = record(netns_cluster, store_url, "TuningJob/tuned")
    earlier_runs = {path.split("/")[-1] for path in store_fs(netns_cluster).ls(f"{store_url[5:]}/ray_runs", detail=False)}
    kill_steps = 40
    (root / "specs" / "tuning.yaml").write_text(tuning_spec(ON_WORKER_NODE, max_steps=kill_steps))
    outcome: dict = {}
    applying = threading.Thread(target=lambda: outcome.update(zip(("code", "output"), netns_cluster.llmops(root, "apply"))))
    applying.start()
    deadline = time.monotonic() + 600
    while registered_checkpoint_step(netns_cluster, store_url, earlier_runs) == 0:
        assert applying.is_alive(), f"the apply ended before a checkpoint:\n{outcome.get('output', '')[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in the store within 600 s"
        time.sleep(1)
    netns_cluster.kill_worker()
    killed_after = registered_checkpoint_step(netns_cluster, store_url, earlier_runs)
    applying.join(timeout=600)
    assert not applying.is_alive(), "the apply did not end after its training node was lost"
    print(f"\n--- apply with the worker node killed after checkpoint {killed_after}: exit {outcome['code']}\n"
          f"{outcome['output'][-3000:]}")
    assert outcome["code"] == 1 and "TuningJob/tuned failed" in outcome["output"]
    assert "Traceback" not in outcome["output"]
    assert re.search(r"next apply[^.]*resum", outcome["output"])  # the error says what the next apply does
    # The record keeps the last good model (the 12-step job) and says the latest apply failed.
    kept = record(netns_cluster, store_url, "TuningJob/tuned")
    assert (kept["fingerprint"], kept["outputs"], kept["status"]) == (good["fingerprint"], good["outputs"], "failed")

    netns_cluster.start_worker()
    output = apply(netns_cluster, root)
    resumed = [int(line.rsplit(" ", 1)[1]) for line in output.splitlines() if "resumed from checkpoint at step" in line]
    assert resumed and resumed[0] >= killed_after > 0, resumed
    metrics = published(netns_cluster, store_url, "TuningJob/tuned", "metrics.json")
    assert metrics["resumed_from_step"] == resumed[0] and metrics["nodes"] == [netns_cluster.worker.ip]
    assert [step for step, _ in metrics["loss_per_step"]] == list(range(1, kill_steps + 1))  # history spans both runs
    assert record(netns_cluster, store_url, "TuningJob/tuned")["status"] == "ready"


# d: data-parallel across both nodes -------------------------------------------------------------
def correlation(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x, var_y = sum((x - mean_x) ** 2 for x in xs), sum((y - mean_y) ** 2 for y in ys)
    return cov / (var_x * var_y) ** 0.5


def test_d_two_data_parallel_workers_on_two_nodes_give_the_same_loss_curve_shape(netns_cluster, one_worker, tmp_path):
    bucket = f"llmops-dp-{time.time_ns() % 10**9}"
    store_fs(netns_cluster).mkdir(bucket)
    store_url = f"s3://{bucket}/store"
    root = make_project(tmp_path / "dp", store_url, tuning_spec(ONE_PER_NODE, workers=2))
    output = apply(netns_cluster, root)
    assert "2 worker(s) training" in output
    two = published(netns_cluster, store_url, "TuningJob/tuned", "metrics.json")
    one = one_worker["metrics"]
    assert sorted(two["nodes"]) == sorted([netns_cluster.head.ip, netns_cluster.worker.ip])

    single, parallel = losses(one), losses(two)
    assert len(single) == len(parallel) == STEPS
    r = correlation(single, parallel)
    print(f"\nloss per step, 1 worker: {[round(v, 3) for v in single]}\n"
          f"loss per step, 2 workers: {[round(v, 3) for v in parallel]}\n"
          f"correlation {r:.3f}; initial {one['initial_loss']} vs {two['initial_loss']}, "
          f"final {one['final_loss']} vs {two['final_loss']}")
    for curve in (one, two):
        assert curve["final_loss"] < 0.8 * curve["initial_loss"], curve["loss_per_step"]
    # Measured: correlation 0.996, first losses equal, last ones 3 % apart. Rank 0 logs the loss of
    # its half of a global batch twice the size: per-step noise differs, the curve's shape must not.
    assert r > 0.9
    assert abs(two["final_loss"] - one["final_loss"]) < 0.15 * one["final_loss"]


# a node whose only training worker is not rank 0 -------------------------------------------------
RANK_ONE_MATERIALIZES = """
import json, os, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=int(sys.argv[1]), world_size=2)
if dist.get_rank() == 1:
    from llmops_engine.models import resolve_base
    from llmops_engine.models.loaded import load_causal_lm
    base = resolve_base("builtin:tiny-llama", sys.argv[3])
    print(json.dumps([sorted(os.listdir(base.path)), type(load_causal_lm(base.path)).__name__]))
dist.barrier()
"""


def test_a_training_worker_of_rank_one_materializes_a_loadable_builtin_on_its_node(tmp_path):
    """Found on the two-node cluster: rank 1 alone on a node built the builtin there, and transformers
    (which saves checkpoints on rank 0 only) left it without config and weights."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_ONE_MATERIALIZES, str(rank), port, str(tmp_path / f"node{rank}")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[1][1][-3000:]
    files, model_class = json.loads(outputs[1][0].strip().splitlines()[-1])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files) and model_class == "LlamaForCausalLM"
