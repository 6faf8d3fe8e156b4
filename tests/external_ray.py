"""A Ray head started the way a team starts its cluster (`ray start --head`, a session of its own,
token auth), outside whatever process asks for it, on loopback; for tests and benchmarks that
reach a cluster through RAY_ADDRESS rather than the engine's own local head."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llmops_engine.headprocs import HEAD_MARKER_ENV, stop_head_processes
from llmops_engine.raycluster import LOCAL_NODE_ENV, _free_ports

BIN = Path(sys.executable).parent


@contextmanager
def external_head(num_cpus: int = 4) -> Iterator[dict[str, str]]:
    """The environment of a driver of the head (RAY_ADDRESS and token auth); the head is stopped
    (only its own processes: `ray stop` would stop every Ray on the machine) on exit."""
    temp_root = Path(tempfile.mkdtemp(prefix="llmops-ext-", dir="/tmp"))  # short: unix socket paths
    token = temp_root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    gcs, agent, client = _free_ports(3)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    # Loopback only: with Ray's multi-node switch off, the node keeps 127.0.0.1 (raycluster.py).
    inherited = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CI", "GITHUB_ACTIONS")}
    head_env = {**inherited, **auth, LOCAL_NODE_ENV: "0", HEAD_MARKER_ENV: str(temp_root)}
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--include-dashboard=false", f"--dashboard-agent-listen-port={agent}",
               f"--ray-client-server-port={client}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_root / 'r'}",
               "--disable-usage-stats"]
    try:
        started = subprocess.run(command, env=head_env, capture_output=True, text=True, timeout=180,
                                 start_new_session=True)
        if started.returncode != 0:
            raise RuntimeError(f"ray start --head failed:\n{started.stdout}{started.stderr}")
        yield {**inherited, **auth, LOCAL_NODE_ENV: "0", "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
    finally:
        stop_head_processes(temp_root)
        shutil.rmtree(temp_root, ignore_errors=True)
