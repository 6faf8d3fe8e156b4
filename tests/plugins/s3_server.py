"""A real S3 API on 127.0.0.1 (moto's server) for artifact-store tests over HTTP.

Clients reach it the way they reach any S3-compatible store: AWS_ENDPOINT_URL and
credentials from the environment, nothing in llmops.yaml.
"""

from __future__ import annotations

import logging
import uuid

import pytest

SECRET = "s3-secret-never-printed-7f3a"


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("s3fs", reason="s3fs is part of the test extra")
    server_module = pytest.importorskip("moto.server", reason="moto[server] is part of the test extra")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server, monkeypatch):
    """A fresh bucket; returns its store URL. Subprocesses inherit the environment."""
    monkeypatch.delenv("LLMOPS_ARTIFACT_STORE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "llmops-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import fsspec

    bucket = f"llmops-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(bucket)
    return f"s3://{bucket}/store"
