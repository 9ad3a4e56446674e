"""A multi-node Ray cluster on 127.0.0.1 with the dashboard and Jobs API, built on Ray's own test
harness (`ray.cluster_utils.Cluster`, the mini-cluster of Ray's "Tips for testing Ray programs"): a head with no fit
resources, like the CPU-only head of infra/, and worker nodes whose custom resource `fakegpu`
stands in for GPUs, so fits are scheduled as on a GPU cluster. Start it in the environment of
`devservices.loopback.cluster_environment` (token authentication, loopback only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devservices.loopback import free_port, wait_until

FAKE_GPU = "fakegpu"


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
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": port,
                "dashboard_agent_listen_port": free_port(),
                "temp_dir": temp_dir,
            },
        )
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

        alive = list_actors(
            address=self.dashboard, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False
        )
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
    """Block until the job ends (succeeded, failed or stopped); returns that status."""
    status = wait_until(lambda: (s := client.get_job_status(job_id)).is_terminal() and s, timeout, f"job {job_id}", 1)
    return str(status)


@dataclass
class HeadStartedByHand:
    """A Ray head run by ``ray start --head --block`` on 127.0.0.1 (1 CPU, no GPU, no dashboard), as
    an operator starts one: without ``autoscaling`` Ray's monitor runs with its read-only provider
    (the cluster cannot grow); with ``autoscaling`` (worker node types, as in a ``ray up`` config)
    the v1 autoscaler runs with Ray's fake multi-node provider, whose worker nodes are more raylets
    on this machine (what ``ray.cluster_utils.AutoscalingCluster`` starts, without its
    ``ray stop --force``, which would stop every Ray on the machine). Pass ``env`` from
    `cluster_environment` or the test session's own."""

    process: subprocess.Popen
    address: str  # the GCS, for --address
    temp_dir: str

    @classmethod
    def start(
        cls, env: dict[str, str], autoscaling: dict[str, Any] | None = None, timeout: float = 180
    ) -> HeadStartedByHand:
        temp_dir = tempfile.mkdtemp(prefix="dipray-", dir="/tmp")  # sessions and logs of its own
        port = free_port()
        address = f"127.0.0.1:{port}"
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--object-store-memory={200 * 1024**2}",
            "--include-dashboard=false",
            # ports that are one per machine by default, which other Rays here may hold
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ]
        env = {k: v for k, v in env.items() if k not in {"RAY_ADDRESS", "RAY_enable_autoscaler_v2"}}
        env |= {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}  # loopback only, fake nodes too
        if autoscaling is not None:
            config = Path(temp_dir) / "autoscaling.json"
            config.write_text(json.dumps(fake_multinode_config(address, autoscaling)))
            cmd.append(f"--autoscaling-config={config}")
            env |= {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        log = Path(temp_dir) / "ray-start.log"
        with log.open("wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        head = cls(process, address, temp_dir)
        try:
            wait_until(
                lambda: process.poll() is not None or "Ray runtime started" in log.read_text(), timeout, "ray start"
            )
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited {process.returncode}: {log.read_text()[-3000:]}")
        except BaseException:
            head.stop()
            raise
        return head

    def monitor_report(self) -> dict[str, Any] | None:
        """What Ray's autoscaling monitor last reported (the JSON `ray status` prints), if it has."""
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # not in _raylet.pyi

        status = GcsClient(address=self.address).internal_kv_get(DEBUG_AUTOSCALING_STATUS.encode(), None)
        return json.loads(status) if status else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, the head's process group, then any process of this cluster left
        (its workers and fake nodes: found by its temp dir, a name of its own, in their command lines)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and proc.stat().st_uid == os.getuid():
                    cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
                    if self.temp_dir in cmdline:
                        os.kill(int(proc.name), signal.SIGKILL)
            except OSError:  # gone meanwhile
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def fake_multinode_config(gcs_address: str, worker_node_types: dict[str, Any]) -> dict[str, Any]:
    """An autoscaling config for Ray's fake multi-node provider (Ray's fake_multi_node/example.yaml,
    which the wheel does not ship): a 1-CPU head and ``worker_node_types``."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": sum(t.get("max_workers", 0) for t in worker_node_types.values()),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # else the provider's nodes join port 6379
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1, "GPU": 0}, "node_config": {}, "max_workers": 0},
            **worker_node_types,
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }
