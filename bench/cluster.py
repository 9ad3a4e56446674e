"""A multi-node Ray cluster on one machine, loopback only, with an S3 server and an MLflow server;
and the load run through it.

    python -m bench.cluster --fits 2000       # fits/s; lost and duplicated fits and MLflow runs

The cluster is Ray's own test harness (`ray.cluster_utils.Cluster`, see PLATFORM-NOTES): a head
with the dashboard and Jobs API (no fit resources, like the CPU-only head of infra/), and worker
nodes holding a custom resource `fakegpu` that stands in for GPUs, so fits are scheduled as on a
GPU cluster. Token authentication is on (a fresh token in RAY_AUTH_TOKEN for every node and
client). S3 is moto's server with a versioned bucket, so every write of a done marker leaves a
version: one version per marker means no fit completed twice. tests/test_cluster.py runs its
fault scenarios on the same harness.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAKE_GPU = "fakegpu"
AWS_TEST_ENV = {  # fake credentials; nothing leaves the machine
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
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


# --- Ray ------------------------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """Head + worker nodes on 127.0.0.1; start it with the environment of `cluster_environment`."""

    cluster: Any
    dashboard: str
    previous_address: str | None = None  # what /tmp/ray/ray_current_cluster held before
    workers: list[Any] = field(default_factory=list)

    @classmethod
    def start(cls, workers: int = 2, cpus_per_worker: int = 1, gpus_per_worker: int = 2) -> LocalCluster:
        from ray.cluster_utils import Cluster

        temp_dir = tempfile.mkdtemp(prefix="dipray-", dir="/tmp")  # sessions and logs of its own
        port = free_port()
        previous_address = _recorded_address()
        # `Cluster` writes /tmp/ray's address file without creating its folder, which a machine
        # that never ran Ray lacks
        _address_file().parent.mkdir(parents=True, exist_ok=True)
        # Every node's dashboard agent gets a port of its own: the default (52365) is one per
        # machine, and other Ray clusters on this machine may hold it.
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
            "dashboard_agent_listen_port": free_port(), "temp_dir": temp_dir})
        _record_address(previous_address)
        # A job's driver joins the cluster whose address the Jobs API's supervisor finds in the
        # head's temp dir, where `ray start` writes it; `Cluster` does not, and without that file
        # the supervisor takes any GCS running on the machine (another session's Ray, say), so
        # the job would run on the wrong cluster.
        _address_file(temp_dir).write_text(cluster.gcs_address)
        local = cls(cluster, f"http://127.0.0.1:{port}", previous_address)
        try:  # bounds on hangs: on a busy machine each step takes minutes
            for _ in range(workers):
                local.add_worker(cpus_per_worker, gpus_per_worker)
            wait_until(local.jobs_ready, 300, "the Jobs API")
            local.wait_for_job_agent(300)
            wait_until(lambda: local.alive_nodes() == workers + 1, 300, f"{workers + 1} nodes")
        except BaseException:
            local.shutdown()
            raise
        return local

    def add_worker(self, cpus: int = 1, gpus: int = 2) -> Any:
        node = self.cluster.add_node(num_cpus=cpus, resources={FAKE_GPU: gpus}, dashboard_agent_listen_port=free_port())
        self.workers.append(node)
        return node

    def jobs_ready(self) -> bool:
        try:
            self.client().list_jobs()
            return True
        except Exception:  # noqa: BLE001 - not up yet, whatever the error
            return False

    def wait_for_job_agent(self, timeout: float = 120) -> None:
        """Run a no-op job: the Jobs API answers before the head's job agent can take jobs."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job_id = self.client().submit_job(entrypoint="true")
                break
            except RuntimeError as err:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the head's job agent never came up: {err}") from None
                time.sleep(1)
        wait_for_job(self.client(), job_id, timeout)

    def client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        # counted here: with a state filter the API takes dead nodes for missing output and raises
        nodes = list_nodes(address=self.dashboard, limit=1000, raise_on_missing_output=False)
        return sum(1 for n in nodes if n.state == "ALIVE")

    def fit_actors(self) -> list[Any]:
        """The live FitWorker actors of the newest job that has any, with their node ids (actors of
        earlier, stopped jobs may still be listed for a while)."""
        from ray.util.state import list_actors

        alive = list_actors(address=self.dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                            raise_on_missing_output=False)
        fits = [a for a in alive if a.class_name.endswith("FitWorker")]  # "fit_worker_class.<locals>.FitWorker"
        number = lambda job: int.from_bytes(bytes.fromhex(job), "little")  # noqa: E731 - job ids are little-endian
        newest = max((a.job_id for a in fits), default=None, key=number)
        return [a for a in fits if a.job_id == newest]

    def kill_worker(self, node: Any) -> float:
        """SIGKILL the node's raylet (its workers die with it), then clear its other processes; returns when."""
        from ray._private import ray_constants

        [raylet] = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]
        os.kill(raylet.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)
        return killed

    def node_of(self, node_id: str) -> Any:
        return next(n for n in self.workers if n.node_id == node_id)

    def shutdown(self) -> None:
        self.cluster.shutdown()
        _record_address(self.previous_address)  # shutdown deletes the file, whoever wrote it


def _address_file(temp_dir: str | None = None) -> Path:
    """Where Ray records the address of the newest cluster started with that temp dir
    (None: /tmp/ray, the one a plain `ray.init()` reads)."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(temp_dir))


def _recorded_address() -> str | None:
    path = _address_file()
    return path.read_text() if path.exists() else None


def _record_address(address: str | None) -> None:
    """Put back what /tmp/ray/ray_current_cluster held: `Cluster` writes its head's address there,
    and a plain `ray.init()` of any other process on the machine would then join this cluster."""
    path = _address_file()
    if address is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(address)


def wait_for_job(client: Any, job_id: str, timeout: float) -> str:
    status = wait_until(lambda: (s := client.get_job_status(job_id)).is_terminal() and s, timeout, f"job {job_id}", 1)
    return str(status)


# --- S3 and MLflow ------------------------------------------------------------------------------------------


class S3Server:
    """moto's S3 server on a fixed loopback port, so it can be stopped and started again (state survives
    in this process)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no log line per request
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._make = lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server = self._make()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server = self._make()
        self.server.start()

    def options(self) -> dict[str, Any]:
        """fsspec storage options that reach this server."""
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.endpoint}}

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.options())

    def versioned_bucket(self) -> str:
        """A new bucket with versioning on; returns its name."""
        bucket = f"dip-{uuid.uuid4().hex[:10]}"
        fs = self.fs()
        fs.mkdir(bucket)
        fs.call_s3("put_bucket_versioning", Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        return bucket

    def versions(self, bucket: str, prefix: str) -> Counter[str]:
        """How many versions each object under the prefix has (written once: 1)."""
        counts: Counter[str] = Counter()
        token: dict[str, str] = {}
        while True:
            page = self.fs().call_s3("list_object_versions", Bucket=bucket, Prefix=prefix, **token)
            counts.update(v["Key"] for v in page.get("Versions", []))
            if not page.get("IsTruncated"):
                return counts
            token = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}


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
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", str(self.root / "artifacts")]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        try:
            wait_until(lambda: self.healthy() or self.proc.poll() is not None, timeout, "the MLflow server", 0.5)
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
            page = client.search_runs([exp.experiment_id], "tags.`dip.kind` = 'fit'", max_results=500,
                                      page_token=token)
            keys.update(r.data.tags["dip.fit_key"] for r in page if r.info.status == "FINISHED")
            if not (token := page.token):
                return keys


# --- manifests and checks ------------------------------------------------------------------------------------


def write_manifest(path: Path, name: str, storage: str, storage_options: dict, mlflow_uri: str | None,
                   seeds: int, iterations: int, width: int = 4, max_workers: int | None = None) -> Path:
    """`seeds` fits of one 32×32 sample image, each holding one `fakegpu`."""
    doc = {
        "name": name, "images": [{"sample": "camera", "crop": 32}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": width, "depth": 3}, "repeats": seeds,
        "fit": {"iterations": iterations, "stop_window": 1, "snapshot_stride": max(iterations, 1)},
        "storage": storage, "storage_options": storage_options,
        "mlflow": {"enabled": mlflow_uri is not None, "tracking_uri": mlflow_uri, "experiment": name},
        "resources": {"num_cpus": 0, "custom": {FAKE_GPU: 1}, "max_retries": 3}
                     | ({"max_workers": max_workers} if max_workers else {}),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Completeness:
    """Storage after a sweep: fits expected, done, missing, completed more than once, failed."""

    expected: int
    done: int
    missing: int
    duplicated: int
    failed: int
    incomplete_folders: int

    def exact(self) -> bool:
        return (self.done, self.missing, self.duplicated, self.failed, self.incomplete_folders) == (
            self.expected, 0, 0, 0, 0)


FIT_FILES = {"spec.json", "metrics.parquet", "trajectory.npz", "final.png", "clean.png"}


def completeness(s3: S3Server, bucket: str, keys: set[str]) -> Completeness:
    markers = s3.versions(bucket, "results/done/")
    done = {k.rsplit("/", 1)[1].removesuffix(".json"): n for k, n in markers.items()}
    failed = [k for k in s3.versions(bucket, "results/failed/")]
    files = s3.fs().find(f"{bucket}/results/fits/")
    present: dict[str, set[str]] = {}
    for path in files:
        key, name = path.rsplit("/", 2)[-2:]
        present.setdefault(key, set()).add(name)
    incomplete = sum(1 for key in done if not FIT_FILES <= present.get(key, set()))
    return Completeness(len(keys), len(set(done) & keys), len(keys - set(done)),
                        sum(1 for n in done.values() if n > 1), len(failed), incomplete)


# --- the load run ----------------------------------------------------------------------------------------------


def load_run(fits: int, workers: int, gpus_per_worker: int, tmp: Path) -> None:
    from pipeline import jobs, sweep
    from pipeline.sources import read_manifest

    os.environ.update(cluster_environment())
    s3 = S3Server()
    os.environ["AWS_ENDPOINT_URL"] = s3.endpoint  # s3:// manifests are read by the client and by the job
    mlflow_server = MlflowServer(tmp)
    mlflow_server.start()
    start = time.perf_counter()
    cluster = LocalCluster.start(workers=workers, gpus_per_worker=gpus_per_worker)
    print(f"cluster: head + {workers} workers × {gpus_per_worker} {FAKE_GPU} up in {time.perf_counter() - start:.1f} s",
          flush=True)
    try:
        bucket = s3.versioned_bucket()
        path = write_manifest(tmp / "load.yaml", "load", f"s3://{bucket}/results", s3.options(), mlflow_server.uri,
                              seeds=fits, iterations=1)
        s3.fs().put_file(str(path), f"{bucket}/manifests/load.yaml")
        uri = f"s3://{bucket}/manifests/load.yaml"
        manifest = read_manifest(uri)
        keys = {s.key for s in sweep.expand_specs(manifest)}
        client = cluster.client()
        submitted = time.perf_counter()
        sub = jobs.submit(manifest, uri, cluster.dashboard)
        status = wait_for_job(client, sub.job_id, 3600)
        seconds = time.perf_counter() - submitted
        logs = client.get_job_logs(sub.job_id)
        summary = [line for line in logs.splitlines() if "fits done" in line]
        progress = [line for line in logs.replace("\r", "\n").splitlines() if " fits/s · " in line]
        print(f"job {sub.job_id}: {status} in {seconds:.1f} s (submit to finish, MLflow logging drained); "
              f"{summary[-1] if summary else logs[-2000:]}")
        print(f"the driver's last progress line (fits stored): {progress[-1].strip() if progress else '?'}")
        check = completeness(s3, bucket, keys)
        runs = mlflow_server.fit_run_keys("load")
        print(f"{fits} fits: {check.done} done, {check.missing} lost, {check.duplicated} completed twice, "
              f"{check.failed} failed, {check.incomplete_folders} incomplete → {check.done / seconds:.1f} fits/s "
              f"end to end through the Jobs API")
        print(f"MLflow after the job: {len(set(runs) & keys)} fit runs, "
              f"{sum(1 for n in runs.values() if n > 1)} duplicated")
        synced = time.perf_counter()
        added, present = sweep.sync_mlflow(manifest)
        runs = mlflow_server.fit_run_keys("load")
        print(f"sync-mlflow: {added} added, {present} already there in {time.perf_counter() - synced:.1f} s; "
              f"MLflow now {len(set(runs) & keys)} fit runs, {sum(1 for n in runs.values() if n > 1)} duplicated")
    finally:
        cluster.shutdown()
        mlflow_server.kill()
        s3.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="worker nodes")
    parser.add_argument("--gpus-per-worker", type=int, default=1, help=f"{FAKE_GPU} per worker node (fit actors)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        load_run(args.fits, args.workers, args.gpus_per_worker, Path(tmp))


if __name__ == "__main__":
    main()
