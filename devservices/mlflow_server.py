"""A real `mlflow server` on 127.0.0.1, for tests and benchmarks that need a tracking server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from devservices.loopback import free_port, wait_until


class MlflowServer:
    """`mlflow server` on loopback with a SQLite store and proxied artifacts, in its own process
    group (it runs uvicorn as a child) so that the whole group can be stopped or killed. Its job
    runner (GenAI scorers, periodic tasks: eight more processes) is switched off."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        """Start it and wait until it answers; a first start creates the SQLite schema (about 25 s
        on two busy cores). Raises with the server's log when it exits or never answers."""
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        with self.log.open("ab") as log:
            self.proc = proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        try:
            wait_until(lambda: self.healthy() or proc.poll() is not None, timeout, "the MLflow server", 0.5)
        except TimeoutError as err:
            raise RuntimeError(f"{err}; its log ends:\n{self.log_tail()}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; its log ends:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def kill(self, grace: float = 0.0) -> None:
        """Stop the process group: SIGTERM and up to ``grace`` seconds to exit first, then SIGKILL."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if grace > 0:
                os.killpg(self.proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
            os.killpg(self.proc.pid, signal.SIGKILL)  # and children that outlived the parent
        self.proc.wait()
        self.proc = None

    def fit_run_keys(self, experiment: str) -> Counter[str]:
        """Fit key → number of FINISHED fit runs in the experiment (one each when nothing is duplicated)."""
        import mlflow

        client = mlflow.MlflowClient(self.uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return Counter()
        keys: Counter[str] = Counter()
        token = None
        while True:  # pages of 500: one search of thousands of runs outlasts the client's timeout
            page = client.search_runs([exp.experiment_id], "tags.`dip.kind` = 'fit'", max_results=500, page_token=token)
            keys.update(r.data.tags["dip.fit_key"] for r in page if r.info.status == "FINISHED")
            if not (token := page.token):
                return keys
