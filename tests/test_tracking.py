"""pipeline.tracking against a real MLflow server on loopback, and against the embedded SQLite store."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.entities import Run
from mlflow.utils import rest_utils
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from pipeline.tracking import Tracker, TrackingError, default_tracking_uri

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # artifacts are opaque bytes to MLflow


def metrics_table(iterations: int, columns: int, stride: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """A per-iteration table like the fit writes: an iteration column and float columns."""
    rng = np.random.default_rng(seed)
    table = {"iteration": np.arange(0, iterations * stride, stride)}
    table |= {f"m{j}": rng.normal(size=iterations).astype(np.float32) for j in range(columns)}
    return table


def log(tracker: Tracker, parent: str, key: str, iterations: int = 20, **overrides: Any) -> str:
    """log_fit with small defaults, so each test spells out only what it checks."""
    args: dict[str, Any] = {
        "params": {"lam": 2.0},
        "summary": {"best_psnr": 30.0},
        "metrics": metrics_table(iterations, 2),
        "images": {},
        "storage_uri": f"file:///s/{key}",
    }
    return tracker.log_fit(parent, key, f"fit {key}", **(args | overrides))


def fit_runs(tracker: Tracker, parent: str, key: str) -> list[Run]:
    """The nested runs of one fit, as a user finds them with the fluent API."""
    return mlflow.search_runs(
        experiment_ids=[tracker.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' AND tags.dip.fit_key = '{key}'",
        output_format="list",
    )


@pytest.fixture
def tracker(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Tracker:
    """A tracker on the shared server, with an experiment of its own so tests do not interact."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # for the fluent search in checks
    return Tracker(mlflow_server, f"test-{uuid.uuid4().hex[:12]}")


def test_sweep_run_is_found_again(tracker: Tracker) -> None:
    first = tracker.sweep_run("sweep-a", {"storage": "file:///s"})
    again = tracker.sweep_run("sweep-a", {"storage": "file:///s", "fits": "4"})
    other = tracker.sweep_run("sweep-b", {})

    assert again == first != other
    runs = mlflow.search_runs(
        experiment_ids=[tracker.experiment_id],
        output_format="list",
        filter_string="tags.dip.kind = 'sweep' AND tags.dip.sweep = 'sweep-a'",
    )
    assert [r.info.run_id for r in runs] == [first]
    assert runs[0].data.params == {"storage": "file:///s", "fits": "4"}


def test_log_fit_records_params_metrics_and_images(tracker: Tracker, mlflow_server: str, tmp_path: Path) -> None:
    parent = tracker.sweep_run("s", {})
    table = metrics_table(40, 3)
    run_id = log(
        tracker,
        parent,
        "k1",
        params={"lam": 2.0, "net": {"width": 8}, "note": "x" * 7000},
        summary={"best_psnr": 31.5, "stop_iteration": 120, "skipped": None, "nan": float("nan")},
        metrics=table,
        images={"final": IMAGE, "best.png": IMAGE[::-1]},
    )

    [run] = fit_runs(tracker, parent, "k1")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "fit k1" and run.data.tags["dip.fit_key"] == "k1"
    assert run.data.tags["dip.kind"] == "fit" and run.data.tags["dip.storage_uri"] == "file:///s/k1"
    assert run.data.params == {"lam": "2.0", "net": "{'width': 8}", "note": "x" * MAX_PARAM_VAL_LENGTH}
    assert {k: run.data.metrics[k] for k in ("best_psnr", "stop_iteration")} == {
        "best_psnr": 31.5,
        "stop_iteration": 120,
    }
    assert "skipped" not in run.data.metrics and "nan" not in run.data.metrics

    client = mlflow.MlflowClient(mlflow_server)
    for name in ("m0", "m1", "m2"):
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        np.testing.assert_array_equal([m.step for m in history], table["iteration"])
        np.testing.assert_array_equal([m.value for m in history], table[name].astype(np.float64))

    listed = {a.path for a in client.list_artifacts(run_id, "images")}
    assert listed == {"images/final.png", "images/best.png"}
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="images/final.png", dst_path=str(tmp_path), tracking_uri=mlflow_server
    )
    assert Path(local).read_bytes() == IMAGE


def test_log_fit_twice_keeps_one_run(tracker: Tracker, mlflow_server: str) -> None:
    parent = tracker.sweep_run("s", {})
    first = log(tracker, parent, "k", iterations=30)
    second = log(tracker, parent, "k", iterations=30)

    assert second == first
    assert [r.info.run_id for r in fit_runs(tracker, parent, "k")] == [first]
    assert len(mlflow.MlflowClient(mlflow_server).get_metric_history(first, "m0")) == 30


def test_logged_keys_counts_finished_runs_and_unfinished_ones_are_replaced(
    tracker: Tracker, mlflow_server: str
) -> None:
    parent = tracker.sweep_run("s", {})
    other_sweep = tracker.sweep_run("other", {})
    for key in ("a", "b"):
        log(tracker, parent, key)
    log(tracker, other_sweep, "z")
    client = mlflow.MlflowClient(mlflow_server)
    crashed = client.create_run(
        tracker.experiment_id, tags={"mlflow.parentRunId": parent, "dip.kind": "fit", "dip.fit_key": "c"}
    ).info.run_id
    client.log_metric(crashed, "m0", 1.0, step=0)  # half-logged, left RUNNING

    assert tracker.logged_keys(parent) == {"a", "b"}

    replaced = log(tracker, parent, "c")
    assert replaced != crashed
    assert client.get_run(crashed).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in fit_runs(tracker, parent, "c")] == [replaced]
    assert tracker.logged_keys(parent) == {"a", "b", "c"}


def test_metrics_travel_in_batches(tracker: Tracker, mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,500 values (500 iterations × 5 columns) take at most 3 log-batch requests.

    Counted at the HTTP layer with a pass-through wrapper: every request still reaches the server.
    """
    requests: list[str] = []
    send = rest_utils.http_request

    def counting(host_creds: Any, endpoint: str, method: str, *args: Any, **kwargs: Any) -> Any:
        requests.append(endpoint)
        return send(host_creds, endpoint, method, *args, **kwargs)

    parent = tracker.sweep_run("s", {})
    monkeypatch.setattr(rest_utils, "http_request", counting)
    run_id = log(tracker, parent, "big", metrics=metrics_table(500, 5))

    assert 1 <= sum(e.endswith("/runs/log-batch") for e in requests) <= 3
    client = mlflow.MlflowClient(mlflow_server)
    assert [len(client.get_metric_history(run_id, f"m{j}")) for j in range(5)] == [500] * 5


def test_unreachable_server_fails_fast(unused_port: int) -> None:
    tracker = Tracker(f"http://127.0.0.1:{unused_port}", "nowhere")
    start = time.monotonic()
    with pytest.raises(TrackingError) as sweep_error:
        tracker.sweep_run("s", {})
    with pytest.raises(TrackingError):
        log(tracker, "0" * 32, "k")

    assert time.monotonic() - start < 30
    assert "\n" not in str(sweep_error.value)


def test_embedded_sqlite_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"

    tracker = Tracker(None, "local")
    parent = tracker.sweep_run("s", {"storage": "file:///s"})
    first = log(tracker, parent, "k", images={"final": IMAGE})

    assert log(tracker, parent, "k") == first
    assert tracker.logged_keys(parent) == {"k"}
    assert (tmp_path / "mlflow.db").is_file()
    [image] = tmp_path.glob("mlartifacts/**/images/final.png")
    assert image.read_bytes() == IMAGE


def test_the_experiment_says_it_holds_training_runs(tracker: Tracker, mlflow_server: str) -> None:
    """MLflow's UI opens an experiment on the view its kind tag names; an experiment made without
    it (by an older version, or by hand) gets it on first use."""
    client = mlflow.MlflowClient(mlflow_server)
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    name = f"by-hand-{uuid.uuid4().hex[:12]}"
    bare = client.create_experiment(name)
    assert "mlflow.experimentKind" not in client.get_experiment(bare).tags
    assert Tracker(mlflow_server, name).experiment_id == bare
    assert client.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"
