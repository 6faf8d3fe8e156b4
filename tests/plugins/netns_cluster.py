"""A real two-node Ray cluster on one machine: the head and a worker node in network namespaces.

Multi-node behaviour (scheduling by custom resource, a replica fetching its model from the
store, a node lost mid-training, data-parallel training across nodes) cannot be shown on the
single local head the other tests use. Here each node has a network stack of its own:

    root namespace   bridge  10.213.X.254   the S3 server (moto), reachable from both nodes
    head namespace   eth     10.213.X.1     `ray start --head` (GCS, dashboard), every `llmops` command
    worker namespace eth     10.213.X.2     `ray start --address ...` declaring llmops_worker_node: 4

The nodes share the filesystem, so each gets a cache directory (LLMOPS_CACHE_DIR) of its own, and
every `llmops` command runs in a private mount namespace where the apply's own store cache is an
empty tmpfs: a node can only have an object it fetched from the store itself, as on separate
machines. The cluster uses token auth the way the engine's local head does (raycluster.py); unlike
that head it is multi-node (raycluster.LOCAL_NODE_ENV stays unset).

Creating namespaces needs root and `ip netns`; without them the fixture skips with the reason.
Everything it creates is removed at teardown, whatever happened: every process in its namespaces
(all started by the fixture), the namespaces, the veth pairs, the bridge, its temp directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmops_engine.raycluster import LOCAL_NODE_ENV

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GCS_PORT = 6379  # each node has a network stack of its own: Ray's default ports collide with nothing
DASHBOARD_PORT = 8265  # where the engine looks for an external cluster's dashboard (raycluster._external_dashboard)
NODE_CPUS = 2  # logical CPUs per node: one training worker plus Serve replicas
OBJECT_STORE_BYTES = 200 * 2**20  # two nodes' object stores share /dev/shm with the rest of the machine
# Every node declares llmops_node: 1 (a job asking it per worker gets one worker per node);
# only the worker node declares llmops_worker_node (a job asking it runs there).
HEAD_RESOURCES = {"llmops_node": 1}
WORKER_RESOURCES = {"llmops_node": 1, "llmops_worker_node": 4}
START_TIMEOUT_S = 120
S3_SECRET = "netns-s3-secret-never-printed-4c1d"


@dataclass
class Node:
    namespace: str
    ip: str
    temp_dir: Path
    cache_dir: Path  # this node's LLMOPS_CACHE_DIR
    process: subprocess.Popen | None = None


@dataclass
class NetnsCluster:
    """The running cluster, and helpers to drive it from the head namespace."""

    subnet: str  # "10.213.X"
    head: Node
    worker: Node
    work_dir: Path
    token: str
    token_file: Path
    s3_env: dict[str, str]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    def client_env(self) -> dict[str, str]:
        """The environment of an `llmops` command: this cluster, its token, the S3 store's credentials."""
        env = _base_env()
        env.update(self.s3_env)
        env.update({
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_AUTH_TOKEN": self.token,  # the dashboard REST API (Serve deploys) reads it from here
            "LLMOPS_CACHE_DIR": str(self.work_dir / "client-cache"),
        })
        return env

    def llmops(self, project: Path, *args: str, timeout: float = 600) -> tuple[int, str]:
        """Run `llmops ARGS` in the head namespace, as a fresh machine would (its store cache private
        and empty). Returns (exit code, stdout+stderr); killed after `timeout` seconds."""
        cache = project / ".llmops" / "store-cache"
        cache.mkdir(parents=True, exist_ok=True)
        script = 'mount -t tmpfs -o size=4g,mode=0700 llmops-apply-cache "$0" && cd "$1" && shift && exec "$@"'
        command = ["ip", "netns", "exec", self.head.namespace, "unshare", "--mount", "--propagation", "private",
                   "sh", "-c", script, str(cache), str(project), str(BIN / "llmops"), *args]
        process = subprocess.Popen(command, env=self.client_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: list[str] = []

        def read() -> None:
            for line in process.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            lines.append(f"\n[killed after {timeout:.0f} s]\n")
        reader.join(timeout=10)
        return process.returncode, "".join(lines)

    def in_head(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command in the head namespace (e.g. an HTTP client for the loopback Serve endpoint)."""
        return subprocess.run(["ip", "netns", "exec", self.head.namespace, *command], env=_base_env(),
                              capture_output=True, text=True, timeout=timeout)

    def kill_worker(self) -> None:
        """The worker node dies at once, as a lost machine would: SIGKILL to every process in its namespace."""
        _kill_node(self.worker)

    def start_worker(self) -> None:
        """A worker node (again) in the worker namespace; returns once the head counts it alive."""
        known = _alive_nodes(self)
        _start_node(self, self.worker, head=False)
        _wait_for_nodes(self, alive=2, new_at=self.worker.ip, known=known)


# the fixture ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def netns_cluster(request, tmp_path_factory):
    """A two-node cluster (module scope: starting it costs ~20 s); skips where it cannot be built.
    When a test using it failed, the nodes' logs are kept (the path is printed)."""
    _require_namespaces()
    failed_before = request.session.testsfailed
    tag = secrets.token_hex(3)
    subnet = _free_subnet()
    work_dir = Path(tempfile.mkdtemp(prefix=f"llnet-{tag}-"))  # short: Ray's socket paths must fit 107 bytes
    os.chmod(work_dir, 0o700)
    cluster = None
    s3 = None
    created: list[tuple[str, str]] = []  # ("netns"|"link", name), in creation order
    try:
        head = Node(f"llmops-head-{tag}", f"{subnet}.1", work_dir / "h", work_dir / "head-cache")
        worker = Node(f"llmops-worker-{tag}", f"{subnet}.2", work_dir / "w", work_dir / "worker-cache")
        _build_network(tag, subnet, head, worker, created)
        s3, s3_env = _start_s3(f"{subnet}.254")
        token = secrets.token_hex(32)
        token_file = work_dir / "auth_token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token)
        cluster = NetnsCluster(subnet, head, worker, work_dir, token, token_file, s3_env)
        for node in (head, worker):
            node.temp_dir.mkdir()
            node.cache_dir.mkdir()
        _start_node(cluster, head, head=True)
        _require_forwarding(cluster)
        _start_node(cluster, worker, head=False)
        _wait_for_nodes(cluster, alive=2)
        yield cluster
    finally:
        if cluster is not None:
            for node in (cluster.worker, cluster.head):
                _kill_node(node)
        else:
            for kind, name in created:
                if kind == "netns":
                    _kill_namespace(name)
        for kind, name in reversed(created):
            _ip(*(("netns", "del", name) if kind == "netns" else ("link", "del", name)), check=False)
        if s3 is not None:
            s3.stop()
        if request.session.testsfailed > failed_before:
            _keep_logs(work_dir, tmp_path_factory.mktemp("netns-cluster-logs"))
        shutil.rmtree(work_dir, ignore_errors=True)


def store_fs(cluster: NetnsCluster):
    """The S3 server as seen from the test process (root namespace, through the bridge)."""
    import s3fs

    return s3fs.S3FileSystem(key=cluster.s3_env["AWS_ACCESS_KEY_ID"], secret=S3_SECRET,
                             endpoint_url=cluster.s3_env["AWS_ENDPOINT_URL"], skip_instance_cache=True)


# preconditions --------------------------------------------------------------------------------
def _require_namespaces() -> None:
    if not (importlib.util.find_spec("s3fs") and importlib.util.find_spec("moto")):
        pytest.skip("s3fs and moto[server] (the test extra) are not installed")
    if sys.platform != "linux":
        pytest.skip("network namespaces are a Linux feature")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (CI runs this test as root)")
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed (iproute2 / util-linux)")
    probe = f"llmops-probe-{secrets.token_hex(3)}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {result.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


def _free_subnet() -> str:
    """A 10.213.X.0/24 no interface of this machine is on (parallel sessions pick different ones)."""
    taken = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for _ in range(50):
        subnet = f"10.213.{secrets.randbelow(250) + 1}"
        if f" {subnet}." not in taken:
            return subnet
    pytest.skip("no free 10.213.X.0/24 subnet for the test network")


# the network ------------------------------------------------------------------------------------
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def _build_network(tag: str, subnet: str, head: Node, worker: Node, created: list) -> None:
    bridge = f"llbr{tag}"  # interface names: at most 15 characters
    _ip("link", "add", bridge, "type", "bridge")
    created.append(("link", bridge))
    _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
    _ip("link", "set", bridge, "up")
    for letter, node in (("h", head), ("w", worker)):
        _ip("netns", "add", node.namespace)
        created.append(("netns", node.namespace))
        outside, inside = f"ll{letter}{tag}", f"ll{letter}{tag}p"
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        created.append(("link", outside))  # deleting one end deletes the pair
        _ip("link", "set", inside, "netns", node.namespace)
        _ip("link", "set", outside, "master", bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", node.namespace, "link", "set", "lo", "up")
        _ip("-n", node.namespace, "link", "set", inside, "name", "eth0")
        _ip("-n", node.namespace, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        _ip("-n", node.namespace, "link", "set", "eth0", "up")


def _require_forwarding(cluster: NetnsCluster) -> None:
    """The bridge may filter forwarded frames (bridge-nf-call-iptables and a firewall): the worker
    namespace must reach the head's GCS and the S3 server, or no node can join."""
    code = ("import socket, sys\nfor target in sys.argv[1:]:\n    host, port = target.rsplit(':', 1)\n"
            "    socket.create_connection((host, int(port)), timeout=5).close()")
    endpoint = cluster.s3_env["AWS_ENDPOINT_URL"].removeprefix("http://")
    probe = subprocess.run(["ip", "netns", "exec", cluster.worker.namespace, sys.executable, "-c", code,
                            cluster.address, endpoint], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the test network does not pass traffic from {cluster.worker.ip} to {cluster.address} "
                    f"and {endpoint} (a firewall on the bridge?): {probe.stderr.strip().splitlines()[-1:]}")


def _start_s3(bridge_ip: str):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:  # moto needs a port up front to bind a given address
        sock.bind((bridge_ip, 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address=bridge_ip, port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://{bridge_ip}:{port}", "AWS_ACCESS_KEY_ID": "llmops-netns",
           "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    return server, env


# the nodes ------------------------------------------------------------------------------------
def _base_env() -> dict[str, str]:
    """What every process of the test cluster inherits: the basics, offline model hub, no usage stats,
    and never this machine's own Ray settings (an address, or the local-only switch)."""
    keep = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "HF_HOME")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert LOCAL_NODE_ENV not in env
    return env


def _start_node(cluster: NetnsCluster, node: Node, head: bool) -> None:
    env = {**_base_env(), **cluster.s3_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(cluster.token_file),
           "LLMOPS_CACHE_DIR": str(node.cache_dir),
           # This machine's hostname resolves to 127.0.0.1 (/etc/hosts, shared by the namespaces), which
           # torch's gloo would use for data-parallel traffic: name the namespace's interface instead.
           "GLOO_SOCKET_IFNAME": "eth0"}
    common = [f"--node-ip-address={node.ip}", f"--num-cpus={NODE_CPUS}", f"--temp-dir={node.temp_dir}",
              f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats", "--log-style=record", "--block"]
    if head:
        role = ["--head", f"--port={GCS_PORT}", "--include-dashboard=true", f"--dashboard-host={node.ip}",
                f"--dashboard-port={DASHBOARD_PORT}", f"--resources={json.dumps(HEAD_RESOURCES)}"]
    else:
        role = [f"--address={cluster.address}", f"--resources={json.dumps(WORKER_RESOURCES)}"]
    log = (cluster.work_dir / f"{node.namespace}.log").open("a")
    # A session of its own: outside the test's process group; --block keeps `ray start` as the
    # group's leader, so the node is one process group the fixture owns.
    node.process = subprocess.Popen(["ip", "netns", "exec", node.namespace, str(BIN / "ray"), "start", *role, *common],
                                    env=env, cwd=cluster.work_dir, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    if head:
        _wait_for_port(cluster, node, DASHBOARD_PORT)


def _wait_for_port(cluster: NetnsCluster, node: Node, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"`ray start` in {node.namespace} exited {node.process.returncode}:\n{_log_tail(cluster, node)}")
        try:
            with socket.create_connection((node.ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing listened on {node.ip}:{port} within {START_TIMEOUT_S} s:\n{_log_tail(cluster, node)}")


def _wait_for_nodes(cluster: NetnsCluster, alive: int, new_at: str | None = None, known: dict | None = None) -> None:
    """Until the head's GCS counts `alive` live nodes, one of them at `new_at` with an id not in
    `known` (a restarted node, not the lost one the GCS may not have declared dead yet)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    nodes: dict[str, str] = {}
    while time.monotonic() < deadline:
        for node in (cluster.head, cluster.worker):
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"the Ray node in {node.namespace} exited:\n{_log_tail(cluster, node)}")
        nodes = _alive_nodes(cluster)
        fresh = new_at is None or any(ip == new_at and node_id not in (known or {}) for node_id, ip in nodes.items())
        if len(nodes) >= alive and fresh:
            return
        time.sleep(1)
    raise RuntimeError(f"{len(nodes)} of {alive} Ray nodes alive after {START_TIMEOUT_S} s:\n{_log_tail(cluster, cluster.worker)}")


def _alive_nodes(cluster: NetnsCluster) -> dict[str, str]:
    """{node id: node IP} of the nodes the head's GCS counts alive, from the dashboard's REST API
    ({} while it does not answer)."""
    import urllib.request

    request = urllib.request.Request(f"http://{cluster.head.ip}:{DASHBOARD_PORT}/nodes?view=summary",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            summary = json.loads(response.read())["data"]["summary"]
    except (OSError, ValueError, KeyError):
        return {}
    return {entry["raylet"]["nodeId"]: entry["raylet"]["nodeManagerAddress"]
            for entry in summary if (entry.get("raylet") or {}).get("state") == "ALIVE"}


def _log_tail(cluster: NetnsCluster, node: Node) -> str:
    path = cluster.work_dir / f"{node.namespace}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:]) if path.exists() else ""


def _keep_logs(work_dir: Path, target: Path) -> None:
    """The `ray start` output and Ray's session logs of both nodes, copied out before the work dir goes."""
    for path in work_dir.glob("*.log"):
        shutil.copy2(path, target / path.name)
    for letter in ("h", "w"):
        logs = work_dir / letter / "session_latest" / "logs"
        if logs.is_dir():
            shutil.copytree(logs, target / f"{letter}-logs", ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True)
    print(f"\nlogs of the two-node test cluster: {target}")


def _kill_node(node: Node) -> None:
    """SIGKILL the node's process group, then anything else left in its namespace (all of it ours)."""
    if node.process is not None and node.process.poll() is None:
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _kill_namespace(node.namespace)
    if node.process is not None:
        node.process.wait()
        node.process = None


def _kill_namespace(namespace: str) -> None:
    for _ in range(20):
        pids = [int(pid) for pid in _ip("netns", "pids", namespace, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
