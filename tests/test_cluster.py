"""Sweeps submitted through the Jobs API to a multi-node Ray cluster on loopback, with faults.

The cluster (devservices.ray_cluster): a head with the Jobs API and two worker nodes with 2 `fakegpu`
each, token authentication on; S3 is moto with versioned buckets (one version per done marker =
no fit completed twice); MLflow is a server of this module's own, so killing it harms no other
test. Nothing here calls ray.init in the pytest process: the session Ray of tests/conftest.py
is left alone, and the cluster's environment (token, PATH) is set only while this module runs.
Recovery times are printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devservices.loopback import cluster_environment, wait_until
from devservices.mlflow_server import MlflowServer
from devservices.ray_cluster import LocalCluster, wait_for_job
from devservices.s3_server import S3Server
from devservices.sweep_checks import completeness, write_manifest
from pipeline import jobs, sweep
from pipeline.cli import main as dip
from pipeline.manifest import Manifest
from pipeline.sources import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
# Waits are bounds on hangs, not on speed: with both cores busy elsewhere a job takes minutes to
# start its driver and actors (torch imports). The recovery times are measured and printed.
PATIENCE_S = 600


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print a measured number even when the test passes."""
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{line}")


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: None
) -> Iterator[tuple[LocalCluster, S3Server, MlflowServer]]:
    """The cluster, S3 and MLflow; with the session's local Ray running beside them, as in a full
    test run (a job must still run on this cluster: test_jobs_run_on_the_cluster_they_were_sent_to)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in cluster_environment().items():
            env.setenv(name, value)
        s3 = S3Server()
        env.setenv("AWS_ENDPOINT_URL", s3.endpoint)  # s3:// manifests, read by client and job alike
        server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
        with contextlib.ExitStack() as cleanup:  # whatever started is stopped, even if a later start fails
            cleanup.callback(s3.stop)
            cleanup.callback(server.kill)
            server.start()
            cluster = LocalCluster.start(workers=2, gpus_per_worker=2)
            cleanup.callback(cluster.shutdown)
            yield cluster, s3, server


@dataclass
class Job:
    """A sweep submitted through the Jobs API, its manifest in a fresh versioned bucket."""

    bucket: str
    manifest: Manifest
    keys: set[str]  # its fits
    job_id: str
    client: Any

    def succeeds(self) -> str:
        """Wait for the job; its logs (for the assertions after it) if it succeeded."""
        status = wait_for_job(self.client, self.job_id, PATIENCE_S)
        logs = self.client.get_job_logs(self.job_id)
        assert status == "SUCCEEDED", logs[-3000:]
        return logs


def submit_on_s3(
    tmp_path: Path, services, name: str, seeds: int, iterations: int, mlflow_uri: str | None = None
) -> Job:
    """Upload a manifest to a fresh versioned bucket, submit it, and wait for its first two fits."""
    cluster, s3, _ = services
    bucket = s3.versioned_bucket()
    path = write_manifest(
        tmp_path / f"{name}.yaml",
        name,
        f"s3://{bucket}/results",
        s3.options(),
        mlflow_uri,
        seeds=seeds,
        iterations=iterations,
        width=8,
        max_workers=2,
    )
    s3.fs().put_file(str(path), f"{bucket}/manifests/{name}.yaml")
    uri = f"s3://{bucket}/manifests/{name}.yaml"
    manifest = read_manifest(uri)
    job = Job(
        bucket,
        manifest,
        {s.key for s in sweep.expand_specs(manifest)},
        jobs.submit(manifest, uri, cluster.dashboard).job_id,
        cluster.client(),
    )
    wait_until(lambda: done_count(s3, bucket) >= 2, PATIENCE_S, "two finished fits")
    return job


def done_count(s3: S3Server, bucket: str) -> int:
    """Fits whose done marker was ever written (the driver deletes markers once it bundles them)."""
    return len(s3.versions(bucket, "results/done/"))


def test_the_jobs_api_refuses_requests_without_the_token(services) -> None:
    cluster, _, _ = services
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/", timeout=10)
    assert err.value.code in (401, 403)
    request = urllib.request.Request(
        f"{cluster.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_jobs_run_on_the_cluster_they_were_sent_to(services) -> None:
    """Each job's driver is started by a new supervisor process; with two Ray clusters on the
    machine, a supervisor that guesses picks the wrong one about half of the time (it did, before
    devservices.ray_cluster wrote the address where `ray start` does), so 8 jobs fail with odds 255/256."""
    import ray

    cluster, _, _ = services
    client = cluster.client()
    show = "import ray; ray.init(); print('GCS', ray.get_runtime_context().gcs_address)"
    for _ in range(8):
        job_id = client.submit_job(entrypoint=f"python -c {shlex.quote(show)}")
        assert wait_for_job(client, job_id, PATIENCE_S) == "SUCCEEDED", client.get_job_logs(job_id)[-2000:]
        joined = re.search(r"GCS (\S+)", client.get_job_logs(job_id)).group(1)
        assert joined == cluster.cluster.gcs_address != ray.get_runtime_context().gcs_address


def test_submit_status_stop_and_resubmit_resumes(services, tmp_path: Path, capsys, request) -> None:
    cluster, s3, _ = services
    bucket = s3.versioned_bucket()
    path = write_manifest(
        tmp_path / "stopgo.yaml",
        "stopgo",
        f"s3://{bucket}/results",
        s3.options(),
        None,
        seeds=12,
        iterations=150,
        width=8,
        max_workers=2,
    )
    keys = {s.key for s in sweep.expand_specs(read_manifest(str(path)))}
    assert dip(["submit", str(path), "--address", cluster.dashboard]) == 0  # a local file: uploaded
    job_id = re.search(r"submitted (\S+)", capsys.readouterr().out).group(1)
    wait_until(lambda: done_count(s3, bucket) >= 2, PATIENCE_S, "two finished fits")

    assert dip(["sweep", "status", str(path)]) == 0  # while it runs, from storage
    status = capsys.readouterr().out
    done = int(re.search(r"(\d+) done", status).group(1))
    assert 2 <= done and "12 fits" in status
    assert dip(["submit", str(path), "--address", cluster.dashboard]) == 0  # same sweep again: not twice
    assert f"{job_id} is already running" in capsys.readouterr().out

    client = cluster.client()
    client.stop_job(job_id)
    assert wait_for_job(client, job_id, PATIENCE_S) == "STOPPED"
    stopped_at = done_count(s3, bucket)
    assert stopped_at < 12

    assert dip(["submit", str(path), "--address", cluster.dashboard]) == 0
    second = re.search(r"submitted (\S+)", capsys.readouterr().out).group(1)
    assert second == f"{job_id}-2"
    assert wait_for_job(client, second, PATIENCE_S) == "SUCCEEDED", client.get_job_logs(second)[-3000:]
    logs = client.get_job_logs(second)
    already = int(re.search(r"(\d+) already done", logs).group(1))
    assert already >= stopped_at  # resumed: what was stored is not run again
    check = completeness(s3, bucket, keys)
    assert check.exact(), check
    say(
        request,
        f"stop/resubmit: {stopped_at} fits stored when stopped, {already} skipped on resubmission, "
        f"{12 - already} run by job {second}",
    )


def test_a_worker_node_killed_mid_sweep_loses_no_fit(services, tmp_path: Path, request) -> None:
    cluster, s3, _ = services
    job = submit_on_s3(tmp_path, services, "nodekill", seeds=12, iterations=150)
    wait_until(lambda: len(cluster.fit_actors()) == 2, PATIENCE_S, "both fit actors")
    actors = cluster.fit_actors()
    victim = cluster.node_of(actors[0].node_id)
    on_victim = sum(1 for a in actors if a.node_id == victim.node_id)
    before = done_count(s3, job.bucket)
    killed = cluster.kill_worker(victim)
    try:
        wait_until(
            lambda: len(cluster.fit_actors()) == 2 and all(a.node_id != victim.node_id for a in cluster.fit_actors()),
            PATIENCE_S,
            "the lost actors to restart on the surviving node",
        )
        restarted = time.monotonic() - killed
        wait_until(lambda: done_count(s3, job.bucket) > before, PATIENCE_S, "a fit finished after the kill")
        next_fit = time.monotonic() - killed
        retried = job.succeeds().count("lost with their worker")
        check = completeness(s3, job.bucket, job.keys)
        assert check.exact(), check
    finally:
        cluster.add_worker()  # the autoscaler's part: capacity back for the next test
        wait_until(lambda: cluster.alive_nodes() == 3, 120, "a replacement node")
    say(
        request,
        f"worker node killed (raylet SIGKILL, {on_victim} fit actor(s) on it): actors running again "
        f"after {restarted:.1f} s, next fit stored after {next_fit:.1f} s; {retried} call(s) handed to "
        f"another actor by the dispatcher; 12/12 fits, each once",
    )


def test_an_s3_outage_mid_sweep_is_retried(services, tmp_path: Path, request) -> None:
    _, s3, _ = services
    job = submit_on_s3(tmp_path, services, "s3outage", seeds=10, iterations=100)
    s3.stop()
    down = time.monotonic()
    time.sleep(4)
    s3.restart()
    back = time.monotonic()
    before = done_count(s3, job.bucket)
    wait_until(
        lambda: done_count(s3, job.bucket) > before or job.client.get_job_status(job.job_id).is_terminal(),
        PATIENCE_S,
        "a fit stored after the outage",
    )
    resumed = time.monotonic() - back
    logs = job.succeeds()
    check = completeness(s3, job.bucket, job.keys)
    assert check.exact(), (check, logs[-3000:])
    say(
        request,
        f"S3 stopped for {back - down:.1f} s: next fit stored {resumed:.1f} s after it came back; "
        f"{check.done}/{check.expected} fits, none failed or twice",
    )


def test_mlflow_killed_mid_sweep_then_sync_makes_it_whole(services, tmp_path: Path, request) -> None:
    _, s3, server = services
    job = submit_on_s3(tmp_path, services, "mlflowkill", seeds=10, iterations=100, mlflow_uri=server.uri)
    server.kill()
    killed_at = done_count(s3, job.bucket)
    assert "dip sweep sync-mlflow" in job.succeeds()  # the driver said what to do
    assert completeness(s3, job.bucket, job.keys).exact()

    start = time.monotonic()
    server.start()
    before = server.fit_run_keys("mlflowkill")
    added, present = sweep.sync_mlflow(job.manifest)
    whole = time.monotonic() - start
    runs = server.fit_run_keys("mlflowkill")
    assert set(runs) == job.keys and set(runs.values()) == {1}  # every fit once, FINISHED
    assert (added, present) == (len(job.keys) - len(before), len(before))
    say(
        request,
        f"MLflow killed after {killed_at} fits: sweep finished without it; restart + sync-mlflow "
        f"logged {added} missing fits ({present} were there) in {whole:.1f} s, none twice",
    )
