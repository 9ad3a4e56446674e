"""The load run: trivial fits submitted through the Jobs API to a multi-node Ray cluster on one
machine, loopback only, with results on an S3 server and runs in an MLflow server.

    python -m bench.cluster --fits 2000       # fits/s; lost and duplicated fits and MLflow runs

The services are devservices' (the cluster is Ray's own test harness, a head with the Jobs API and
worker nodes holding `fakegpu`, token authentication on). S3 is moto's server with a versioned
bucket, so every write of a done marker leaves a version: one version per marker means no fit
completed twice. tests/test_cluster.py runs its fault scenarios on the same services.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from devservices.loopback import cluster_environment
from devservices.mlflow_server import MlflowServer
from devservices.ray_cluster import FAKE_GPU, LocalCluster, wait_for_job
from devservices.s3_server import S3Server
from devservices.sweep_checks import completeness, write_manifest


def load_run(fits: int, workers: int, gpus_per_worker: int, tmp: Path) -> None:
    """Start the services, submit one sweep of ``fits`` one-iteration fits and print rates and losses."""
    from pipeline import jobs, sweep
    from pipeline.sources import read_manifest

    os.environ.update(cluster_environment())
    s3 = S3Server()
    os.environ["AWS_ENDPOINT_URL"] = s3.endpoint  # s3:// manifests are read by the client and by the job
    mlflow_server = MlflowServer(tmp)
    mlflow_server.start()
    start = time.perf_counter()
    cluster = LocalCluster.start(workers=workers, gpus_per_worker=gpus_per_worker)
    print(
        f"cluster: head + {workers} workers × {gpus_per_worker} {FAKE_GPU} up in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    try:
        bucket = s3.versioned_bucket()
        path = write_manifest(
            tmp / "load.yaml",
            "load",
            f"s3://{bucket}/results",
            s3.options(),
            mlflow_server.uri,
            seeds=fits,
            iterations=1,
        )
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
        print(
            f"job {sub.job_id}: {status} in {seconds:.1f} s (submit to finish, MLflow logging drained); "
            f"{summary[-1] if summary else logs[-2000:]}"
        )
        print(f"the driver's last progress line (fits stored): {progress[-1].strip() if progress else '?'}")
        check = completeness(s3, bucket, keys)
        runs = mlflow_server.fit_run_keys("load")
        print(
            f"{fits} fits: {check.done} done, {check.missing} lost, {check.duplicated} completed twice, "
            f"{check.failed} failed, {check.incomplete_folders} incomplete → {check.done / seconds:.1f} fits/s "
            f"end to end through the Jobs API"
        )
        print(
            f"MLflow after the job: {len(set(runs) & keys)} fit runs, "
            f"{sum(1 for n in runs.values() if n > 1)} duplicated"
        )
        synced = time.perf_counter()
        added, present = sweep.sync_mlflow(manifest)
        runs = mlflow_server.fit_run_keys("load")
        print(
            f"sync-mlflow: {added} added, {present} already there in {time.perf_counter() - synced:.1f} s; "
            f"MLflow now {len(set(runs) & keys)} fit runs, {sum(1 for n in runs.values() if n > 1)} duplicated"
        )
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
