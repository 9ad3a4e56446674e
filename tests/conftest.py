"""Shared fixtures: real services on 127.0.0.1 (no mocks, no traffic off the machine)."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from devservices.loopback import AWS_TEST_ENV, free_port
from devservices.mlflow_server import MlflowServer
from devservices.s3_server import S3Server

# Tests read the shared test images through the data root, never copies of them (CI sets it too).
os.environ.setdefault("DIP_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
# Ray (token authentication on by default) reads its token once per process: every Ray this
# session starts in-process - the session cluster and tests/test_cluster.py's head and worker
# nodes - must share one, or the second is refused ("Authentication token is missing or
# incorrect"). A token of the session's own, never the user's ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex + uuid.uuid4().hex)
# Token mode from the start, as the first local ray.init() would switch it on: a GCS client made
# before that (tests reading a `ray start` head's key-value store) otherwise sends no token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# moto's request recorder (the s3_requests fixture) appends to this file; moto reads the variable
# when it is first imported, so it is set before, and never to a file in the working tree.
os.environ.setdefault("MOTO_RECORDER_FILEPATH", str(Path(tempfile.gettempdir()) / f"moto-recording-{uuid.uuid4().hex}"))


@pytest.fixture
def unused_port() -> int:
    """A loopback port with no server behind it, to test what happens when a service is down."""
    return free_port()


# --- MLflow --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, artifacts proxied to a local folder; see
    devservices.mlflow_server) for the session; yields its URI."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start(timeout=120)
        yield server.uri
    finally:
        server.kill(grace=15)


# --- S3 (moto server) ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (devservices.s3_server), as s3fs's own tests use it; yields its
    endpoint URL.

    One server for the session (tests keep apart by using their own bucket); the fake AWS
    environment holds while it runs.
    """
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_TEST_ENV.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        server = S3Server()
        try:
            yield server.endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_store_uri(s3_server: str) -> tuple[str, dict]:
    """A fresh bucket: (a root URI inside it, the fsspec storage options that reach the server)."""
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_server}}
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True, **options).mkdir(bucket)
    return f"s3://{bucket}/results", options


@pytest.fixture
def s3_requests(s3_server: str) -> Iterator[Callable[..., list[tuple[str, str]]]]:
    """What the S3 server was asked during the test, as moto itself records it (its recorder,
    /moto-api/recorder/): yields a function returning (method, path) of each request so far,
    path as ``/<bucket>/<key>``, and empties the record when called with ``reset=True``."""
    import requests

    api = f"{s3_server}/moto-api/recorder"
    requests.post(f"{api}/reset-recording", timeout=10).raise_for_status()
    requests.post(f"{api}/start-recording", timeout=10).raise_for_status()

    def seen(reset: bool = False) -> list[tuple[str, str]]:
        lines = requests.get(f"{api}/download-recording", timeout=30).text.splitlines()
        if reset:
            requests.post(f"{api}/reset-recording", timeout=10).raise_for_status()
        return [(entry["method"], unquote(urlsplit(entry["url"]).path)) for entry in map(json.loads, lines)]

    try:
        yield seen
    finally:
        requests.post(f"{api}/stop-recording", timeout=10)


# --- Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local 2-CPU Ray cluster for the session, on loopback only when Ray is first imported here
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as pipeline.sweep.loopback_unless_cluster sets it)."""
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # address="local": always a cluster of its own, never one another process left running here
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()
