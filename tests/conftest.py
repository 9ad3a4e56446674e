"""Shared fixtures: real services on 127.0.0.1 (no mocks, no traffic off the machine)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests read the shared test images through the data root, never copies of them (CI sets it too).
os.environ.setdefault("DIP_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
# Ray (token authentication on by default) reads its token once per process: every Ray this
# session starts in-process - the session cluster and tests/test_cluster.py's head and worker
# nodes - must share one, or the second is refused ("Authentication token is missing or
# incorrect"). A token of the session's own, never the user's ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_TOKEN", uuid.uuid4().hex + uuid.uuid4().hex)

# --- MLflow --------------------------------------------------------------------------------------

# A first start creates the SQLite schema through every migration: about 25 s on two cores.
MLFLOW_START_TIMEOUT_S = 120.0


def _free_loopback_port() -> int:
    """A port nobody listens on right now (the OS picks it, so parallel sessions do not clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A loopback port with no server behind it, to test what happens when a service is down."""
    return _free_loopback_port()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _wait_for_health(uri: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout_s:.0f} s:\n{_tail(log)}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, artifacts proxied to a local folder); yields its URI.

    Its job runner (GenAI scorers, periodic tasks: eight more processes) is switched off; the
    server still runs uvicorn as a child, so it gets its own process group and the whole group
    is stopped at the end of the session.
    """
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_loopback_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        _wait_for_health(uri, proc, log, MLFLOW_START_TIMEOUT_S)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the parent
        proc.wait()


# --- S3 (moto server) ----------------------------------------------------------------------------

# Fake credentials, and no credential files or instance-metadata lookups: nothing leaves the machine.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, as s3fs's own tests use it; yields its endpoint URL.

    One server for the session (tests keep apart by using their own bucket); the fake AWS
    environment holds while it runs.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no log line per request
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAKE_AWS_ENV.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
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


# --- Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local 2-CPU Ray cluster for the session, on loopback only (see PLATFORM-NOTES)."""
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # address="local": always a cluster of its own, never one another process left running here
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()
