"""The Ray cluster the engine runs on.

Locally the engine starts a *persistent* head with `ray start --head` in a subprocess, so
that Serve deployments outlive the `llmops` process that created them; `llmops down`
stops it. The head's bookkeeping lives under `<state_dir>/ray/`:

    cluster.json   status (starting/running), address, ports and temp dirs of the head
    auth_token     the token-auth secret (0600), shared by the head and every driver

Ray 2.60 enables token auth for local clusters. `ray start` only turns it on when it
finds a token, and `ray.init(address=...)` never turns it on by itself, so the engine
sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<state_dir>/ray/auth_token for both
sides. With RAY_ADDRESS (or `ray.address` in llmops.yaml) the engine uses that cluster
as-is and leaves its authentication to the environment.

Process hygiene of the local head:
- cluster.json is written *before* `ray start` runs; the head runs in a session of its own
  and its processes carry LLMOPS_RAY_HEAD=<its temp root> in their environment, so
  `llmops down` or the next apply finds and stops all of it, even after the starting
  process was SIGKILLed half-way.
- The head gets an allow-listed environment: deployment API keys and other secrets of the
  user's shell never reach gcs_server, raylet, workers or replicas.
- Its node IP stays 127.0.0.1, which is what makes Ray bind every internal port (GCS,
  raylet, workers, agents, metrics exporters, client server) to loopback.
- Its temp root is a fresh private directory (0700) with a random name; Ray chmods the temp
  dir it is given to 0777, so Ray gets a subdirectory of it.

Ray is imported only inside functions: the CLI imports this module for `llmops down`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlparse

from .errors import ClusterError, LLMOpsError, PlanError
from .headprocs import HEAD_MARKER_ENV, stop_head_processes
from .project import Project

START_TIMEOUT_S = 180
DASHBOARD_WAIT_S = 90


# What the head's processes may inherit from the user's environment: the basics a Python
# process needs, Ray's own settings, the model cache (offline), and what workers need to
# reach the artifact store. Everything else (API keys above all) stays out.
FORWARDED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "LLMOPS_CACHE_DIR", "LLMOPS_ARTIFACT_STORE",
    "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
})
FORWARDED_PREFIXES = ("LC_", "RAY_", "AWS_", "AZURE_STORAGE_", "FSSPEC_", "HF_", "TRANSFORMERS_", "CUDA_")
# Inside the forwarded prefixes but not for the head: the hub token (workers are offline),
# an external cluster's token and address (the local head has its own).
NEVER_FORWARDED = frozenset({"HF_TOKEN", "RAY_AUTH_TOKEN", "RAY_ADDRESS"})

# Ray's multi-node switch: on (the Linux default), Ray resolves 127.0.0.1 to the machine's
# address and binds its servers to all interfaces; the local head and its drivers turn it off.
LOCAL_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# The address this process passed to ray.init (Ray reports the node IP instead of 127.0.0.1).
_connected_address: str | None = None
# Ray's own value of the multi-node switch in this process, before connect() changed it.
_multi_node_default: bool | None = None


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
        state = json.loads(_state_file(project).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and _is_head_record(state) else None


def _is_head_record(state: dict) -> bool:
    """Only a record naming a temp root of the shape we create is trusted: `down` kills the
    processes under it and removes it, so a corrupted or planted record must not name
    anything else (a home directory, a shared folder)."""
    temp_dir, temp_root = state.get("temp_dir"), state.get("temp_root", state.get("temp_dir"))
    if not isinstance(temp_dir, str) or not isinstance(temp_root, str):
        return False
    root = Path(temp_root)
    shaped = root.parent == Path(tempfile.gettempdir()) and re.fullmatch(r"llmops-ray-[0-9a-f]{8,16}", root.name)
    return bool(shaped) and Path(temp_dir) in (root, root / "r")


def _write_state(project: Project, state: dict) -> None:
    # Atomic: a reader (or a SIGKILL) never sees half a record.
    path = _state_file(project)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=2))
    os.replace(partial, path)


def _temp_root(state: dict) -> Path:
    # Records written before the private temp root existed name only the temp dir.
    return Path(state.get("temp_root") or state["temp_dir"])


def _owned_dir(path: Path) -> bool:
    """A real directory (not a symlink) owned by this user."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _is_private_dir(path: Path) -> bool:
    """Ours alone: owned by this user and closed to everyone else."""
    return _owned_dir(path) and not path.lstat().st_mode & 0o077


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


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: every socket stays bound until all are chosen, so the
    kernel cannot hand the same port out twice (two Ray components on one port fail the start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(state: dict) -> bool:
    # A head whose start was cut off, or one in a temp dir that is not ours alone, is not reused.
    if state.get("status") != "running" or not _is_private_dir(_temp_root(state)):
        return False
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

    with _start_lock(project):
        state = _read_state(project)
        if state and _alive(state):
            return ClusterInfo(address=state["address"], dashboard_url=state["dashboard_url"], started=False)
        if state:  # a head that died, or whose start was cut off: clear its leftovers first
            _discard_head(project, state)
        state = _start_head(project)
        return ClusterInfo(address=state["address"], dashboard_url=state["dashboard_url"], started=True)


# CI runners are thrown away when their job ends, and a local head with them: a Deployment
# "applied" there would vanish seconds after a green run.
CI_MARKERS = ("CI", "GITHUB_ACTIONS")
LOCAL_IN_CI_OPT_IN = "LLMOPS_LOCAL_RAY_IN_CI"


def throwaway_deploy_refusal(deployments: list[str], ray_address: str | None, environ: Mapping[str, str]) -> str | None:
    """Why an apply must not run, or None: in CI, with no cluster configured, Deployments to
    create or update would go live on the runner's own local head (unless explicitly opted in)."""
    in_ci = any(environ.get(name, "").lower() not in ("", "0", "false") for name in CI_MARKERS)
    opted_in = environ.get(LOCAL_IN_CI_OPT_IN, "").lower() in ("1", "true", "yes")
    if not deployments or ray_address or not in_ci or opted_in:
        return None
    return (f"this apply runs in CI with no Ray cluster configured, so {', '.join(deployments)} would be deployed "
            "on a local Ray head on this runner and vanish when the job ends. Set RAY_ADDRESS (or ray.address in "
            "llmops.yaml) to the cluster that serves them, or, for a test pipeline that checks a throw-away "
            f"deployment on purpose, set {LOCAL_IN_CI_OPT_IN}=1.")


def connect(project: Project) -> ClusterInfo:
    """ensure_cluster + ray.init(address=...) in this process; idempotent."""
    info = ensure_cluster(project)
    os.environ.update(auth_env(project))
    import ray

    _resolve_localhost_as_loopback(project.ray_address() is None)
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
        raise ClusterError(connect_error(info.address, str(exc), ray.__version__)) from exc
    _connected_address = info.address
    return info


def connect_error(address: str, error: str, client_version: str) -> str:
    """What to tell a user whose `ray.init` failed, by what Ray said."""
    if "version mismatch" in error.lower():
        # Ray's own text names both sides' Ray and Python versions.
        said = " ".join(error.split())[:600]
        return (f"the Ray cluster at {address} runs another Ray or Python version than this llmops (Ray "
                f"{client_version}): {said} Install the cluster's versions here, or run the cluster on Ray "
                f"{client_version}; both sides must match.")
    return (f"cannot connect to the Ray cluster at {address}: {error}. "
            "Check RAY_ADDRESS, or run `llmops down` and retry to restart the local head.")


def stop_local(project: Project) -> bool:
    """Stop this project's local head (and only it), with every process it spawned.
    False if none was recorded or none of its processes was left."""
    if _read_state(project) is None:
        return False
    # Waits for a start in progress to finish, so no process can appear behind our back.
    with _start_lock(project):
        state = _read_state(project)
        if state is None:
            return False
        global _connected_address
        if _connected_address == state["address"]:
            import ray

            ray.shutdown()  # a driver whose head disappears under it aborts the process
            _connected_address = None
        return _discard_head(project, state) > 0


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


def _resolve_localhost_as_loopback(local: bool) -> None:
    # The local head listens on 127.0.0.1 only, but a driver with multi-node support on
    # rewrites the address 127.0.0.1 to the machine's own before dialing it. Ray reads the
    # switch from the environment once, at import, so the driver sets Ray's constant.
    from ray._private import ray_constants

    global _multi_node_default
    if _multi_node_default is None:
        _multi_node_default = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = _multi_node_default and not local


def _refresh_ray_auth_config() -> None:
    # Ray caches its config (auth mode included) on first use in a process; reload it so
    # the environment set above applies even when ray was already imported.
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


@contextmanager
def _start_lock(project: Project) -> Iterator[None]:
    """Two `llmops` processes must not start two heads for one project, nor stop one mid-start."""
    from filelock import FileLock, Timeout

    wait_s = START_TIMEOUT_S + DASHBOARD_WAIT_S
    lock = FileLock(str(_ray_dir(project) / "start.lock"))
    try:
        lock.acquire(timeout=wait_s)
    except Timeout as exc:
        raise ClusterError(
            f"another llmops process has been starting this project's Ray head for over {wait_s} s; "
            f"wait for it, or stop it and run `llmops down`"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _start_head(project: Project) -> dict:
    temp_root = Path(tempfile.gettempdir()) / f"llmops-ray-{secrets.token_hex(4)}"
    num_cpus = project.settings.ray.num_cpus or local_head_cpus()
    names = ("gcs", "dashboard", "agent", "client")
    ports = dict(zip(names, _free_ports(len(names))))
    state = {
        "status": "starting",
        "address": f"127.0.0.1:{ports['gcs']}",
        "dashboard_url": f"http://127.0.0.1:{ports['dashboard']}",
        "temp_root": str(temp_root),
        # Ray makes the temp dir it is given world-writable (0777); inside the private root
        # nobody else can reach it. Unix socket paths under it must stay within 108 bytes,
        # hence short names in /tmp.
        "temp_dir": str(temp_root / "r"),
        "ports": ports,
        "num_cpus": num_cpus,
        "started_at": time.time(),
    }
    # Recorded before anything exists, so that whatever happens next `down` knows what to stop.
    _write_state(project, state)
    try:
        _create_private_dir(temp_root)
        _run_ray_start(project, state)
        _wait_for_dashboard(project, state)
    except BaseException:  # Ctrl-C included: leave no half-started head behind
        _discard_head(project, state)
        raise
    state["status"] = "running"
    _write_state(project, state)
    return state


def check_fits(needs: dict[str, float], what: str, local: bool, remedy: str) -> None:
    """Fail fast when a Ray job or task can never be scheduled (Ray would wait forever): it needs more
    than the cluster has, or — on the local head, where nothing will free or add resources while
    apply waits (only live deployments' replicas hold any between applies) — more than is free now.
    A remote cluster may autoscale, so there only its size counts."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    for name, needed in needs.items():
        if not needed:
            continue
        if needed > total.get(name, 0):
            raise PlanError(f"resources: {what} needs {needed:g} {name} but the Ray cluster has "
                            f"{total.get(name, 0):g}. {remedy}, or run on a larger cluster (RAY_ADDRESS).")
        if local and needed > free.get(name, 0):
            raise PlanError(f"resources: {what} needs {needed:g} {name} but the local Ray head has only "
                            f"{free.get(name, 0):g} of its {total.get(name, 0):g} free (live deployments' model "
                            "replicas hold the rest). Raise ray.num_cpus in llmops.yaml (logical CPUs; replicas "
                            f"are idle between requests). {remedy}.")


def local_head_cpus() -> int:
    """Logical CPUs the local head advertises by default: twice the cores. Each Deployment's model
    slots reserve logical CPUs (serving/config.py REPLICA_CPUS) for as long as they are up, though
    they are idle between requests; with only the cores to give, a live deployment or two would
    leave a retrain on a laptop waiting forever for CPUs nothing is using. The OS shares the cores."""
    return 2 * (os.cpu_count() or 1)


def _create_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)  # fails on an existing path: never adopt a directory we did not make
    except OSError as exc:
        raise ClusterError(f"cannot create the Ray temp directory {path}: {exc}") from exc


def _run_ray_start(project: Project, state: dict) -> None:
    ports = state["ports"]
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
        f"--num-cpus={state['num_cpus']}",
        f"--temp-dir={state['temp_dir']}",
        "--disable-usage-stats",
        "--log-style=record",
    ]
    try:
        # A session of its own: Ctrl-C or a closed terminal of this `llmops` never reaches the head.
        result = subprocess.run(
            command, env=head_environment(project, Path(state["temp_root"])), capture_output=True, text=True,
            timeout=START_TIMEOUT_S, start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"could not start a local Ray head: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ClusterError(f"`ray start --head` failed (exit {result.returncode}):\n{tail}")


def head_environment(project: Project, temp_root: Path) -> dict[str, str]:
    """The whole environment of the local head's processes (an allowlist of the caller's)."""
    secret_names = spec_secret_names(project)
    env = {
        name: value for name, value in os.environ.items()
        if (name in FORWARDED_NAMES or name.startswith(FORWARDED_PREFIXES))
        and name not in NEVER_FORWARDED and name not in secret_names
    }
    env.update(auth_env(project))
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # With multi-node support on, `ray start` swaps 127.0.0.1 for the machine's address
        # and Ray then binds its gRPC servers and exporters to all interfaces. Off, the node
        # IP stays 127.0.0.1 and Ray binds each of them to loopback (and accepts no other
        # node, which a local head never has).
        LOCAL_NODE_ENV: "0",
        HEAD_MARKER_ENV: str(temp_root),
    })
    return env


def spec_secret_names(project: Project) -> set[str]:
    """Environment variables the project's specs name as secrets (e.g. Deployment API keys)."""

    try:
        resources = project.load_resources()
    except (LLMOpsError, OSError):
        return set()  # no loadable specs: the allowlist alone keeps the keys out
    return {name for resource in resources for name in resource.spec.secret_env()}


def _wait_for_dashboard(project: Project, state: dict) -> None:
    headers = dashboard_headers(project)
    deadline = time.monotonic() + DASHBOARD_WAIT_S
    while time.monotonic() < deadline:
        if _dashboard_ready(state["dashboard_url"], headers):
            return
        time.sleep(0.5)
    raise ClusterError(
        f"the local Ray head started but its dashboard at {state['dashboard_url']} never answered; "
        f"see the logs under {state['temp_dir']}/session_latest/logs"
    )


# stopping ------------------------------------------------------------------------
def _discard_head(project: Project, state: dict) -> int:
    """Stop every process of the recorded head, then forget it. Returns how many were stopped."""
    stopped = stop_head_processes(_temp_root(state))
    _state_file(project).unlink(missing_ok=True)
    for path in (Path(state["temp_dir"]), _temp_root(state)):  # sessions and logs of the head
        if _owned_dir(path):
            shutil.rmtree(path, ignore_errors=True)
    return stopped
