"""MLflow at paper scale: fits per second into one `mlflow server`, from `dip sweep sync-mlflow`
and from a sweep's logging threads, with nothing dropped and nothing duplicated.

    python -m bench.mlflow_scale                              # 50 fits, the manifest's default bound
    python -m bench.mlflow_scale --points all --fits 4        # every row, as before the bound
    python -m bench.mlflow_scale --points 100 200 320 --snapshots 21 --size 512

Writes synthetic paper fits through `Store.write_fit` into a temporary local store, under the keys
of a manifest with ``repeats: N``: 10,001 iterations with a metric row at each (the twelve columns
a real image fit writes: PSNRs, five FBC bands, blur, sharpness, ratio, fallbacks, loss), the four
PNG outputs MLflow gets and optionally a trajectory (``--snapshots`` of ``--size``², as S1-S5
keep 21 at 512²; S6-S8 keep none). It starts a real `mlflow server` (SQLite, devservices) on
127.0.0.1 and for each ``mlflow.max_metric_points`` setting, in an experiment of its own:

- sync: `sweep.sync_mlflow` of all N fits (fits/s, CPU per fit of server and client, database
  growth per fit), then once more (it must log nothing); every fit must have one FINISHED run,
  and one fit's metrics at most the bound of points, one per step, the first and last included;
- sweep: the same fits through `sweep.MlflowLog` (the sweep's background loggers), enqueue to
  close, again one FINISHED run per fit;
- `MlflowClient.get_metric_history` of one metric of one fit (median of 5), what the UI's chart of
  a fit waits for beside its own sampling.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from PIL import Image

from devservices.mlflow_server import MlflowServer
from pipeline import sweep
from pipeline.manifest import FitSpec, Manifest, MlflowSpec, load_manifest
from pipeline.record import Summary
from pipeline.storage import Store

ITERATIONS = 10_000
FBC = [f"fbc_{band}" for band in range(1, 6)]
COLUMNS = ["psnr_target", "psnr_clean", *FBC, "blur", "sharp", "ratio", "fallbacks", "loss"]


def manifest(root: Path, uri: str, fits: int, points: int | None, snapshots: int, name: str) -> Manifest:
    """A sweep of `fits` seeds of one 10,000-iteration fit, tracked on the server at `uri`."""
    doc = {
        "name": name,
        "images": [{"sample": "camera", "crop": 64}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": 8, "depth": 3, "lam": 2},
        "repeats": fits,
        "fit": {"iterations": ITERATIONS, "snapshot_stride": ITERATIONS // (snapshots - 1) if snapshots > 1 else 0},
        "storage": str(root / "store"),
        "mlflow": {"tracking_uri": uri, "experiment": name, "max_metric_points": points},
    }
    return load_manifest(yaml.safe_dump(doc, sort_keys=False))


def picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo-like RGB image (a smooth gradient with noise): it compresses about as a real output does."""
    ramp = np.linspace(0, 200, size)[None, :, None] + np.linspace(0, 50, size)[:, None, None]
    return np.clip(ramp + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, format="PNG")
    return sink.getvalue()


def write_fit(store: Store, spec: FitSpec, snapshots: int, size: int, seed: int) -> None:
    """One synthetic fit with the shape of a real one: a PSNR curve that peaks and declines (the
    oracle best), an auto-stop row, every column at every iteration."""
    rng = np.random.default_rng(seed)
    t = np.arange(ITERATIONS + 1)
    psnr = 22 + 8 * (t / 500) * np.exp(1 - t / 500) - 3 * t / ITERATIONS + rng.normal(0, 0.05, t.size)
    metrics: dict[str, np.ndarray] = {"iteration": t}
    metrics |= {name: rng.normal(0, 1, t.size).astype(np.float32) for name in COLUMNS}
    metrics["psnr_clean"] = psnr.astype(np.float32)
    best, stop = int(np.argmax(metrics["psnr_clean"])), 600 + seed
    outcome: dict[str, float | int | None] = {
        "iterations_run": ITERATIONS,
        "final_psnr": float(metrics["psnr_clean"][-1]),
        "best_psnr": float(metrics["psnr_clean"][best]),
        "best_iteration": best,
        "input_psnr": 20.2,
        "stop_psnr": float(metrics["psnr_clean"][stop]),
        "stop_iteration": stop,
        "posterior_samples": 0,
        "fallbacks": 0,
        "seconds": 600.0,
        "ms_per_iteration": 60.0,
    }
    steps = np.linspace(0, ITERATIONS, snapshots).round().astype(np.int64)
    trajectory = {"snapshot_iterations": steps}
    if snapshots:
        frames = np.stack([picture(rng, size) for _ in range(snapshots)]).transpose(0, 3, 1, 2)
        trajectory["snapshots"] = (frames / 255).astype(np.float16)
    images = {name: png(picture(rng, size)) for name in ("clean", "degraded", "final", "best", "autostop")}
    summary = Summary.of(spec, outcome).row()
    store.write_fit(spec.key, spec.model_dump(mode="json"), summary, metrics, trajectory, images)


def server_cpu_s(server: MlflowServer) -> float:
    """CPU seconds used so far by the server's process group (it runs uvicorn as a child), from
    /proc: unlike fits/s it hardly depends on what else the machine runs, and its inverse is the
    fits/s one core of server sustains."""
    assert server.proc is not None
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == server.proc.pid:  # pgrp; then utime, stime, cutime, cstime
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def database_bytes(server: MlflowServer) -> int:
    """The server's SQLite database with its write-ahead log, if any."""
    return sum(p.stat().st_size for p in server.root.glob("mlflow.db*"))


def check_runs(server: MlflowServer, experiment: str, keys: set[str]) -> None:
    """One FINISHED run per fit: none dropped, none duplicated."""
    counts = server.fit_run_keys(experiment)
    if set(counts) != keys or set(counts.values()) != {1}:
        twice = sum(n > 1 for n in counts.values())
        raise AssertionError(f"{experiment}: {len(counts)} of {len(keys)} fits logged, {twice} more than once")


def fit_run(uri: str, experiment: str, key: str) -> str:
    """The run id of one fit."""
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    [run] = client.search_runs([found.experiment_id], f"tags.`dip.fit_key` = '{key}'")
    return run.info.run_id


def check_points(uri: str, run_id: str, bound: int | None) -> int:
    """Points of one fit's step metrics: within the bound, one per step, first and last included."""
    client = mlflow.MlflowClient(uri)
    total = 0
    for name in COLUMNS:
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        if len(set(steps)) != len(steps) or (bound is not None and len(steps) > bound):
            raise AssertionError(f"{name}: {len(steps)} points, {len(set(steps))} steps, bound {bound}")
        if bound != 0 and not {0, ITERATIONS} <= set(steps):
            raise AssertionError(f"{name} lacks the first or last iteration")
        total += len(steps)
    return total


def history_ms(uri: str, run_id: str) -> float:
    client = mlflow.MlflowClient(uri)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        client.get_metric_history(run_id, "psnr_clean")
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(server: MlflowServer, root: Path, fits: int, points: int | None, snapshots: int, size: int) -> dict:
    label = "all" if points is None else str(points)
    synced = manifest(root, server.uri, fits, points, snapshots, f"scale-sync-{label}")
    store = Store(synced.storage_uri)
    specs = sweep.expand_specs(synced)
    for i, spec in enumerate(specs):
        if not store.is_done(spec.key):
            write_fit(store, spec, snapshots, size, i)
    row: dict[str, Any] = {"points": label, "fits": fits}

    before, cpu = database_bytes(server), (server_cpu_s(server), time.process_time())
    start = time.perf_counter()
    logged, _ = sweep.sync_mlflow(synced)
    seconds = time.perf_counter() - start
    row |= {
        "sync_fits_s": logged / seconds,
        "server_cpu_ms_per_fit": 1000 * (server_cpu_s(server) - cpu[0]) / fits,
        "client_cpu_ms_per_fit": 1000 * (time.process_time() - cpu[1]) / fits,
        "db_mb_per_fit": (database_bytes(server) - before) / 1e6 / fits,
    }
    start = time.perf_counter()
    again = sweep.sync_mlflow(synced)
    row["resync_s"] = time.perf_counter() - start
    keys = {spec.key for spec in specs}
    check_runs(server, synced.name, keys)
    if again != (0, fits):
        raise AssertionError(f"sync logged {logged}, then {again}")
    run_id = fit_run(server.uri, synced.name, specs[0].key)
    row["points_per_fit"] = check_points(server.uri, run_id, points)
    row["history_ms"] = history_ms(server.uri, run_id)

    live = manifest(root, server.uri, fits, points, snapshots, f"scale-sweep-{label}")
    start = time.perf_counter()
    log = sweep.MlflowLog(live, store)
    for spec in specs:
        log.log(store.summary(spec.key))
    log.close(timeout=3600)
    row["sweep_fits_s"] = fits / (time.perf_counter() - start)
    check_runs(server, live.name, keys)
    print(
        f"max_metric_points {label:>4}: sync {row['sync_fits_s']:.2f} fits/s (again: {row['resync_s']:.1f} s), "
        f"sweep loggers {row['sweep_fits_s']:.2f} fits/s; CPU per fit: server {row['server_cpu_ms_per_fit']:.0f} ms, "
        f"client {row['client_cpu_ms_per_fit']:.0f} ms; {row['points_per_fit']} points/fit, "
        f"database +{row['db_mb_per_fit']:.2f} MB/fit, get_metric_history {row['history_ms']:.0f} ms",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=50)
    parser.add_argument(
        "--points", nargs="+", default=["default"], help="max_metric_points settings: numbers, 'all' or 'default'"
    )
    parser.add_argument("--snapshots", type=int, default=0, help="trajectory snapshots per fit (default none)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    args = parser.parse_args()
    default = MlflowSpec().max_metric_points
    settings = [None if p == "all" else default if p == "default" else int(p) for p in args.points]
    print(
        f"{args.fits} fits of {ITERATIONS + 1:,} rows × {len(COLUMNS)} metrics, {args.snapshots} snapshots, "
        f"{args.size}² images; one `mlflow server` (SQLite, 1 worker) on 127.0.0.1",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        server = MlflowServer(Path(tmp))
        server.start()
        try:
            for points in settings:
                measure(server, Path(tmp), args.fits, points, args.snapshots, args.size)
        finally:
            server.kill(grace=10)


if __name__ == "__main__":
    main()
