"""Sweeps end to end on real parts: a local Ray cluster, moto's S3 server, an MLflow server.

Every service listens on 127.0.0.1 and Ray runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from devservices.ray_cluster import HeadStartedByHand
from devservices.sweep_checks import FIT_FILES
from pipeline import sweep
from pipeline.cli import main as dip
from pipeline.manifest import FitSpec, load_manifest
from pipeline.storage import Store, Trajectory

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def tiny_manifest(
    tmp_path: Path,
    storage: str,
    *,
    name: str = "tiny",
    mlflow: dict | None = None,
    storage_options: dict | None = None,
    iterations: int = 20,
    images: dict | None = None,
    lams: list | None = None,
    seeds: list[int] | None = None,
) -> Path:
    """A 4-fit manifest (2 images × λ ∈ {none, 2}) that runs in seconds."""
    doc = {
        "name": name,
        "images": [images or {"sample": ["camera", "astronaut"], "crop": 32}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": 8, "depth": 3},
        "grid": {"lam": lams or [None, 2]},
        "seeds": seeds or [0],
        "fit": {"iterations": iterations, "snapshot_stride": 10, "stop_window": 10},
        "storage": storage,
        "storage_options": storage_options or {},
        "mlflow": mlflow or {"enabled": False},
        "resources": {"num_cpus": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_local_sweep_end_to_end_and_rerun_does_nothing(
    ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "BUNDLE_EVERY", 3)  # the driver bundles 3 markers, then the last one as it ends
    path = tiny_manifest(
        tmp_path,
        str(tmp_path / "results"),
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tiny"},
    )
    manifest = load_manifest(path)
    outcome = sweep.run_sweep(manifest, progress=False)
    assert (outcome.done, outcome.failed) == (4, 0)

    store = Store(str(tmp_path / "results"))
    keys = {s.key for s in sweep.make_plan(manifest).specs}
    assert store.done_keys() == keys
    assert not list((tmp_path / "results" / "done").glob("*.json"))
    assert len(list((tmp_path / "results" / "bundles").glob("*.parquet"))) == 2
    for key in keys:
        files = {p.name for p in (tmp_path / "results" / "fits" / key).iterdir()}
        assert FIT_FILES <= files and store.has_image(key, "clean")
        summary = store.summary(key)
        assert summary["key"] == key and summary["iterations_run"] == 20
        assert store.read_metrics(key).num_rows == 21  # iterations 0 … 20
        assert store.read_trajectory(key)["snapshots"].shape[0] == 3  # iterations 0, 10, 20
    assert len(list((tmp_path / "results" / "images").iterdir())) == 4  # per image one clean, one degraded

    again = sweep.run_sweep(manifest, progress=False)
    assert (again.done, again.skipped) == (0, 4)
    st = sweep.status(manifest)
    assert (st["done"], st["failed"], st["pending"]) == (4, 0, 0)
    out, copied = sweep.collect(manifest)
    assert out.endswith("summary.parquet") and copied == 4  # and the 4 fits' metrics into the query dataset
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "results" / "summary.parquet").num_rows == 4

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`dip.kind` = 'fit'")
    assert sorted(runs["tags.dip.fit_key"]) == sorted(keys)


def test_s3_and_local_storage_give_the_same_results(ray_cluster, tmp_path: Path, s3_store_uri) -> None:
    uri, options = s3_store_uri
    options = options | {"key": "testing", "secret": "testing"}  # workers get credentials explicitly
    local = load_manifest(tiny_manifest(tmp_path, str(tmp_path / "local"), name="local"))
    remote = load_manifest(tiny_manifest(tmp_path, uri, name="remote", storage_options=options))
    assert sweep.run_sweep(local, progress=False).done == 4
    assert sweep.run_sweep(remote, progress=False).done == 4
    a, b = sweep.open_store(local), sweep.open_store(remote)
    assert a.done_keys() == b.done_keys()
    for key in a.done_keys():
        sa, sb = a.summary(key), b.summary(key)
        assert sa["final_psnr"] == pytest.approx(sb["final_psnr"], abs=1e-5)
        assert a.read_metrics(key).column("psnr_clean").to_pylist() == pytest.approx(
            b.read_metrics(key).column("psnr_clean").to_pylist(), abs=1e-5
        )


def test_plan_and_status_read_no_done_marker(tmp_path: Path, s3_store_uri, s3_requests) -> None:
    """Counted by moto: plan and status list the marker folders and read no done marker; status
    reads the failure records of failed fits that are not done, for their reasons."""
    uri, options = s3_store_uri
    manifest = load_manifest(tiny_manifest(tmp_path, uri, storage_options=options))
    a, b, c, d = (spec.key for spec in sweep.make_plan(manifest).specs)
    store = Store(uri, options)
    store.fs.pipe({f"{store.root}/done/{key}.json": json.dumps({"key": key}).encode() for key in (a, b)})
    for key in (b, c):  # b: a stale record of a fit that a retry later finished
        store.fs.pipe_file(
            f"{store.root}/failed/{key}.json", json.dumps({"key": key, "reason": f"failed {key}"}).encode()
        )
    s3_requests(reset=True)
    plan = sweep.make_plan(manifest)
    assert (plan.done, plan.failed, [s.key for s in plan.todo()]) == ({a, b}, {c}, [d])
    st = sweep.status(manifest)
    assert (st["done"], st["failed"], st["pending"], st["failures"]) == (2, 1, 1, {f"failed {c}": 1})
    reads = [path for method, path in s3_requests() if method in ("GET", "HEAD") and path.endswith(".json")]
    assert reads == [f"/{store.root}/failed/{c}.json"]


def test_images_from_a_data_set_on_s3(ray_cluster, tmp_path: Path, s3_store_uri) -> None:
    import io

    import s3fs
    from PIL import Image

    uri, options = s3_store_uri
    options = options | {"key": "testing", "secret": "testing"}
    bucket = uri.split("/")[2]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    for name, colour in [("a.png", (200, 40, 40)), ("b.png", (40, 200, 40))]:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
        fs.pipe(f"{bucket}/data/mini/{name}", buf.getvalue())
    path = tiny_manifest(
        tmp_path, uri, name="s3data", storage_options=options, lams=[2], images={"dataset": "mini", "crop": 32}
    )
    doc = yaml.safe_load(path.read_text()) | {"data_root": f"s3://{bucket}/data"}
    path.write_text(yaml.safe_dump(doc))
    manifest = load_manifest(path)
    assert sorted(s.image_name for s in sweep.expand_specs(manifest)) == ["mini/a.png", "mini/b.png"]
    assert sweep.run_sweep(manifest, progress=False).done == 2


def test_mlflow_server_gets_a_parent_and_nested_runs(ray_cluster, tmp_path: Path, mlflow_server: str) -> None:
    import mlflow

    manifest = load_manifest(
        tiny_manifest(
            tmp_path,
            str(tmp_path / "r"),
            name="tracked",
            mlflow={"tracking_uri": mlflow_server, "experiment": "tracked"},
        )
    )
    assert sweep.run_sweep(manifest, progress=False).done == 4
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["tracked"])
    parents = runs[runs["tags.dip.kind"] == "sweep"]
    children = runs[runs["tags.dip.kind"] == "fit"]
    assert len(parents) == 1 and len(children) == 4
    assert set(children["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    assert (children["status"] == "FINISHED").all()
    assert children["metrics.final_psnr"].notna().all()
    assert set(children["tags.mlflow.runName"]) == {  # what each fit is; its key stays a tag
        f"{image} · denoise σ=25 · decoder{lam} · seed 0" for image in ("camera", "astronaut") for lam in ("", " λ=2")
    }
    assert children["tags.dip.fit_key"].str.fullmatch("[0-9a-f]{16}").all()
    assert not {"metrics.width", "metrics.lam", "metrics.crop", "metrics.seed"} & set(runs.columns)  # params only
    client = mlflow.MlflowClient(mlflow_server)
    for run_id in children["run_id"]:  # snapshots at 0, 10, 20 as the step-indexed image "trajectory"
        names = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "images")]
        steps = {int(m[1]) for n in names if (m := re.match(r"trajectory\+step\+(\d+)\+.*\.png$", n))}
        assert steps == {0, 10, 20}, names

    # the parent run carries the manifest and the summary table, and after `dip report --mlflow` the report
    [parent] = parents["run_id"]
    local = Path(client.download_artifacts(parent, "sweep", str(tmp_path / "dl")))
    assert yaml.safe_load((local / "manifest.yaml").read_text())["name"] == "tracked"
    assert pq.read_table(local / "summary.parquet").num_rows == 4
    manifest_path = tmp_path / "tracked.yaml"
    assert dip(["report", str(manifest_path), "--out", str(tmp_path / "report"), "--mlflow"]) == 0
    assert {"report/index.md", "report/explorer.html", "report/explorer"} <= {
        a.path for a in client.list_artifacts(parent, "report")
    }
    assert client.get_run(parent).info.status == "FINISHED"


def test_mlflow_down_then_sync_backfills_without_duplicates(
    ray_cluster, tmp_path: Path, unused_port: int, mlflow_server: str
) -> None:
    import mlflow

    down = load_manifest(
        tiny_manifest(
            tmp_path,
            str(tmp_path / "r"),
            name="offline",
            mlflow={"tracking_uri": f"http://127.0.0.1:{unused_port}", "experiment": "offline"},
        )
    )
    assert sweep.run_sweep(down, progress=False).done == 4  # fits complete without MLflow
    up = load_manifest(
        tiny_manifest(
            tmp_path,
            str(tmp_path / "r"),
            name="offline",
            mlflow={"tracking_uri": mlflow_server, "experiment": "offline"},
        )
    )
    assert sweep.sync_mlflow(up) == (4, 0)
    assert sweep.sync_mlflow(up) == (0, 4)
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["offline"], filter_string="tags.`dip.kind` = 'fit'")
    assert len(runs) == 4
    [parent] = mlflow.search_runs(experiment_names=["offline"], filter_string="tags.`dip.kind` = 'sweep'")["status"]
    assert parent == "FINISHED"  # a backfill closes the sweep's run again


def write_long_fits(store: Store, specs: list[FitSpec], rows: int) -> dict[str, dict[str, np.ndarray]]:
    """Stored fits with `rows` metric rows (iterations 0 … rows-1) of random values, written
    without running them; fit i has its oracle best at 1234 + i and its auto-stop at 567 + i."""
    tables = {}
    for i, spec in enumerate(specs):
        rng = np.random.default_rng(i)
        table = {"iteration": np.arange(rows)} | {c: rng.normal(size=rows).astype(np.float32) for c in ("psnr", "fbc")}
        summary = {"key": spec.key, "image": spec.image_name, "task": spec.task, "seed": spec.seed, "best_psnr": 30.0}
        summary |= {"best_iteration": 1234 + i, "stop_iteration": 567 + i}
        store.write_fit(spec.key, {}, summary, table, {"snapshot_iterations": np.zeros(0, np.int64)}, {})
        tables[spec.key] = table
    return tables


def test_mlflow_gets_bounded_curves_from_sweep_and_sync_once(tmp_path: Path, mlflow_server: str) -> None:
    """Four stored 2,001-row fits, two logged by a sweep's loggers and all by sync-mlflow, twice:
    with max_metric_points 23, each curve is the 21 rows 0, 100, …, 2000 plus the best and stop
    rows, with the stored values; a fit is logged once, and its summary numbers still are."""
    import mlflow

    path = tiny_manifest(
        tmp_path,
        str(tmp_path / "r"),
        name="bounded",
        mlflow={"tracking_uri": mlflow_server, "experiment": "bounded", "max_metric_points": 23},
    )
    manifest = load_manifest(path)
    store = sweep.open_store(manifest)
    specs = sweep.expand_specs(manifest)
    tables = write_long_fits(store, specs, 2001)

    live = sweep.MlflowLog(manifest, store)
    for spec in specs[:2]:
        live.log(store.summary(spec.key))
    live.close()
    assert sweep.sync_mlflow(manifest) == (2, 2)
    assert sweep.sync_mlflow(manifest) == (0, 4)

    client = mlflow.MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("bounded").experiment_id], "tags.`dip.kind` = 'fit'")
    assert sorted(r.data.tags["dip.fit_key"] for r in runs) == sorted(tables)
    for run in runs:
        i = next(n for n, spec in enumerate(specs) if spec.key == run.data.tags["dip.fit_key"])
        expected = sorted({*range(0, 2001, 100), 1234 + i, 567 + i})
        table = tables[specs[i].key]
        for column in ("psnr", "fbc"):
            history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
            assert [m.step for m in history] == expected
            assert [m.value for m in history] == table[column][expected].astype(np.float64).tolist()
        assert run.data.metrics["best_psnr"] == 30.0 and run.data.metrics["best_iteration"] == 1234 + i


def test_report_to_mlflow_needs_a_manifest_and_a_logged_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "r"
    assert dip(["report", str(store), "--mlflow"]) == 2
    assert "--mlflow needs a manifest" in capsys.readouterr().err


def test_a_bad_image_fails_only_its_own_fits(ray_cluster, tmp_path: Path) -> None:
    from PIL import Image

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (40, 40), (90, 120, 200)).save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    manifest = load_manifest(
        tiny_manifest(tmp_path, str(tmp_path / "r"), images={"uris": [str(good), str(bad)], "crop": 32})
    )
    outcome = sweep.run_sweep(manifest, progress=False)
    assert (outcome.done, outcome.failed) == (2, 2)
    st = sweep.status(manifest)
    assert (st["done"], st["failed"]) == (2, 2)
    [(reason, count)] = st["failures"].items()
    assert count == 2 and "bad.png" in reason
    # A rerun leaves failed fits alone; --retry-failed tries them again (and they fail again).
    assert sweep.run_sweep(manifest, progress=False).skipped == 4
    assert sweep.run_sweep(manifest, retry_failed=True, progress=False).failed == 2


def test_packed_sweep_runs_every_fit_once_as_an_unpacked_one_does(ray_cluster, tmp_path: Path) -> None:
    """resources.pack: 3 puts a bad image's two fits in a pack with a good fit: the bad ones
    fail, every other fit is done once, and all match the same sweep run one fit at a time."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    results = {}
    for pack in (1, 3):
        path = tiny_manifest(tmp_path, str(tmp_path / f"pack{pack}"), name=f"pack{pack}")
        doc = yaml.safe_load(path.read_text())
        doc["images"].append({"uris": [str(bad)], "crop": 32})
        doc["resources"]["pack"] = pack
        path.write_text(yaml.safe_dump(doc))
        manifest = load_manifest(path)
        specs = sweep.make_plan(manifest).specs
        if pack == 3:  # the premise: a pack holds good and bad fits together
            assert any(len({s.image_name == str(bad) for s in call}) == 2 for call in sweep.packs(specs, 3))
        outcome = sweep.run_sweep(manifest, progress=False)
        assert (outcome.done, outcome.failed) == (4, 2)
        assert set(outcome.failures) == {s.key for s in specs if s.image_name == str(bad)}
        assert set(done_markers(tmp_path / f"pack{pack}")) == {s.key for s in specs} - set(outcome.failures)
        results[pack] = sweep.open_store(manifest)
    one, packed = results[1], results[3]
    assert packed.done_keys() == one.done_keys()  # keys do not depend on resources
    for key in one.done_keys():
        assert packed.summary(key)["final_psnr"] == pytest.approx(one.summary(key)["final_psnr"], abs=1e-5)
        assert packed.read_metrics(key).column("psnr_clean").to_pylist() == pytest.approx(
            one.read_metrics(key).column("psnr_clean").to_pylist(), abs=1e-5
        )


# --- the dispatcher: calls lost with their actor go to another, and the actor comes back ----------


def stand_in_worker(tmp_path: Path, dies_on: set[int]) -> object:
    """A fit actor that fails its calls numbered in ``dies_on`` (1-based, over all its restarts:
    the count lives in a file) by exiting its process, and otherwise answers "done" after 1 s."""
    import ray

    counter = tmp_path / f"calls-{len(list(tmp_path.glob('calls-*')))}"
    counter.write_text("0")

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class StandIn:
        def run(self, specs: list[FitSpec]) -> list[dict]:
            calls = int(counter.read_text()) + 1
            counter.write_text(str(calls))
            if calls in dies_on:
                os._exit(1)
            time.sleep(1.0)
            return [{"key": s.image_name, "status": "done"} for s in specs]

    actor = StandIn.remote()
    actor.calls = lambda: int(counter.read_text())
    return actor


def run_dispatch(dispatch: sweep.Dispatch, timeout: float = 120) -> list[tuple[object, dict | None]]:
    out, deadline = [], time.monotonic() + timeout
    while dispatch.busy():
        assert time.monotonic() < deadline, "the dispatcher hung"
        out += dispatch.next()
    return out


def test_a_call_lost_with_its_actor_runs_elsewhere_and_the_restarted_actor_gets_work(
    ray_cluster, tmp_path: Path
) -> None:
    specs = sweep.expand_specs(load_manifest(tiny_manifest(tmp_path, str(tmp_path / "r"), seeds=[0, 1, 2])))
    dying, steady = stand_in_worker(tmp_path, dies_on={1}), stand_in_worker(tmp_path, dies_on=set())
    out = run_dispatch(sweep.Dispatch([([dying, steady], [[s] for s in specs])], max_retries=1))
    assert sorted(spec.key for spec, _ in out) == sorted(s.key for s in specs)  # each fit once
    assert all(record is not None and record["status"] == "done" for _, record in out)
    # 12 calls of 1 s: the steady actor would take them all, were the restarted one not given work
    assert dying.calls() >= 2 and dying.calls() + steady.calls() == len(specs) + 1


def test_a_call_lost_more_than_max_retries_times_is_given_up(ray_cluster, tmp_path: Path) -> None:
    [spec] = sweep.expand_specs(
        load_manifest(tiny_manifest(tmp_path, str(tmp_path / "r"), lams=[2], images={"sample": "camera", "crop": 32}))
    )
    always = stand_in_worker(tmp_path, dies_on={1, 2, 3, 4})
    out = run_dispatch(sweep.Dispatch([([always], [[spec]])], max_retries=2))
    assert out == [(spec, None)] and always.calls() == 3  # the first attempt and two retries


@pytest.mark.parametrize(
    "problem, field",
    [
        ({"fit": {"iterations": "many"}}, "fit.iterations"),
        ({"colour": "blue"}, "colour"),
        ({"grid": {"lam": []}}, "grid.lam"),
        ({"images": [{"dataset": "no-such-set"}]}, "no-such-set"),
        ({"grid": {"lam": [2, 0]}}, "grid.lam[1]: lam must be positive"),
    ],
)
def test_invalid_manifests_fail_before_any_fit(tmp_path: Path, capsys, problem: dict, field: str) -> None:
    path = tiny_manifest(tmp_path, str(tmp_path / "r"))
    doc = yaml.safe_load(path.read_text()) | problem
    path.write_text(yaml.safe_dump(doc))
    assert dip(["sweep", "run", str(path)]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_stored_spec_records_the_channels_the_network_had(tmp_path: Path) -> None:
    """The manifest plans every network with out_channels 3 (NetConfig's default) and the worker
    fits a grey input with 1: spec.json records the 1 that ran, under the planned key. Run as a
    worker with resources.pack runs them (execute_fits packs the networks), without Ray."""
    from pipeline.worker import execute_fits

    images = [{"sample": ["camera", "astronaut"], "crop": 32}, {"sample": "astronaut", "crop": 32, "grey": True}]
    path = tiny_manifest(tmp_path, str(tmp_path / "r"), iterations=10, lams=[None])
    doc = yaml.safe_load(path.read_text()) | {"images": images}
    path.write_text(yaml.safe_dump(doc))
    specs = sweep.expand_specs(load_manifest(path))
    assert len(specs) == 3 and all(s.network["out_channels"] == 3 for s in specs)  # as planned
    store = Store(str(tmp_path / "r"))
    assert [r["status"] for r in execute_fits(specs, store)] == ["done"] * 3
    channels = {}
    for spec in specs:
        stored = store.read_spec(spec.key)
        channels[(spec.image_name, spec.grey)] = stored["network"]["out_channels"]
        assert stored["key"] == spec.key  # the key is the planned spec's, unchanged
        planned = spec.model_dump(mode="json")
        assert stored | {"network": None} == planned | {"network": None}  # nothing else differs
        assert stored["network"] | {"out_channels": 3} == planned["network"]
    # camera is a grey image; astronaut with grey: true is fitted on its luma
    assert channels == {("sample:camera", False): 1, ("sample:astronaut", False): 3, ("sample:astronaut", True): 1}


def test_unreachable_storage_fails_before_any_fit(tmp_path: Path, capsys) -> None:
    path = tiny_manifest(
        tmp_path,
        "s3://nowhere/results",
        storage_options={"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}},
    )
    start = time.monotonic()
    assert dip(["sweep", "run", str(path)]) == 2
    assert "s3://nowhere/results" in capsys.readouterr().err
    assert time.monotonic() - start < 60


# --- crashes: the driver killed, a worker killed ---------------------------------------------------


# `dip sweep run` as started from a terminal, where Ctrl-C raises KeyboardInterrupt: a process
# started in the background by a script (pytest run as `pytest &`) inherits SIGINT ignored, and
# Python then never installs its handler, so the driver is given it back first.
AS_IN_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'dip'; runpy.run_module('pipeline.cli', run_name='__main__')"
)


def start_sweep(path: Path, log: Path) -> subprocess.Popen:
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, "sweep", "run", str(path)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def done_markers(root: Path) -> dict[str, dict[str, Any]]:
    """The done markers of a local store by key, whether still in done/ or already bundled."""
    store = Store(str(root))
    return store.summaries(store.done_keys())


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (its local Ray cluster included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    path = tiny_manifest(tmp_path, str(root), iterations=150, seeds=[0, 1, 2])  # 12 fits of ~2 s
    proc = start_sweep(path, tmp_path / "first.log")
    try:
        wait_for(lambda: len(done_markers(root)) >= 3, 240, "three finished fits")
    finally:
        kill_session(proc)
    before = done_markers(root)
    assert 3 <= len(before) < 12, (tmp_path / "first.log").read_text()[-2000:]

    second = start_sweep(path, tmp_path / "second.log")
    assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    after = done_markers(root)
    keys = {s.key for s in sweep.make_plan(load_manifest(path)).specs}
    assert set(after) == keys  # every fit exactly once: one marker per key, nothing else
    assert all(after[k] == before[k] for k in before), "fits done before the kill were recomputed"
    for key in keys:  # no partial fit: every folder complete
        assert FIT_FILES <= {p.name for p in (root / "fits" / key).iterdir()}
    # Workers of the killed driver may finish the fits they had started; those count as done.
    log = (tmp_path / "second.log").read_text()
    already = int(re.search(r"(\d+) already done", log).group(1))
    assert already >= len(before)
    assert f"{12 - already} fits done, 0 failed" in log


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_stops_cleanly_and_a_rerun_finishes(tmp_path: Path, sig: int, code: int, word: str) -> None:
    root = tmp_path / "r"
    path = tiny_manifest(tmp_path, str(root), iterations=150, seeds=[0, 1])  # 8 fits
    proc = start_sweep(path, tmp_path / "first.log")
    try:
        wait_for(lambda: len(done_markers(root)) >= 2, 240, "two finished fits")
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code
    finally:
        kill_session(proc)
    log = (tmp_path / "first.log").read_text()
    assert f"{word}: finished fits are stored; rerun the same command to resume" in log
    assert "*** SIG" not in log and "PC: @" not in log, log[-3000:]  # no stack dumps from Ray's C++ core
    assert (
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "sweep", "run", str(path)], capture_output=True, timeout=400
        ).returncode
        == 0
    )
    keys = {s.key for s in sweep.make_plan(load_manifest(path)).specs}
    assert set(done_markers(root)) == keys


def worker_pids(session: int) -> list[int]:
    """Processes of the sweep's Ray workers that are running a fit right now (Ray names them
    ray::FitWorker.run): those of the driver's session only, never another sweep's on this machine."""
    out = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout
    return [
        int(line.split()[0])
        for line in out.splitlines()
        if "ray::FitWorker.run" in line and int(line.split()[1]) == session
    ]


@pytest.mark.slow
def test_a_killed_worker_does_not_lose_fits(tmp_path: Path) -> None:
    root = tmp_path / "r"
    path = tiny_manifest(tmp_path, str(root), iterations=300, seeds=[0, 1])  # 8 fits of ~4 s
    proc = start_sweep(path, tmp_path / "run.log")
    try:
        wait_for(lambda: bool(worker_pids(proc.pid)), 240, "a worker running a fit")
        victim = worker_pids(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        kill_session(proc)
    keys = {s.key for s in sweep.make_plan(load_manifest(path)).specs}
    assert set(done_markers(root)) == keys
    assert not (root / "failed").exists() or not list((root / "failed").iterdir())
    summaries = list(done_markers(root).values())
    assert all(s["iterations_run"] == 300 for s in summaries)


def test_work_estimate_counts_a_classical_reference_as_one_iteration() -> None:
    """The S6 smoke sweep: 2 images × 3 σ × (4 networks of 1,000 iterations + BM3D + TV), 64²
    crops. Classical methods have no iterations; planning it used to fail on them."""
    manifest = load_manifest(Path(__file__).parents[1] / "manifests" / "paper" / "S6-denoise.smoke.yaml")
    specs = sweep.make_plan(manifest).specs
    assert len(specs) == 36
    assert sweep.work_estimate(specs) == 2 * 3 * (4 * 1000 + 2) * 64**2


def stored_trajectory(store: Store, key: str, snapshots: np.ndarray) -> Trajectory:
    """`snapshots` stored as a fit's trajectory (at iterations 0, 5, …) and opened for reading."""
    iterations = np.arange(0, 5 * len(snapshots), 5)
    trajectory = {"snapshots": snapshots, "snapshot_iterations": iterations}
    store.write_fit(key, {}, {"key": key}, {"iteration": iterations}, trajectory, {})
    return store.open_trajectory(key)


def test_trajectory_images_are_spread_evenly_and_bounded(tmp_path: Path) -> None:
    """Ten grey snapshots at iterations 0, 5, …, 45, at most four: indices 0, 3, 6, 9 (rounded
    linspace), as H×W uint8 with 1.0 → 255; a 1-D fit or a bound of 0 logs none."""
    store = Store(str(tmp_path / "results"))
    snapshots = np.stack([np.full((1, 4, 6), i / 9, dtype=np.float16) for i in range(10)])
    trajectory = stored_trajectory(store, "grey", snapshots)
    chosen = sweep.trajectory_images(trajectory, 4)
    assert [step for step, _ in chosen] == [0, 15, 30, 45]
    assert all(picture.shape == (4, 6) and picture.dtype == np.uint8 for _, picture in chosen)
    assert chosen[-1][1].max() == 255 and chosen[0][1].max() == 0
    rgb = stored_trajectory(store, "rgb", np.zeros((3, 3, 4, 6), np.float16))
    assert [p.shape for _, p in sweep.trajectory_images(rgb, 24)] == [(4, 6, 3)] * 3
    assert sweep.trajectory_images(trajectory, 0) == []
    assert sweep.trajectory_images(stored_trajectory(store, "signal", np.zeros((3, 1, 8))), 4) == []


def test_spread_keeps_the_ends_and_the_marks_within_the_bound() -> None:
    """2,001 rows at most 21: every 100th; at most 23 with two marks: those and the marks; a
    bound too small for all marks keeps the ends and the first marks; 1 keeps the last row.
    Random cases: within the bound, ascending, the ends and every mark the bound has room for."""
    assert sweep.spread(2001, 21).tolist() == list(range(0, 2001, 100))
    assert sweep.spread(2001, 23, [1234, 567]).tolist() == sorted({*range(0, 2001, 100), 567, 1234})
    assert sweep.spread(10, 3, [7, 4]).tolist() == [0, 4, 9]
    assert sweep.spread(10, 2, [4]).tolist() == [0, 9]
    assert sweep.spread(10, 1).tolist() == [9]
    assert sweep.spread(10, 0).tolist() == []
    assert sweep.spread(10, None).tolist() == sweep.spread(10, 10, [3]).tolist() == list(range(10))
    rng = np.random.default_rng(0)
    for count, most in rng.integers(3, 400, size=(200, 2)):
        keep = rng.integers(0, count, size=3).tolist()
        rows = sweep.spread(int(count), int(most), keep)
        assert len(rows) <= most and rows[0] == 0 and rows[-1] == count - 1 and (np.diff(rows) > 0).all()
        if most >= 2 + len(set(keep) - {0, count - 1}):
            assert set(keep) <= set(rows.tolist())


@pytest.mark.parametrize(
    "resources, field",
    [
        ({"num_gpus": 1}, "resources.num_gpus = 1 per worker, but no node of this Ray cluster has that much GPU"),
        ({"num_cpus": 4}, "resources.num_cpus = 4 per worker, but no node of this Ray cluster has that much CPU"),
        ({"custom": {"accelerator": 1}}, "resources.custom.accelerator = 1 per worker"),
    ],
)
def test_a_local_cluster_that_can_never_place_a_worker_is_an_error_not_a_wait(
    ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], resources: dict, field: str
) -> None:
    """The session's local cluster has one node with 2 CPUs and no GPU: a worker asking for a GPU,
    4 CPUs or a custom resource would wait forever. The sweep exits 2 naming the field and the way out."""
    path = tiny_manifest(tmp_path, str(tmp_path / "r"))
    doc = yaml.safe_load(path.read_text()) | {"resources": resources}
    path.write_text(yaml.safe_dump(doc))
    assert dip(["sweep", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err and "(1 node(s), at most" in err
    assert any(
        f"--set {way_out}" in err for way_out in ("resources.num_gpus=0", "resources.num_cpus=2", "resources.custom={}")
    )
    assert not Store(str(tmp_path / "r")).done_keys()
    override = "resources.num_gpus=0" if "num_gpus" in resources else "resources.num_cpus=1"
    if "custom" not in resources:  # the way out it names works
        assert dip(["sweep", "run", str(path), "--set", override]) == 0


def sweep_at(path: Path, address: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`dip sweep run PATH --address ADDRESS` in a process of its own (this one may hold the
    session's local Ray, which `run_sweep` would join instead)."""
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "sweep", "run", str(path), "--address", address]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def with_resources(path: Path, resources: dict) -> Path:
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"resources": resources}))
    return path


@pytest.mark.slow
def test_a_cluster_started_by_hand_that_can_never_place_a_worker_is_an_error_not_a_wait(tmp_path: Path) -> None:
    """`ray start --head` without an autoscaling config (1 CPU, no GPU), reached with --address,
    cannot grow: a worker asking for a GPU would wait forever, so the sweep exits 2 with one line
    naming the field, what the cluster has and the way out. Node types that an autoscaler
    reports to the GCS decide instead, when there are any: none with a GPU is the same error,
    naming them; one with a GPU means the sweep goes on and waits for it."""
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    head = HeadStartedByHand.start(dict(os.environ))
    try:
        wait_for(lambda: (head.monitor_report() or {}).get("autoscaler_report"), 60, "the monitor's first report")
        path = with_resources(tiny_manifest(tmp_path, str(tmp_path / "r")), {"num_gpus": 1})
        run = sweep_at(path, head.address)
        assert run.returncode == 2, run.stderr[-3000:]
        [line] = [line for line in run.stderr.splitlines() if "resources.num_gpus" in line]
        assert (
            "resources.num_gpus = 1 per worker, but no node of this Ray cluster has that much GPU "
            "(1 node(s), at most 0 GPU each) and it cannot add nodes (no autoscaler)" in line
        )
        assert "--set resources.num_gpus=0" in line
        assert not Store(str(tmp_path / "r")).done_keys()

        def report_node_types(*groups: tuple[str, dict[str, int]]) -> None:
            config = ClusterConfig(
                node_group_configs=[NodeGroupConfig(name=n, resources=r, max_count=4) for n, r in groups]
            )
            GcsClient(address=head.address).report_cluster_config(config.SerializeToString())

        report_node_types(("cpu-workers", {"CPU": 4}))
        run = sweep_at(path, head.address)
        assert run.returncode == 2, run.stderr[-3000:]
        assert (
            "at most 0 GPU each) and its autoscaler has no node type that holds it either (cpu-workers)" in run.stderr
        )

        report_node_types(("cpu-workers", {"CPU": 4}), ("gpu-workers", {"CPU": 4, "GPU": 1}))
        log = tmp_path / "waits.log"
        env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "pipeline.cli", "sweep", "run", str(path), "--address", head.address]
        proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for(lambda: "waiting for the cluster's autoscaler to add one" in log.read_text(), 60, "the wait")
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            kill_session(proc)
        assert "no node can hold a worker yet (GPU (resources.num_gpus = 1, cluster 0))" in log.read_text()
    finally:
        head.stop()


@pytest.mark.slow
def test_an_autoscaling_cluster_is_left_to_add_the_node_a_worker_needs(tmp_path: Path) -> None:
    """A cluster with Ray's autoscaler (v1, fake multi-node provider), whose only worker node type
    has the custom resource `slot` that the head lacks: the sweep is not refused, says it waits
    for the autoscaler, which adds that node, and every fit is done there."""
    node_types = {
        "slot-node": {
            "resources": {"CPU": 1, "slot": 1, "object_store_memory": 200 * 1024**2},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 1,
        }
    }
    head = HeadStartedByHand.start(dict(os.environ), autoscaling=node_types)
    try:
        wait_for(lambda: (head.monitor_report() or {}).get("autoscaler_report"), 60, "the autoscaler's first report")
        path = with_resources(tiny_manifest(tmp_path, str(tmp_path / "r")), {"num_cpus": 1, "custom": {"slot": 1}})
        run = sweep_at(path, head.address, timeout=180)
        assert run.returncode == 0, run.stderr[-3000:]
        assert (
            "no node can hold a worker yet (slot (resources.custom.slot = 1, cluster 0)): "
            "waiting for the cluster's autoscaler to add one" in run.stderr
        )
        assert len(Store(str(tmp_path / "r")).done_keys()) == 4
    finally:
        head.stop()


def test_fits_on_workers_the_cluster_cannot_place_wait_and_say_for_what(ray_cluster, tmp_path: Path) -> None:
    """A lane whose worker asks for a resource no node has (as on an autoscaling cluster before it
    grows): its fits count as waiting, not running, and the line names the resource and field."""
    import ray

    manifest = load_manifest(tiny_manifest(tmp_path, str(tmp_path / "r")))
    specs = sweep.make_plan(manifest).specs
    store = Store(str(tmp_path / "r"))
    needs = sweep.worker_needs(0, 1, {"accelerator": 1})
    stuck = sweep.fit_worker_class(0, 1, 0, {"accelerator": 1}).remote(store.uri, None)
    dispatch = sweep.Dispatch([([stuck], [specs[:2]])], max_retries=0)
    try:
        for _ in range(5):
            assert dispatch.next(timeout=0.5) == []
        assert dispatch.waiting_fits() == {0: 2} and dispatch.running_fits() == 0
    finally:
        ray.kill(stuck)
    told = sweep.scarce(needs, ray.cluster_resources())
    assert told == "accelerator (resources.custom.accelerator = 1, cluster 0)"
    bar = sweep.Progress(total=4, running=0, waiting=2, waiting_for=told)
    assert "running 0 · waiting for accelerator (resources.custom.accelerator = 1, cluster 0) 2 ·" in bar.line()
    assert "waiting" not in sweep.Progress(total=4, running=2).line()
