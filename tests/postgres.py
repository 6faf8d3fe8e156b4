"""A private PostgreSQL cluster for tests and benchmarks: the warehouse source is tested against a
real server, not a mock.

`PostgresCluster` runs Debian's (or any) PostgreSQL binaries: `initdb` into a temp directory,
`pg_ctl start` listening on 127.0.0.1 only, on a free port, with password (SCRAM) authentication
for a role that has a password — so a test that the password never leaks into an error is real.
When we run as root (CI), the server must run as the `postgres` user, which must be able to write
the directory. The session-scoped `postgres` / `postgres_url` fixtures share one cluster per test
session; the cluster is stopped (`pg_ctl stop -m fast`) and its directory removed at the end.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

ROLE = "llmops"
DATABASE = "warehouse"


def find_bindir() -> Path | None:
    """The directory holding initdb/pg_ctl: $LLMOPS_PG_BIN, Debian's newest
    /usr/lib/postgresql/<version>/bin, or the one on PATH; None when there is none."""
    candidates = [os.environ.get("LLMOPS_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def reachable_temp_root() -> str:
    """The temp root, unless we are root and the postgres user cannot traverse it (a 0700
    TMPDIR under /root): then /tmp."""
    root = Path(tempfile.gettempdir())
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o001 for p in (root, *root.parents)):
        return str(root)
    return "/tmp"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresCluster:
    """One running server; `url` is a postgresql+psycopg URL with the role's password in it."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        # Not under pytest's temp dirs: they are 0700, and the postgres user must reach its data.
        self.home = Path(tempfile.mkdtemp(prefix="llmops-pg-", dir=reachable_temp_root()))
        self.data = self.home / "data"
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(12)
        self.url = f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.home)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> "PostgresCluster":
        if self.as_root:
            shutil.chown(self.home, "postgres", "postgres")
        # -N: no fsync at initdb; fsync=off at run time: a throwaway cluster needs no durability.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-N", "-E", "UTF8", "--no-locale",
                  "--auth-local=trust", "--auth-host=scram-sha-256")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.home} -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.home / "server.log"),
                  "-o", options)
        with self.admin() as admin:
            admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
            admin.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        return self

    def admin(self, dbname: str = "postgres"):
        """A superuser connection over the cluster's Unix socket (trusted), autocommit."""
        import psycopg

        return psycopg.connect(host=str(self.home), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def connect(self):
        """A connection as the test role to the test database, autocommit, to fill tables."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, password=self.password,
                               dbname=DATABASE, autocommit=True)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    """Start a cluster, or skip the calling test with the reason there is none."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql-15 or set LLMOPS_PG_BIN")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root needs `runuser` to start PostgreSQL as the postgres user")
    cluster = PostgresCluster(bindir)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise


@pytest.fixture(scope="session")
def postgres():
    """A running private PostgreSQL cluster (see PostgresCluster), shared by the test session."""
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres) -> str:
    """A postgresql+psycopg URL (role with a password, loopback, private port) to a database
    the tests may fill."""
    return postgres.url
