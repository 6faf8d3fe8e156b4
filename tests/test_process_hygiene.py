"""Process hygiene of the local Ray head (issue 11 item 5, issue 12 "Ray and processes").

Everything here runs real processes and reads the truth from /proc, not from the engine's
own bookkeeping: a project's Ray processes are those whose environment names the project's
token file, or whose command line names the head's temp root, plus every process in their
sessions and below them. Other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmops_engine import headprocs, raycluster
from llmops_engine.errors import ClusterError
from llmops_engine.project import Project, ProjectSettings, load_project

from tests.conftest import REPO, SPECS, write_project

LLMOPS = str(Path(sys.executable).with_name("llmops"))
SENTINEL = "sk-hygiene-sentinel-6b1f0c"  # an API key that must never reach a Ray process
SPEC_SECRET = "AWS_SERVE_KEYS"  # a spec-named secret that looks like store credentials

DEPLOYMENT = f"""
    apiVersion: llmops/v1
    kind: Deployment
    metadata: {{name: api}}
    spec: {{model: t, prompt: p, gate: null, auth: {{api_keys_env: {SPEC_SECRET}}}}}
    """

START_HEAD = "import sys; from pathlib import Path; from llmops_engine import raycluster, project; " \
             "raycluster.ensure_cluster(project.load_project(Path(sys.argv[1])))"

# A driver that starts the head with secrets in its environment, runs a task and leaves a
# detached actor (a live worker) behind, and reports what the workers see of their environment.
DRIVER = """
import json, os, sys
from pathlib import Path
from llmops_engine import headprocs, raycluster
from llmops_engine.project import load_project
import ray
raycluster.connect(load_project(Path(sys.argv[1])))
@ray.remote
def task_env():
    return dict(os.environ)
@ray.remote
class Probe:
    def env(self):
        return dict(os.environ)
probe = Probe.options(name="hygiene-probe", namespace="hygiene", lifetime="detached").remote()
print(json.dumps([ray.get(task_env.remote()), ray.get(probe.env.remote())]))
"""


# /proc, read directly ----------------------------------------------------------------
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _stat_fields(pid: int) -> list[str]:
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return text[text.rfind(")") + 2:].split() if text else []


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def project_processes(project: Project, temp_root: str | None = None) -> dict[int, str]:
    """pid → command line of every live process of the project's Ray head(s)."""
    token = f"RAY_AUTH_TOKEN_PATH={project.state_dir / 'ray' / 'auth_token'}".encode()
    own_session = os.getsid(0)
    info: dict[int, tuple[bytes, int, int]] = {}  # pid → (cmdline, ppid, session)
    found: set[int] = set()
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if len(fields) < 4 or fields[0] == "Z" or pid == os.getpid():
            continue
        cmdline = _read(f"/proc/{pid}/cmdline")
        info[pid] = (cmdline, int(fields[1]), int(fields[3]))
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
        if token in environ or (temp_root and f"{temp_root}/".encode() in cmdline + b"/"):
            found.add(pid)
    sessions = {info[pid][2] for pid in found} - {own_session}
    found |= {pid for pid, (_, _, session) in info.items() if session in sessions}
    grew = True
    while grew:  # descendants
        children = {pid for pid, (_, ppid, _) in info.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return {pid: info[pid][0].replace(b"\0", b" ").decode(errors="replace") for pid in found}


def listening_sockets(pids) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state that one of `pids` holds."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    sockets = []
    for table in ("tcp", "tcp6"):
        for line in _read(f"/proc/net/{table}").decode().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # 0A: TCP_LISTEN
                address, port = fields[1].split(":")
                sockets.append((_decode_address(address), int(port, 16), owner[fields[9]]))
    return sockets


def _decode_address(hex_address: str) -> str:
    # /proc/net/tcp* print each 32-bit word of the address in host (little-endian) order.
    words = [bytes.fromhex(hex_address[i:i + 8])[::-1] for i in range(0, len(hex_address), 8)]
    return str(ipaddress.ip_address(b"".join(words)))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _record(project: Project) -> dict:
    return json.loads((project.state_dir / "ray" / "cluster.json").read_text())


def _down(project: Project) -> subprocess.CompletedProcess:
    return subprocess.run([LLMOPS, "down", "-C", str(project.root)], capture_output=True, text=True, timeout=120)


def _head_env() -> dict[str, str]:
    env = {**os.environ, "LLMOPS_API_KEYS": SENTINEL, SPEC_SECRET: SENTINEL}
    env.pop("RAY_ADDRESS", None)
    return env


def _new_project(root: Path) -> Project:
    write_project(root, {**SPECS, "deploy.yaml": DEPLOYMENT}, "spec_dirs: [specs]\nray: {num_cpus: 1}\n")
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    return load_project(root)


# pure decisions (fast) -----------------------------------------------------------------
@pytest.mark.parametrize("address, loopback", [
    ("0100007F", True),                               # 127.0.0.1
    ("00000000", False),                              # 0.0.0.0
    ("0202A8C0", False),                              # 192.168.2.2
    ("00000000000000000000000001000000", True),       # ::1
    ("00000000000000000000000000000000", False),      # ::
    ("0000000000000000FFFF00000100007F", True),       # ::ffff:127.0.0.1
    ("0000000000000000FFFF00000202A8C0", False),      # ::ffff:192.168.2.2
])
def test_listen_addresses_decode_and_classify(address, loopback):
    assert is_loopback(_decode_address(address)) is loopback


@pytest.mark.parametrize("name, value, forwarded", [
    ("PATH", "/usr/bin", True),
    ("HOME", "/home/u", True),
    ("AWS_SECRET_ACCESS_KEY", "store-credential", True),  # workers fetch from the store
    ("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json", True),
    ("LLMOPS_CACHE_DIR", "/cache", True),
    ("RAY_USAGE_STATS_ENABLED", "0", True),
    ("LLMOPS_API_KEYS", SENTINEL, False),  # the usual api_keys_env
    (SPEC_SECRET, SENTINEL, False),  # allow-listed prefix, but a spec names it a secret
    ("OPENAI_API_KEY", "sk-other", False),
    ("HF_TOKEN", "hf_x", False),  # workers are offline
    ("RAY_AUTH_TOKEN", "other-cluster-token", False),  # the local head has its own
    ("RAY_ADDRESS", "10.0.0.1:6379", False),
])
def test_the_head_environment_is_an_allowlist(project_root, monkeypatch, name, value, forwarded):
    (project_root / "specs" / "deploy.yaml").write_text(textwrap.dedent(DEPLOYMENT).lstrip())
    monkeypatch.setenv(name, value)
    env = raycluster.head_environment(Project(project_root, ProjectSettings()), Path("/tmp/llmops-ray-x"))
    assert (env.get(name) == value) is forwarded
    assert env[headprocs.HEAD_MARKER_ENV] == "/tmp/llmops-ray-x"
    assert env[raycluster.LOCAL_NODE_ENV] == "0"  # keeps Ray's node IP, hence its ports, on 127.0.0.1


@pytest.mark.parametrize("make, private", [
    (lambda p: p.mkdir(mode=0o700), True),
    (lambda p: (p.mkdir(), p.chmod(0o777)), False),
    (lambda p: (p.mkdir(), p.chmod(0o750)), False),
    (lambda p: ((p.parent / "real").mkdir(mode=0o700), p.symlink_to(p.parent / "real")), False),
    (lambda p: p.write_text("x"), False),
    (lambda p: None, False),
])
def test_only_a_private_directory_of_ours_is_reused(tmp_path, make, private):
    path = tmp_path / "root"
    make(path)
    assert raycluster._is_private_dir(path) is private


@pytest.mark.parametrize(
    "record,trusted",
    [
        ({"temp_root": "{tmp}/llmops-ray-0123abcd", "temp_dir": "{tmp}/llmops-ray-0123abcd/r"}, True),
        ({"temp_dir": "{tmp}/llmops-ray-0123456789"}, True),  # a record from before the private root
        ({"temp_root": "{home}", "temp_dir": "{home}/r"}, False),  # planted: down would kill and remove it
        ({"temp_root": "{tmp}/llmops-ray-0123abcd", "temp_dir": "/etc"}, False),
        ({"temp_root": "{tmp}/other", "temp_dir": "{tmp}/other/r"}, False),
        ({"temp_dir": 5}, False),
    ],
)
def test_only_a_head_record_of_our_shape_is_trusted(project_root, record, trusted):
    import tempfile

    values = {"tmp": tempfile.gettempdir(), "home": str(Path.home())}
    state = {k: v.format(**values) if isinstance(v, str) else v for k, v in record.items()}
    project = load_project(project_root)
    (project.state_dir / "ray").mkdir(parents=True, exist_ok=True)
    (project.state_dir / "ray" / "cluster.json").write_text(json.dumps(state))
    assert (raycluster._read_state(project) is not None) == trusted


def test_a_pre_created_temp_root_is_refused(tmp_path):
    planted = tmp_path / "llmops-ray-planted"
    planted.mkdir(mode=0o777)
    with pytest.raises(ClusterError, match="cannot create the Ray temp directory"):
        raycluster._create_private_dir(planted)


def test_stopping_a_head_stops_its_session_and_nothing_else(tmp_path):
    """A marked process with a marked child, an orphan of its session that shows no marker
    (as Ray's retitled workers appear in /proc), and a process of another head that must survive."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    tree = "(env -i sleep 60 &); sleep 60"  # the subshell exits: its sleep is re-parented
    head = subprocess.Popen(["sh", "-c", tree], env={**os.environ, headprocs.HEAD_MARKER_ENV: str(ours)},
                            start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, headprocs.HEAD_MARKER_ENV: str(theirs)},
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while len(headprocs.head_processes(ours)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = {proc.pid for proc in headprocs.head_processes(ours)}
        assert head.pid in members and len(members) == 3 and other.pid not in members
        assert headprocs.stop_head_processes(ours) == 3
        assert head.wait(timeout=5) is not None and headprocs.head_processes(ours) == []
        assert other.poll() is None
    finally:
        for proc in (head, other):
            proc.kill()
            proc.wait()


# a live head (slow) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_head(tmp_path_factory):
    """A head started by a driver whose environment holds API keys; one detached actor runs on it."""
    project = _new_project(tmp_path_factory.mktemp("hygiene") / "proj")
    result = subprocess.run([sys.executable, "-c", DRIVER, str(project.root)], env=_head_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        yield project, json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        _down(project)


@pytest.mark.slow
def test_no_ray_process_holds_an_api_key(live_head):
    project, worker_envs = live_head
    processes = project_processes(project, _record(project)["temp_root"])
    names = " ".join(processes.values())
    assert "gcs_server" in names and "raylet" in names  # the scan sees the head
    for pid, cmdline in processes.items():
        assert SENTINEL.encode() not in _read(f"/proc/{pid}/environ"), cmdline
        assert SENTINEL not in cmdline
    # Workers retitle themselves, which blanks /proc/<pid>/environ: ask them directly.
    for env in worker_envs:
        assert env.get("RAY_AUTH_MODE") == "token"  # a real worker environment
        assert SENTINEL not in json.dumps(env)


@pytest.mark.slow
def test_every_ray_port_listens_on_loopback_only(live_head):
    project, _ = live_head
    record = _record(project)
    processes = project_processes(project, record["temp_root"])
    sockets = listening_sockets(processes)
    ports = {port for _, port, _ in sockets}
    assert {record["ports"]["gcs"], record["ports"]["dashboard"], record["ports"]["client"]} <= ports
    assert len({pid for _, _, pid in sockets}) >= 5  # gcs, raylet, dashboard, agents, the actor's worker
    exposed = [(address, port, processes[pid][:80]) for address, port, pid in sockets if not is_loopback(address)]
    assert exposed == []


@pytest.mark.slow
def test_the_temp_root_is_private_and_unpredictable(live_head):
    project, _ = live_head
    record = _record(project)
    root = Path(record["temp_root"])
    info = root.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert Path(record["temp_dir"]).parent == root  # what Ray opens up to 0777 sits inside it
    assert re.fullmatch(r"llmops-ray-[0-9a-f]{8}", root.name)  # random, not derived from the project


@pytest.mark.slow
def test_down_stops_every_process_of_the_head(live_head):
    project, _ = live_head
    root = _record(project)["temp_root"]
    assert project_processes(project, root)
    result = _down(project)
    assert result.returncode == 0 and "stopped the local Ray head" in result.stdout
    assert project_processes(project, root) == {}
    assert not Path(root).exists()


# SIGKILL during head start (slow) ------------------------------------------------------
def _start_and_kill(project: Project, ready) -> None:
    """Start the head in a child process and SIGKILL it once `ready(processes)` holds."""
    child = subprocess.Popen([sys.executable, "-c", START_HEAD, str(project.root)], env=_head_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready(project_processes(project)):
            assert child.poll() is None and time.monotonic() < deadline, "the head never got that far"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _record(project)["status"] == "starting"  # killed mid-start, not after


KILL_MOMENTS = {
    "ray start just spawned": lambda procs: any(" start --head" in cmd for cmd in procs.values()),
    "gcs_server up": lambda procs: any("gcs_server" in cmd for cmd in procs.values()),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", sorted(KILL_MOMENTS))
def test_down_after_a_killed_start_leaves_no_process(tmp_path, moment):
    project = _new_project(tmp_path / "proj")
    _start_and_kill(project, KILL_MOMENTS[moment])
    root = _record(project)["temp_root"]
    assert _down(project).returncode == 0
    assert project_processes(project, root) == {}
    time.sleep(2)  # a `ray start` that survived would still be spawning
    assert project_processes(project, root) == {}
    assert not Path(root).exists() and not (project.state_dir / "ray" / "cluster.json").exists()


@pytest.mark.slow
def test_the_next_apply_clears_a_killed_start(tmp_path):
    project = _new_project(tmp_path / "proj")
    _start_and_kill(project, KILL_MOMENTS["gcs_server up"])
    killed_root = _record(project)["temp_root"]
    killed_sessions = {_session(pid) for pid in project_processes(project)}
    restart = subprocess.run([sys.executable, "-c", START_HEAD, str(project.root)], env=_head_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr[-3000:]
    record = _record(project)
    try:
        assert record["status"] == "running" and record["temp_root"] != killed_root
        leftovers = [pid for pid in project_processes(project) if _session(pid) in killed_sessions]
        assert leftovers == [] and not Path(killed_root).exists()
    finally:
        assert _down(project).returncode == 0
    assert project_processes(project, record["temp_root"]) == {}


def _session(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[3]) if len(fields) > 3 else -1
