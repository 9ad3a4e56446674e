"""Sweeps on Ray: plan what is missing, run it on reusable fit actors, record it in MLflow.

Execution uses Ray Core actors fed by a small dispatcher (`Dispatch`): an actor holds one GPU (or a
CPU slot) for the whole sweep, so CUDA/cuDNN warm-up is paid once per worker, and the pool
hands each actor its next fit as soon as it is free; with ``resources.pack: N`` its next N
fits, which it runs together on its device (`pipeline.worker.execute_fits`). Actors restart when their process or
node dies and Ray re-runs the interrupted call (``max_restarts``/``max_task_retries``);
storage makes a second completion of the same fit a no-op. Storage is the source of truth:
resume, status and the MLflow backfill all start from the done/failed markers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from pipeline.manifest import FitSpec, Manifest, MlflowSpec
from pipeline.messages import Terminated, UserError, one_line
from pipeline.record import flatten_for_mlflow, run_name, upgrade
from pipeline.sources import expand_specs, open_store
from pipeline.storage import Store, Trajectory
from pipeline.tracking import Tracker, TrackingError, default_tracking_uri


@dataclass
class Plan:
    """Where each fit of a manifest stands in storage: the keys done, and those failed and not done."""

    specs: list[FitSpec]
    done: set[str]
    failed: set[str]

    def todo(self, retry_failed: bool = False) -> list[FitSpec]:
        skip = self.done if retry_failed else self.done | set(self.failed)
        return [s for s in self.specs if s.key not in skip]


def make_plan(manifest: Manifest, store: Store | None = None, specs: list[FitSpec] | None = None) -> Plan:
    """The plan from the listings of the marker folders alone: no marker is read."""
    specs = expand_specs(manifest) if specs is None else specs
    store = store or open_store(manifest)
    keys = {s.key for s in specs}
    done = store.done_keys() & keys
    return Plan(specs, done, (store.failed_keys() & keys) - done)


def work_estimate(specs: list[FitSpec]) -> int:
    """Iterations × pixels over the specs (pixels from the crop; uncropped images count as 512²).
    A classical reference (``method``) has no iterations and counts as one."""
    return sum(s.fit.get("iterations", 1) * (s.crop or 512) ** 2 for s in specs)


# --- Ray --------------------------------------------------------------------------------------


def loopback_unless_cluster(address: str | None) -> None:
    """Without a cluster address, make the local Ray listen on loopback only.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported (ray_constants), so this
    must run before the first ``import ray`` of the process; set later, Ray's servers listen on
    every interface (checked in tests/test_security.py). Not set for a cluster: the driver
    must then advertise its real address.
    """
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a loopback-only local one."""
    loopback_unless_cluster(address)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return
    # address="local": a new instance of our own; plain ray.init() would join any cluster whose
    # address another process left in /tmp/ray/ray_current_cluster on this machine.
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)


def fit_worker_class(num_gpus: float, num_cpus: float, max_retries: int, custom: dict[str, float]) -> Any:
    """The Ray actor class that runs fits, with the manifest's resources."""
    import ray

    @ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, resources=custom, max_restarts=-1, max_task_retries=max_retries)
    class FitWorker:
        def __init__(self, store_uri: str, storage_options: dict[str, Any] | None) -> None:
            import torch

            # imported here, not on the first call: an actor that Ray reports alive is ready to fit
            from pipeline.worker import execute_fits

            self.execute_fits = execute_fits
            self.store = Store(store_uri, storage_options)
            self.storage_options = storage_options
            self.device = "cuda" if ray.get_gpu_ids() else "cpu"
            if self.device == "cpu":
                torch.set_num_threads(max(int(num_cpus), 1))

        def run(self, specs: list[FitSpec]) -> list[dict[str, Any]]:
            """Run a pack of specs together (one spec: as alone); one record per spec. Ray
            pickles the validated specs as they are, so the actor neither re-parses nor re-checks."""
            return self.execute_fits(specs, self.store, self.device, self.storage_options)

    return FitWorker


_SIGTERM_SEEN = threading.Event()


def stop_on_sigterm() -> None:
    """Make SIGTERM end the sweep like Ctrl-C (`Terminated`). Set after Ray starts, whose core
    worker would otherwise take the signal and print C++ stack dumps; only the main thread may.
    The signal is also remembered: arriving while the driver waits inside Ray, the handler's
    exception reaches the sweep as Ray's KeyboardInterrupt instead."""
    _SIGTERM_SEEN.clear()

    def terminate(signum: int, frame: object) -> None:
        _SIGTERM_SEEN.set()
        raise Terminated(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


WAIT_TOLD_AFTER_S = 60.0  # how long fits wait for resources before the progress line says which


def scarce(needs: dict[str, tuple[str, float]], total: dict[str, float]) -> str:
    """The resources of a worker that the whole cluster has less of than one worker asks for,
    as the progress line names them ("GPU (resources.num_gpus = 1, cluster 0)"); else "a free node"."""
    short = [
        f"{name} ({field} = {amount:g}, cluster {total.get(name, 0.0):g})"
        for name, (field, amount) in needs.items()
        if total.get(name, 0.0) < amount
    ]
    return ", ".join(short) or "a free node"


def worker_needs(gpus: float, cpus: float, custom: dict[str, float]) -> dict[str, tuple[str, float]]:
    """What one fit worker asks of a node, by Ray resource name: (the manifest field, amount)."""
    needs = {"CPU": ("resources.num_cpus", cpus), "GPU": ("resources.num_gpus", gpus)}
    needs |= {name: (f"resources.custom.{name}", amount) for name, amount in custom.items()}
    return {name: need for name, need in needs.items() if need[1] > 0}


def unplaceable(
    needs: dict[str, tuple[str, float]], nodes: list[dict[str, Any]], fixed: str = "it cannot add nodes"
) -> str | None:
    """Why no live node can ever hold one worker (naming the manifest field and what the nodes
    have), or None when one can. Only meaningful for a cluster that cannot grow: ``fixed`` says
    why it cannot (`why_cannot_grow`)."""
    have = [node["Resources"] for node in nodes if node.get("Alive")]
    if any(all(res.get(name, 0.0) >= amount for name, (_, amount) in needs.items()) for res in have):
        return None
    name, (field, amount) = next(
        ((name, need) for name, need in needs.items() if not any(res.get(name, 0.0) >= need[1] for res in have)),
        next(iter(needs.items())),  # each resource is somewhere, never all on one node: name the first
    )
    most = max((res.get(name, 0.0) for res in have), default=0.0)
    way_out = {"CPU": f"{field}={most:g}", "GPU": f"{field}=0"}.get(name, "resources.custom={}")
    return (
        f"{field} = {amount:g} per worker, but no node of this Ray cluster has that much {name} "
        f"({len(have)} node(s), at most {most:g} {name} each) and {fixed}; run on a cluster "
        f"that has it (--address), or change it for this run: --set {way_out}"
    )


AUTOSCALER_REPORT_WAIT_S = 12.0  # Ray's monitor reports every 5 s (AUTOSCALER_UPDATE_INTERVAL_S)


def why_cannot_grow(needs: dict[str, tuple[str, float]], wait_s: float = AUTOSCALER_REPORT_WAIT_S) -> str | None:
    """Why the connected Ray cluster can never add a node that holds one worker (the end of
    `unplaceable`'s line), or None when it can or may: on a cluster that cannot grow, a worker no
    node holds waits forever, so the sweep is refused instead.

    Read from what the cluster's autoscaler publishes in the GCS key-value store (Ray 2.60):
    its node types when it reports them (the GCS's ReportClusterConfig stores a ``ClusterConfig``
    under ``__autoscaler_cluster_config``, which ``ray._private.state.GlobalState.get_cluster_config``
    reads; Ray 2.60's own autoscalers never call it, ray-project/ray#63012): it can grow if a node
    type that may still start (``max_count`` not 0) holds the worker. Else the v1 monitor's report
    (``__autoscaling_status``, what ``ray status`` prints): ``ray start --head`` without an
    autoscaling config starts that monitor too, but with Ray's read-only provider, which only
    mirrors the nodes it sees and names each one's type ``node_<its node id>``
    (``format_readonly_node_type``); any other node type comes from a real provider, which can
    add nodes. Autoscaler v2 (``__autoscaler_v2_enabled`` = 1) publishes no node types, and the
    requests it reports infeasible include ones its node types hold but its ``max_workers`` leave
    no room for now (``ResourceDemandScheduler._try_schedule``): it may grow. Whatever is
    uncertain counts as "may grow", so that no sweep is refused wrongly (it then waits, and its
    progress line says for what): no monitor report within ``wait_s`` (a fresh cluster's monitor
    has not reported its nodes yet), or a report that cannot be read.
    """
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS

    # neither is in Ray's type stubs: _raylet.pyi lacks the constants, protoc's modules build their classes at import
    from ray._raylet import (  # type: ignore[attr-defined]
        GCS_AUTOSCALER_CLUSTER_CONFIG_KEY,
        GCS_AUTOSCALER_STATE_NAMESPACE,
        GCS_AUTOSCALER_V2_ENABLED_KEY,
    )
    from ray.core.generated.autoscaler_pb2 import ClusterConfig  # type: ignore[attr-defined]
    from ray.experimental.internal_kv import _internal_kv_get

    deadline = time.monotonic() + wait_s
    while True:
        try:
            config = _internal_kv_get(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, namespace=GCS_AUTOSCALER_STATE_NAMESPACE)
            if config and (groups := ClusterConfig.FromString(config).node_group_configs):
                if any(
                    group.max_count != 0
                    and all(group.resources.get(name, 0) >= amount for name, (_, amount) in needs.items())
                    for group in groups
                ):
                    return None
                return f"its autoscaler has no node type that holds it either ({', '.join(g.name for g in groups)})"
            if _internal_kv_get(GCS_AUTOSCALER_V2_ENABLED_KEY, namespace=GCS_AUTOSCALER_STATE_NAMESPACE) == b"1":
                return None
            status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
            types = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") if status else None
        except Exception:  # noqa: BLE001 - an unreadable report leaves it uncertain: it may grow
            return None
        if types:
            if all(kind == f"node_{node}" for node, kind in types.items()):
                return "it cannot add nodes (no autoscaler)"
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(1.0)


def pool_size(
    manifest: Manifest, n_packs: int, num_gpus: float | None = None, custom: dict[str, float] | None = None
) -> int:
    """How many actors: what the cluster holds now for the manifest's resources (or ``num_gpus``
    and ``custom`` per actor instead of the manifest's), capped by the work (``n_packs`` calls)."""
    import ray

    res = manifest.resources
    gpus = res.num_gpus if num_gpus is None else num_gpus
    custom = res.custom if custom is None else custom
    total = ray.cluster_resources()
    if gpus > 0:
        fit_slots = int(total.get("GPU", 0) // gpus)
    else:
        fit_slots = int(total.get("CPU", 1) // max(res.num_cpus, 1e-3))
    for name, amount in custom.items():
        fit_slots = min(fit_slots, int(total.get(name, 0) // amount))
    if res.max_workers:
        fit_slots = min(fit_slots, res.max_workers)
    return max(1, min(fit_slots, n_packs))


# --- progress -----------------------------------------------------------------------------------


@dataclass
class Progress:
    """A one-line live status: done / failed / running / remaining, rate and ETA."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0  # fits whose worker the cluster has not placed yet
    waiting_for: str = ""  # what they wait for, once they have waited a while
    start: float = field(default_factory=time.monotonic)
    last_print: float = 0.0
    stream: Any = sys.stderr

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = self.done + self.failed
        rate = finished / elapsed if elapsed > 0 else 0.0
        remaining = self.total - finished
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        waiting = f"waiting for resources {self.waiting} · " if self.waiting else ""
        if self.waiting and self.waiting_for:
            waiting = f"waiting for {self.waiting_for} {self.waiting} · "
        return (
            f"[{finished}/{self.total}] done {self.done} · failed {self.failed} · running {self.running} · "
            f"{waiting}remaining {remaining} · {rate:.2f} fits/s · ETA {eta}"
        )

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        tty = self.stream.isatty()
        if force or tty or now - self.last_print > 5:
            end = "\r" if tty and not force else "\n"
            print(self.line().ljust(100 if tty else 0), end=end, file=self.stream, flush=True)
            self.last_print = now


# --- MLflow --------------------------------------------------------------------------------------


SERVER_LOGGERS = 4


def logging_threads(tracking_uri: str) -> int:
    """How many fits to log at once: a tracking server takes concurrent clients, and logging a
    fit is a dozen small requests (storage reads included) that mostly wait; an embedded SQLite
    store wants one writer."""
    return SERVER_LOGGERS if tracking_uri.startswith(("http://", "https://")) else 1


class MlflowLog:
    """MLflow logging that never stops or slows a sweep.

    Fits are logged from storage by background threads (`logging_threads`), so the driver loop
    only enqueues keys. The first failure switches logging off with a hint to backfill with
    `dip sweep sync-mlflow`.
    """

    def __init__(self, manifest: Manifest, store: Store) -> None:
        self.store = store
        self.settings = manifest.mlflow
        self.tracker: Tracker | None = None
        self.parent = ""
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        if not manifest.mlflow.enabled:
            return
        try:
            self.tracker = manifest_tracker(manifest)
            self.parent = self.tracker.sweep_run(manifest.name, {"storage": manifest.storage_uri})
            self.tracker.log_sweep_files(self.parent, {"manifest.yaml": manifest_text(manifest)})
            print(f"MLflow: {self.tracker.experiment_url()}", file=sys.stderr)
        except TrackingError as err:
            self.disable(err)
            return
        self.threads = [
            threading.Thread(target=self.drain, name=f"mlflow-log-{n}", daemon=True)
            for n in range(logging_threads(self.tracker.tracking_uri))
        ]
        for thread in self.threads:
            thread.start()

    def disable(self, err: Exception) -> None:
        with self.lock:
            if self.tracker is not None:
                print(
                    f"\nwarning: MLflow unavailable ({err}); results are stored, run "
                    f"'dip sweep sync-mlflow' later to backfill",
                    file=sys.stderr,
                )
            self.tracker = None

    def log(self, marker: dict[str, Any]) -> None:
        """Queue a fit that just finished, by its done marker (key and summary)."""
        if self.tracker is not None:
            self.queue.put(marker)

    def drain(self) -> None:
        while (marker := self.queue.get()) is not None:
            if (tracker := self.tracker) is None:
                continue
            try:
                log_stored_fit(tracker, self.parent, self.store, marker, self.settings)
            except TrackingError as err:
                self.disable(err)

    def close(self, timeout: float = 300.0) -> None:
        """Finish logging what is queued (for at most ``timeout`` s), then mark the sweep run finished."""
        if not self.threads:
            return
        for _ in self.threads:
            self.queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if self.tracker is not None:
            if any(thread.is_alive() for thread in self.threads):
                # waiting keys plus a stop sign per busy thread: about the waiting and the in-progress fits
                print(
                    f"\nMLflow logging still busy after {timeout:.0f} s: about {self.queue.qsize()} fits are "
                    f"not logged yet; run 'dip sweep sync-mlflow' to log them",
                    file=sys.stderr,
                )
            try:
                self.tracker.log_sweep_files(self.parent, {"summary.parquet": summary_bytes(self.store)})
                self.tracker.finish_sweep(self.parent)
            except TrackingError as err:
                self.disable(err)


def manifest_tracker(manifest: Manifest) -> Tracker:
    """The tracker of the manifest's MLflow experiment (its name by default)."""
    return Tracker(manifest.mlflow.tracking_uri, manifest.mlflow.experiment or manifest.name)


def manifest_text(manifest: Manifest) -> bytes:
    """The manifest as it ran (defaults filled in), as YAML."""
    return yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False, allow_unicode=True).encode()


def summary_bytes(store: Store) -> bytes:
    """Every done fit's summary row as one Parquet table (`Store.collect`), not written to storage."""
    sink = io.BytesIO()
    pq.write_table(store.collect(write=False, upgrade=upgrade), sink)
    return sink.getvalue()


def spread(count: int, most: int | None, keep: Iterable[int] = ()) -> np.ndarray:
    """Indices of at most `most` of `count` rows (all of them for None): evenly spread from the
    first to the last (the last alone for 1), plus the rows in `keep` while the bound allows.

    Rounding half up keeps the spread rows distinct, as their spacing is at least one row."""
    if most is None or count <= most:
        return np.arange(count)
    marks = sorted({int(i) for i in keep} - {0, count - 1})[: max(most - 2, 0)]
    even = np.floor(np.linspace(count - 1, 0, most - len(marks))[::-1] + 0.5).astype(np.int64)
    return np.union1d(even, np.asarray(marks, dtype=np.int64))


def trajectory_images(trajectory: Trajectory, most: int) -> list[tuple[int, np.ndarray]]:
    """At most `most` snapshots of an image fit, evenly spread from the first to the last, as
    (iteration, H×W or H×W×C uint8) for MLflow's step-indexed images; none for a 1-D fit. Only
    those snapshots are read from storage."""
    if most == 0 or not trajectory.kept or not len(trajectory.iterations):
        return []
    chosen = spread(len(trajectory.iterations), most)
    snapshots = trajectory.read(chosen)
    if snapshots.ndim != 4:
        return []
    pixels = (np.clip(snapshots.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    pictures = pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)
    return [(int(trajectory.iterations[i]), picture) for i, picture in zip(chosen, pictures, strict=True)]


def metric_points(metrics: dict[str, np.ndarray], most: int | None, summary: dict[str, Any]) -> dict[str, np.ndarray]:
    """The rows of a fit's per-iteration table that MLflow gets: at most `most` (`spread`),
    keeping those at the oracle best and the auto-stop, so a chart's peak and stop are exact.

    An MLflow server spends about 0.13 ms of CPU per point (docs/performance.md), so all 10,001
    rows of a paper fit's dozen columns would hold logging to one fit every ~15 s."""
    steps = np.asarray(metrics["iteration"])
    marks = [summary.get("best_iteration"), summary.get("stop_iteration")]
    keep = np.flatnonzero(np.isin(steps, [m for m in marks if isinstance(m, int)]))
    rows = spread(len(steps), most, keep.tolist())
    return {name: np.asarray(column)[rows] for name, column in metrics.items()}


def log_stored_fit(tracker: Tracker, parent: str, store: Store, summary: dict[str, Any], settings: MlflowSpec) -> None:
    """Log one stored fit, given its done marker (`summary`), to MLflow from storage (the only
    path, live or backfill): its per-iteration metrics thinned to `settings.max_metric_points`
    rows, and up to `settings.trajectory_images` snapshots of its trajectory."""
    key = summary["key"]
    table = store.read_metrics(key)
    metrics = metric_points(
        {name: table.column(name).to_numpy() for name in table.column_names}, settings.max_metric_points, summary
    )
    params, numbers = flatten_for_mlflow(summary, set(metrics))
    images = {
        name: store.read_image(key, name)
        for name in ("final", "best", "autostop", "posterior", "degraded")
        if store.has_image(key, name)
    }
    most_images = settings.trajectory_images
    trajectory = trajectory_images(store.open_trajectory(key), most_images) if most_images else []
    tracker.log_fit(parent, key, run_name(summary), params, numbers, metrics, images, store.uri, trajectory)


# --- the sweep ---------------------------------------------------------------------------------


def packs(specs: list[FitSpec], size: int) -> list[list[FitSpec]]:
    """The calls a worker gets: networks ``size`` at a time; classical references one at a time
    (they run on the CPU, so packing them would only serialise them)."""
    networks = [s for s in specs if s.method is None]
    return [networks[i : i + size] for i in range(0, len(networks), size)] + [[s] for s in specs if s.method]


@dataclass
class SweepOutcome:
    done: int
    failed: int
    skipped: int
    failures: dict[str, str]
    seconds: float


class Dispatch:
    """Calls (packs of fits) handed to idle actors, results collected with ``ray.wait`` as they finish.

    Work comes in lanes: each lane's calls go to that lane's actors only (the network fits of a
    GPU sweep to GPU actors, its classical references to CPU actors). Ray retries a call whose
    actor died (``max_task_retries``), but when a whole node dies the calls to its actors fail
    fast ("actor unavailable") until the cluster notices the node is gone, which can use up
    those retries in seconds. So a call that still fails is the dispatcher's to retry: it goes
    back to the front of its lane's queue for another actor (up to ``resources.max_retries``
    times; storage makes a repeated completion harmless). The actor that failed rests for a
    short, growing pause and is then probed with Ray's no-op ``__ray_ready__`` call, every
    second until one succeeds: it gets work again as soon as Ray has restarted it on a live node
    and its constructor has run, and no fit is spent on finding out whether it is back.
    """

    MAX_REST_S = 8.0  # the longest pause after failed calls before an actor is probed
    PROBE_EVERY_S = 1.0

    def __init__(self, lanes: list[tuple[list[Any], list[list[FitSpec]]]], max_retries: int) -> None:
        self.actors = [actor for actors, _ in lanes for actor in actors]
        self.lane_of = [k for k, (actors, _) in enumerate(lanes) for _ in actors]
        self.queues: list[deque[list[FitSpec]]] = [deque(calls) for _, calls in lanes]
        self.idle = list(range(len(self.actors)))
        self.resting: dict[int, float] = {}  # actor index -> when to probe it
        self.probes: dict[Any, int] = {}  # pending __ray_ready__ call -> actor index
        self.strikes = [0] * len(self.actors)  # failed calls in a row, per actor
        self.running: dict[Any, tuple[int, list[FitSpec]]] = {}
        self.lost: Counter[tuple[str, ...]] = Counter()  # failed attempts per call (its fit keys)
        self.max_retries = max_retries
        # An actor Ray has not yet placed and constructed answers no call: until its first
        # __ray_ready__ returns, the fits handed to it wait for resources rather than run.
        self.starting = {actor.__ray_ready__.remote(): i for i, actor in enumerate(self.actors)}
        self.started: set[int] = set()

    def busy(self) -> bool:
        return bool(any(self.queues) or self.running)

    def running_fits(self) -> int:
        """Fits handed to actors that are up (placed and constructed)."""
        return sum(len(call) for i, call in self.running.values() if i in self.started)

    def waiting_fits(self) -> dict[int, int]:
        """Fits handed to actors that the cluster has not placed yet, by lane."""
        waiting: Counter[int] = Counter()
        for i, call in self.running.values():
            if i not in self.started:
                waiting[self.lane_of[i]] += len(call)
        return dict(waiting)

    def _hand_out(self) -> None:
        now = time.monotonic()
        for i, until in list(self.resting.items()):
            if until <= now:
                del self.resting[i]
                self.probes[self.actors[i].__ray_ready__.remote()] = i
        for i in list(self.idle):
            lane = self.queues[self.lane_of[i]]
            if lane:
                self.idle.remove(i)
                call = lane.popleft()
                self.running[self.actors[i].run.remote(list(call))] = (i, call)

    def next(self, timeout: float = 1.0) -> list[tuple[FitSpec, dict[str, Any] | None]]:
        """Finished fits: (spec, record), or (spec, None) for a fit lost beyond its retries."""
        import ray

        self._hand_out()
        if not (self.running or self.probes):
            time.sleep(min(timeout, 0.2))
            return []
        ready, _ = ray.wait([*self.running, *self.probes, *self.starting], num_returns=1, timeout=timeout)
        out: list[tuple[FitSpec, dict[str, Any] | None]] = []
        for ref in ready:
            if ref in self.starting:  # up (or failed to start: its calls fail and are retried as any)
                self.started.add(self.starting.pop(ref))
                continue
            if ref in self.probes:
                self._probed(ref)
                continue
            i, call = self.running.pop(ref)
            try:
                records = ray.get(ref)
            except ray.exceptions.RayError as err:  # its worker or node died, or storage stayed down
                self.strikes[i] += 1
                self.resting[i] = time.monotonic() + min(2.0 ** (self.strikes[i] - 1), self.MAX_REST_S)
                keys = tuple(spec.key for spec in call)
                self.lost[keys] += 1
                retry = self.lost[keys] <= self.max_retries
                print(
                    f"\n{len(call)} fit(s) lost with their worker ({type(err).__name__}); "
                    + (
                        f"attempt {self.lost[keys] + 1} of {self.max_retries + 1} next"
                        if retry
                        else "no retries left (resources.max_retries)"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                if retry:
                    self.queues[self.lane_of[i]].appendleft(call)
                else:
                    out += [(spec, None) for spec in call]
                continue
            self.strikes[i] = 0
            self.idle.append(i)
            out += list(zip(call, records, strict=True))  # execute_fits returns one record per spec, in order
        return out

    def _probed(self, ref: Any) -> None:
        """An answered probe: the actor is alive and idle, or (unreachable still) probed again soon."""
        import ray

        i = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            self.resting[i] = time.monotonic() + self.PROBE_EVERY_S
            return
        self.idle.append(i)


BUNDLE_EVERY = 1000  # fits whose done markers the driver moves into one bundle as they finish


def bundle_finished(store: Store, markers: list[dict[str, Any]]) -> None:
    """Move finished fits' markers into a bundle (`Store.bundle`), so that the next plan and
    collect need not read them one by one. If storage fails now they stay markers, which every
    reader counts just the same, and the sweep goes on."""
    try:
        store.bundle(markers)
    except Exception as err:  # noqa: BLE001 - any failure leaves the markers, which are enough
        print(f"\nwarning: left {len(markers)} done markers unbundled ({one_line(err)})", file=sys.stderr)


def run_sweep(
    manifest: Manifest, address: str | None = None, retry_failed: bool = False, progress: bool = True
) -> SweepOutcome:
    """Run every fit of the manifest that storage does not hold yet."""
    loopback_unless_cluster(address)
    import ray

    specs = expand_specs(manifest)  # every manifest error surfaces before anything is written
    store = open_store(manifest)
    store.check_writable()
    store.write_sweep(manifest.model_dump(mode="json"))
    plan = make_plan(manifest, store, specs)
    todo = plan.todo(retry_failed)
    start = time.monotonic()
    if progress:
        print(
            f"sweep {manifest.name}: {len(plan.specs)} fits, {len(plan.done)} already done, "
            f"{len(plan.failed)} failed before, {len(todo)} to run → {store.uri}",
            file=sys.stderr,
        )
    if not todo:
        return SweepOutcome(0, 0, len(plan.specs), {}, 0.0)

    connect(address)
    stop_on_sigterm()
    res = manifest.resources
    # Classical references (no network) never hold a GPU: in a GPU sweep they get CPU actors,
    # which reserve none of the custom resources (those stand for accelerators).
    cpu_only = [s for s in todo if s.method is not None] if res.num_gpus > 0 else []
    groups = [
        (group, gpus, custom)
        for group, gpus, custom in (
            ([s for s in todo if s not in cpu_only], res.num_gpus, res.custom),
            (cpu_only, 0.0, {}),
        )
        if group
    ]
    local = not (address or os.environ.get("RAY_ADDRESS"))  # a local cluster is all there will ever be
    for _, gpus, custom in groups:
        lane_needs, nodes = worker_needs(gpus, res.num_cpus, custom), ray.nodes()
        if unplaceable(lane_needs, nodes) is None:
            continue
        if fixed := "it cannot add nodes" if local else why_cannot_grow(lane_needs):
            raise UserError(f"sweep {manifest.name}: {unplaceable(lane_needs, nodes, fixed)}")
        if progress:
            print(
                f"no node can hold a worker yet ({scarce(lane_needs, ray.cluster_resources())}): "
                "waiting for the cluster's autoscaler to add one",
                file=sys.stderr,
            )
    mlflow_log = MlflowLog(manifest, store)
    lanes, needs = [], []
    for group, gpus, custom in groups:
        needs.append(worker_needs(gpus, res.num_cpus, custom))
        worker_cls = fit_worker_class(gpus, res.num_cpus, res.max_retries, custom)
        calls = packs(group, res.pack)
        size = pool_size(manifest, len(calls), gpus, custom)
        lanes.append(([worker_cls.remote(store.uri, manifest.storage_options) for _ in range(size)], calls))
    dispatch = Dispatch(lanes, res.max_retries)
    bar = Progress(total=len(todo))
    failures: dict[str, str] = {}
    finished: list[dict[str, Any]] = []  # done markers not bundled yet
    try:
        waiting_since: float | None = None
        while dispatch.busy():
            bar.running = dispatch.running_fits()
            waiting = dispatch.waiting_fits()
            bar.waiting = sum(waiting.values())
            waiting_since = (waiting_since or time.monotonic()) if waiting else None
            bar.waiting_for = bar.waiting_for if waiting else ""
            if waiting_since is not None and time.monotonic() - waiting_since > WAIT_TOLD_AFTER_S:
                total = ray.cluster_resources()
                bar.waiting_for = "; ".join(sorted({scarce(needs[lane], total) for lane in waiting}))
            if progress:
                bar.show()
            for spec, record in dispatch.next():
                if record is None:  # written as a failure so that status shows it
                    reason = f"worker lost more than resources.max_retries={res.max_retries} times"
                    store.write_failure(
                        spec.key, spec.model_dump(mode="json"), reason, "WorkerLost", res.max_retries + 1
                    )
                    record = {
                        "key": spec.key,
                        "status": "done" if store.is_done(spec.key) else "failed",
                        "reason": reason,
                        "skipped": True,
                    }
                if record["status"] == "done":
                    bar.done += 1
                    if not record.get("skipped"):
                        finished.append({"key": record["key"], **record["summary"]})
                        mlflow_log.log(finished[-1])
                        if len(finished) >= BUNDLE_EVERY:
                            bundle_finished(store, finished)
                            finished = []
                else:
                    bar.failed += 1
                    failures[record["key"]] = record["reason"]
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated) or _SIGTERM_SEEN.is_set()
        how = "terminated" if terminated else "interrupted"
        print(f"\n{how}: finished fits are stored; rerun the same command to resume", file=sys.stderr)
        if terminated and not isinstance(stop, Terminated):
            raise Terminated("SIGTERM") from stop
        raise
    finally:
        for actor in dispatch.actors:
            ray.kill(actor)
        bundle_finished(store, finished)
    if progress:
        bar.show(force=True)
    mlflow_log.close()
    return SweepOutcome(bar.done, bar.failed, len(plan.specs) - len(todo), failures, time.monotonic() - start)


def sync_mlflow(manifest: Manifest) -> tuple[int, int]:
    """Log every stored fit that MLflow lacks; returns (newly logged, already there)."""
    store = open_store(manifest)
    tracker = manifest_tracker(manifest)
    parent = tracker.sweep_run(manifest.name, {"storage": manifest.storage_uri})
    tracker.log_sweep_files(parent, {"manifest.yaml": manifest_text(manifest)})
    have = tracker.logged_keys(parent)
    keys = {s.key for s in expand_specs(manifest)}
    missing = store.summaries(keys - have)
    with ThreadPoolExecutor(logging_threads(tracker.tracking_uri)) as pool:
        for _ in pool.map(
            lambda key: log_stored_fit(tracker, parent, store, missing[key], manifest.mlflow), sorted(missing)
        ):
            pass  # a TrackingError is raised here, in order
    tracker.log_sweep_files(parent, {"summary.parquet": summary_bytes(store)})
    tracker.finish_sweep(parent)
    return len(missing), len(have & keys)


def publish_report(manifest: Manifest, folder: Path) -> str:
    """A written report (``dip report --mlflow``) as the sweep run's ``report/`` artifacts;
    returns the run id. The sweep must have been logged (by a run or sync-mlflow) first."""
    tracker = manifest_tracker(manifest)
    parent = tracker.find_sweep_run(manifest.name)
    if parent is None:
        raise UserError(
            f"MLflow ({tracker.tracking_uri}) has no run of sweep {manifest.name!r}: "
            "run the sweep or 'dip sweep sync-mlflow' first"
        )
    tracker.log_sweep_folder(parent, folder, "report")
    return parent


STATUS_REASONS_READ = 100  # failure records `status` reads for their reasons, at most


def status(manifest: Manifest) -> dict[str, Any]:
    """Counts by state, failures grouped by reason, and where things are.

    Counts come from the listings; reasons from at most STATUS_REASONS_READ failure records,
    spread over the failed keys (``failures_read`` says how many), so that status takes about
    as long with 10,000 failures as with 10."""
    store = open_store(manifest)
    plan = make_plan(manifest, store)
    reasons, read = store.failure_reasons(plan.failed, STATUS_REASONS_READ)
    return {
        "sweep": manifest.name,
        "fits": len(plan.specs),
        "done": len(plan.done),
        "failed": len(plan.failed),
        "pending": len(plan.specs) - len(plan.done) - len(plan.failed),
        "failures": dict(reasons.most_common()),
        "failures_read": read,
        "storage": manifest.storage,
        "mlflow": manifest.mlflow.tracking_uri or default_tracking_uri(),
    }


def collect(manifest: Manifest, out: str | None = None, full: bool = False) -> tuple[str, int]:
    """All done fits' summaries as one Parquet file (default ``<storage>/summary.parquet``),
    reading only the markers that file lacks unless `full` (`Store.collect`), and the metrics of
    fits new since the last collect copied into the queryable dataset (`pipeline.query`);
    returns the summary's URI and how many fits were copied."""
    from pipeline.query import consolidate

    store = open_store(manifest)
    table = store.collect(out, upgrade=upgrade, full=full)
    added = consolidate(store, table)
    return out or f"{store.uri.rstrip('/')}/summary.parquet", added
