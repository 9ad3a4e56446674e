"""Ports, waits and environments for services that listen on 127.0.0.1 only."""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

AWS_TEST_ENV = {  # fake credentials; nothing leaves the machine
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    """A loopback port nothing listens on now, for a server that must know its port before it starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """Poll until ``condition()`` is truthy and return it; a TimeoutError names ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return result


def cluster_environment() -> dict[str, str]:
    """What every node, job and client of the test cluster needs in its environment."""
    return AWS_TEST_ENV | {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only
        "RAY_AUTH_MODE": "token",
        # the process's own token if it has one: Ray reads it once per process, so a test session
        # that already started a Ray must give the cluster the same token (tests/conftest.py)
        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(24),
        # jobs run `dip`: the environment of this interpreter comes first on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
