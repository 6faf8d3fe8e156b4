"""The Ray cluster the engine runs on.

Locally the engine starts a *persistent* head with `ray start --head` in a subprocess, so
that Serve deployments outlive the `llmops` process that created them; `llmops down`
stops it. Everything about that head lives under `<state_dir>/ray/`:

    cluster.json   address, ports and temp dir of the running head
    auth_token     the token-auth secret (0600), shared by the head and every driver

Ray 2.60 enables token auth for local clusters. `ray start` only turns it on when it
finds a token, and `ray.init(address=...)` never turns it on by itself, so the engine
sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<state_dir>/ray/auth_token for both
sides. With RAY_ADDRESS (or `ray.address` in llmops.yaml) the engine uses that cluster
as-is and leaves its authentication to the environment.

Ray is imported only inside functions: the CLI imports this module for `llmops down`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import ClusterError
from .project import Project

START_TIMEOUT_S = 180
DASHBOARD_WAIT_S = 90

# The address this process passed to ray.init (Ray reports the node IP instead of 127.0.0.1).
_connected_address: str | None = None


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    dashboard_url: str | None
    started: bool  # True when this call started the head


# state files ---------------------------------------------------------------
def _ray_dir(project: Project) -> Path:
    path = project.state_dir / "ray"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_file(project: Project) -> Path:
    return _ray_dir(project) / "cluster.json"


def _read_state(project: Project) -> dict | None:
    try:
        return json.loads(_state_file(project).read_text())
    except (OSError, ValueError):
        return None


def _temp_dir_for(project: Project) -> Path:
    # Ray puts unix sockets under its temp dir and their paths must stay short
    # (108 bytes), so the temp dir is a short /tmp path derived from the state dir.
    digest = hashlib.sha256(str(project.state_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"llmops-ray-{digest}"


# authentication --------------------------------------------------------------
def token_path(project: Project) -> Path:
    """The auth token file of the local head (created on first use, mode 0600)."""
    path = _ray_dir(project) / "auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def auth_env(project: Project) -> dict[str, str]:
    """Environment a process needs to talk to the local head (names a file, holds no secret)."""
    if project.ray_address():
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path(project))}


def dashboard_headers(project: Project) -> dict[str, str]:
    """HTTP headers for the dashboard REST API (Serve's REST API lives there)."""
    if project.ray_address():
        token = os.environ.get("RAY_AUTH_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}
    return {"Authorization": f"Bearer {token_path(project).read_text().strip()}"}


# liveness --------------------------------------------------------------------
def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(state: dict) -> bool:
    host, port = state["address"].rsplit(":", 1)
    dashboard = urlparse(state["dashboard_url"])
    return (
        Path(state["temp_dir"], "session_latest").exists()
        and _port_open(host, int(port))
        and _port_open(dashboard.hostname, dashboard.port)
    )


def _dashboard_ready(url: str, headers: dict[str, str]) -> bool:
    import urllib.request

    request = urllib.request.Request(f"{url}/api/version", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# public API --------------------------------------------------------------------
def ensure_cluster(project: Project) -> ClusterInfo:
    """The cluster to run on: RAY_ADDRESS / ray.address, else the (started or reused) local head."""
    external = project.ray_address()
    if external:
        return ClusterInfo(address=external, dashboard_url=_external_dashboard(external), started=False)

    from filelock import FileLock

    # Two concurrent `llmops` processes must not start two heads for one project.
    with FileLock(str(_ray_dir(project) / "start.lock"), timeout=START_TIMEOUT_S + DASHBOARD_WAIT_S):
        state = _read_state(project)
        if state and _alive(state):
            return ClusterInfo(address=state["address"], dashboard_url=state["dashboard_url"], started=False)
        if state:  # stale record of a head that died: clean its leftovers first
            _kill_head_processes(Path(state["temp_dir"]))
        state = _start_head(project)
        return ClusterInfo(address=state["address"], dashboard_url=state["dashboard_url"], started=True)


def connect(project: Project) -> ClusterInfo:
    """ensure_cluster + ray.init(address=...) in this process; idempotent."""
    info = ensure_cluster(project)
    os.environ.update(auth_env(project))
    import ray

    global _connected_address
    if ray.is_initialized():
        if _connected_address == info.address:
            return info
        ray.shutdown()  # connected elsewhere (another project, or a bare ray.init)
    _require_reachable(info.address)
    _refresh_ray_auth_config()
    try:
        ray.init(
            address=info.address,
            logging_level="WARNING",
            # Progress comes through the engine's own channel; worker chatter stays in Ray's logs.
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    # Nothing the engine runs on Ray may reach the model hub.
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                    # Ray's own helpers (e.g. Train's placement-group cleaner) look the
                    # cluster up by address; with several local clusters "auto" is ambiguous.
                    "RAY_ADDRESS": info.address,
                }
            },
        )
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, AuthenticationError...
        raise ClusterError(
            f"cannot connect to the Ray cluster at {info.address}: {exc}. "
            "Check RAY_ADDRESS, or run `llmops down` and retry to restart the local head."
        ) from exc
    _connected_address = info.address
    return info


def stop_local(project: Project) -> bool:
    """Stop this project's local head (and only it). False if none was recorded."""
    state = _read_state(project)
    if state is None:
        return False
    global _connected_address
    if _connected_address == state["address"]:
        import ray

        ray.shutdown()  # a driver whose head disappears under it aborts the process
        _connected_address = None
    killed = _kill_head_processes(Path(state["temp_dir"]))
    _state_file(project).unlink(missing_ok=True)
    shutil.rmtree(state["temp_dir"], ignore_errors=True)  # sessions and logs of the stopped head
    return killed > 0


# internals ---------------------------------------------------------------------
def _external_dashboard(address: str) -> str | None:
    if os.environ.get("RAY_DASHBOARD_URL"):
        return os.environ["RAY_DASHBOARD_URL"]
    host = urlparse(address if "://" in address else f"ray://{address}").hostname
    return f"http://{host}:8265" if host else None


def _require_reachable(address: str) -> None:
    # ray.init retries an unreachable GCS for minutes; fail fast with a clear message instead.
    if "://" in address or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    if port.isdigit() and not _port_open(host, int(port), timeout=5):
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: nothing listens there. "
            "Check RAY_ADDRESS / ray.address, or unset it to use a local head."
        )


def _refresh_ray_auth_config() -> None:
    # Ray caches its config (auth mode included) on first use in a process; reload it so
    # the environment set above applies even when ray was already imported.
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


def _start_head(project: Project) -> dict:
    temp_dir = _temp_dir_for(project)
    temp_dir.mkdir(parents=True, exist_ok=True)
    num_cpus = project.settings.ray.num_cpus or os.cpu_count() or 1
    ports = {name: _free_port() for name in ("gcs", "dashboard", "agent", "client")}
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start", "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={ports['gcs']}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports['dashboard']}",
        # Fixed defaults (52365, 10001) would collide with any other local Ray cluster.
        f"--dashboard-agent-listen-port={ports['agent']}",
        f"--ray-client-server-port={ports['client']}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--log-style=record",
    ]
    env = {**os.environ, **auth_env(project), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _kill_head_processes(temp_dir)
        raise ClusterError(f"could not start a local Ray head: {exc}") from exc
    if result.returncode != 0:
        _kill_head_processes(temp_dir)
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ClusterError(f"`ray start --head` failed (exit {result.returncode}):\n{tail}")

    state = {
        "address": f"127.0.0.1:{ports['gcs']}",
        "dashboard_url": f"http://127.0.0.1:{ports['dashboard']}",
        "temp_dir": str(temp_dir),
        "ports": ports,
        "num_cpus": num_cpus,
        "started_at": time.time(),
    }
    _wait_for_dashboard(project, state, temp_dir)
    _state_file(project).write_text(json.dumps(state, indent=2))
    return state


def _wait_for_dashboard(project: Project, state: dict, temp_dir: Path) -> None:
    headers = dashboard_headers(project)
    deadline = time.monotonic() + DASHBOARD_WAIT_S
    while time.monotonic() < deadline:
        if _dashboard_ready(state["dashboard_url"], headers):
            return
        time.sleep(0.5)
    _kill_head_processes(temp_dir)
    raise ClusterError(
        f"the local Ray head started but its dashboard at {state['dashboard_url']} never answered; "
        f"see the logs under {temp_dir}/session_latest/logs"
    )


def _kill_head_processes(temp_dir: Path, grace_s: float = 10) -> int:
    """Terminate the processes of the head that uses `temp_dir` (they all name it on their
    command line), plus their children. `ray stop` would kill every Ray on the machine."""
    import psutil

    marker = str(temp_dir)
    targets: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(marker in part for part in proc.info["cmdline"] or ()):
                targets[proc.pid] = proc
                for child in proc.children(recursive=True):
                    targets[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = [p for p in targets.values() if p.pid != os.getpid()]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)
