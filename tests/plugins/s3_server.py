"""A real S3 API on 127.0.0.1 (moto's server) for artifact-store tests over HTTP.

Clients reach it the way they reach any S3-compatible store: AWS_ENDPOINT_URL and
credentials from the environment, nothing in llmops.yaml. The variables are set for the
whole session, before the test Ray head starts (ray_cluster.py asks for this fixture), so
Ray workers and Serve replicas reach the same store as the test process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid

import pytest

SECRET = "s3-secret-never-printed-7f3a"


@pytest.fixture(scope="session")
def s3_server():
    """The endpoint URL, or None where s3fs / moto[server] are not installed."""
    if not (importlib.util.find_spec("s3fs") and importlib.util.find_spec("moto")):
        yield None
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "llmops-test",
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield settings["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_store(s3_server, monkeypatch):
    """A fresh bucket; returns its store URL. Subprocesses inherit the environment."""
    if s3_server is None:
        pytest.skip("s3fs and moto[server] (the test extra) are not installed")
    monkeypatch.delenv("LLMOPS_ARTIFACT_STORE", raising=False)
    import fsspec

    bucket = f"llmops-{uuid.uuid4().hex[:10]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}/store"
