"""The summary record end to end: written by real fits, typed by collect, read by the report,
flattened for MLflow; and sources (manifests, stores) opened alike from local paths and S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import yaml

from dipmodel.fit import FitResult
from pipeline.cli import main as dip
from pipeline.manifest import FitSpec, MlflowSpec, expand, load_manifest
from pipeline.record import run_name
from pipeline.report import load_fits
from pipeline.single import band_convergence, plateau_iteration
from pipeline.sources import is_manifest, open_store, read_manifest
from pipeline.storage import Store
from pipeline.sweep import log_stored_fit
from pipeline.tracking import Tracker
from pipeline.worker import execute_fit, fit_summary, prepare

REPO = Path(__file__).resolve().parents[1]
IMAGE_FIT = {
    "images": [{"sample": "camera", "crop": 32}],
    "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
    "model": {"name": "decoder", "width": 8, "depth": 3, "lam": 2},
    "seeds": [0],
    "fit": {"iterations": 10, "lr": 0.01},
}
SIGNAL_FIT = {
    "images": [{"signal": {"length": 256, "freqs": [5, 50]}}],
    "tasks": [{"task": "clean"}],
    "model": {"name": "dip_linear_1d", "width": 16, "depth": 3},
    "seeds": [0],
    "fit": {"iterations": 20, "lr": 0.003, "metric_stride": 5, "stop_window": 10},
}
RESPONSE = {
    "images": [{"impulse": 64}],
    "tasks": [{"task": "upsampling_response", "params": {"stride": 2}}],
    "model": {"name": "decoder", "upsample": "nearest"},
    "seeds": [0],
}


def manifest_file(folder: Path, name: str, doc: dict[str, Any], storage: str, **extra: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "storage": storage, "mlflow": {"enabled": False}, **doc, **extra}))
    return path


def run_fits(path: Path, store: Store) -> list[FitSpec]:
    """Expand a manifest and run its fits in this process into `store` (no Ray)."""
    specs = expand(load_manifest(path))
    for spec in specs:
        record = execute_fit(spec, store)
        assert record["status"] == "done", record.get("reason")
    return specs


@pytest.fixture(scope="module")
def three_kinds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, FitSpec]]:
    """An image fit, a 1-D signal fit and a layer-response measurement in one store."""
    folder = tmp_path_factory.mktemp("record")
    store = Store(str(folder / "results"))
    specs = {
        kind: run_fits(manifest_file(folder, kind, doc, store.uri), store)[0]
        for kind, doc in (("image", IMAGE_FIT), ("signal", SIGNAL_FIT), ("response", RESPONSE))
    }
    return store, specs


def test_every_kind_round_trips_through_collect_and_load_fits(three_kinds: tuple[Store, dict[str, FitSpec]]) -> None:
    store, specs = three_kinds
    table = store.collect()  # the markers as written now carry their kind
    written = pq.read_table(store.fs.open(f"{store.root}/summary.parquet", "rb"))
    assert written.equals(table)
    expected_types = {
        "key": pa.string(),
        "kind": pa.string(),
        "seed": pa.int64(),
        "crop": pa.int64(),
        "grey": pa.bool_(),
        "lam": pa.float64(),
        "width": pa.int64(),
        "iterations": pa.int64(),
        "final_psnr": pa.float64(),
        "iterations_run": pa.int64(),
        "param_sigma": pa.float64(),
        "param_stride": pa.int64(),
        "converged_k1": pa.int64(),
        "max_error_exact": pa.float64(),
    }
    assert {name: table.schema.field(name).type for name in expected_types} == expected_types

    fits = load_fits(store).set_index("key")
    assert {kind: fits.loc[spec.key, "kind"] for kind, spec in specs.items()} == {
        "image": "image",
        "signal": "signal",
        "response": "response",
    }
    assert fits["one_d"].to_dict() == {spec.key: kind == "signal" for kind, spec in specs.items()}
    image, signal, response = (fits.loc[specs[k].key] for k in ("image", "signal", "response"))
    assert (image["lam"], image["param_sigma"], image["seed"]) == (2.0, 25.0, 0)
    assert signal["converged_k1"] == store.summary(specs["signal"].key)["converged_k1"]
    assert np.isnan(image["converged_k1"]) and np.isnan(response["final_psnr"])
    assert response["param_stride"] == 2 and response["max_error_exact"] < 1e-5
    assert fits["seed"].dtype == np.int64 and fits["final_psnr"].dtype == np.float64


def test_the_worker_stores_the_numbers_of_the_curves_the_report_needs(tmp_path: Path) -> None:
    """Band 1 reaches 0.9 × its peak 1.0 first at iteration 20 (0.95); band 2 0.9 × 0.5 = 0.45 at
    30 (0.46); band 3 skips its NaN row: 0.9 × 0.2 = 0.18, first reached at 20 (0.2, not 0.1 at 0).
    The bands end at 0.98, 0.5, 0.17; the PSNR peaks at 28 and is within 0.5 dB of it from 20 (27.6)."""
    [spec] = expand(load_manifest(manifest_file(tmp_path, "bands", IMAGE_FIT, str(tmp_path / "results"))))
    problem = prepare(spec, "cpu", None).problem
    metrics = {
        "iteration": np.array([0, 10, 20, 30, 40], dtype=np.int64),
        "fbc_1": np.float32([0.2, 0.5, 0.95, 1.0, 0.98]),
        "fbc_2": np.float32([0.0, 0.1, 0.3, 0.46, 0.5]),
        "fbc_3": np.float32([0.1, np.nan, 0.2, 0.19, 0.17]),
        "psnr_clean": np.float32([10, 20, 27.6, 28, 27]),
    }
    final = problem.clean[0].numpy()
    result = FitResult(metrics, np.zeros(40), final, 40, None, np.zeros(0, dtype=np.int64))
    row = fit_summary(spec, result, problem).row()
    assert {k: v for k, v in row.items() if k.startswith("fbc_") or k == "plateau_iteration"} == {
        "fbc_converged_1": 20,
        "fbc_converged_2": 30,
        "fbc_converged_3": 20,
        "fbc_final_1": pytest.approx(0.98),
        "fbc_final_2": 0.5,
        "fbc_final_3": pytest.approx(0.17),
        "plateau_iteration": 20,
    }


def test_a_real_fit_stores_the_numbers_of_its_curves_typed(three_kinds: tuple[Store, dict[str, FitSpec]]) -> None:
    store, specs = three_kinds
    key = specs["image"].key
    marker = store.summary(key)
    metrics = store.read_metrics(key).to_pandas()
    bands = [marker[f"fbc_converged_{b}"] for b in range(1, 6)]
    assert bands == band_convergence(metrics) and all(isinstance(it, int) for it in bands)
    assert [marker[f"fbc_final_{b}"] for b in range(1, 6)] == list(metrics.iloc[-1][[f"fbc_{b}" for b in range(1, 6)]])
    assert marker["plateau_iteration"] == plateau_iteration(metrics)
    table = store.collect(write=False)
    types = {name: table.schema.field(name).type for name in ("fbc_converged_5", "fbc_final_5", "plateau_iteration")}
    assert types == {"fbc_converged_5": pa.int64(), "fbc_final_5": pa.float64(), "plateau_iteration": pa.int64()}
    assert "fbc_converged_1" not in store.summary(specs["signal"].key)  # 1-D fits have no FBC


def old_marker(store: Store, key: str, image: str, task: str, **columns: Any) -> None:
    """A fit stored as before rows had a kind (its summary exactly as the worker wrote it then)."""
    summary = {"key": key, "sweep": "old", "image": image, "task": task, "seed": 0, "model": "decoder"} | columns
    store.write_fit(
        key,
        {"image_name": image, "task": task},
        summary,
        {"iteration": np.arange(3, dtype=np.int64), "psnr_target": np.float32([1, 2, 3])},
        {"snapshot_iterations": np.array([], dtype=np.int64)},
        {},
    )


def test_markers_without_kind_get_it_from_task_and_image(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "old"))
    old_marker(store, "a" * 16, "signal:256:5+50", "clean", converged_k1=40, final_psnr=30.0)
    old_marker(store, "b" * 16, "impulse:64", "upsampling_response", param_stride=4, max_error_exact=1e-7)
    old_marker(store, "c" * 16, "sample:camera", "denoise", param_sigma=25, final_psnr=28.0)
    assert "kind" not in store.summary("a" * 16)
    assert store.collect(write=False).column("kind").null_count == 3  # storage alone adds nothing

    fits = load_fits(store).set_index("key")
    assert fits["kind"].to_dict() == {"a" * 16: "signal", "b" * 16: "response", "c" * 16: "image"}
    assert fits.loc["c" * 16, "param_sigma"] == 25.0 and fits["param_sigma"].dtype == np.float64


def test_a_value_that_does_not_fit_its_column_names_the_column_and_fit(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "bad"))
    old_marker(store, "d" * 16, "sample:camera", "denoise", final_psnr=28.0)
    old_marker(store, "e" * 16, "sample:camera", "denoise", final_psnr="high")
    with pytest.raises(ValueError, match=r"'final_psnr' of fit e{16}"):
        store.collect(write=False)


def test_mlflow_gets_the_record_flattened_once(three_kinds: tuple[Store, dict[str, FitSpec]], tmp_path: Path) -> None:
    store, specs = three_kinds
    spec = specs["image"]
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "record")
    parent = tracker.sweep_run("image", {})
    log_stored_fit(tracker, parent, store, store.summary(spec.key), MlflowSpec(trajectory_images=0))
    [run] = mlflow.MlflowClient(tracker.tracking_uri).search_runs(
        [tracker.experiment_id], f"tags.dip.fit_key = '{spec.key}'"
    )
    # Params as MLflow stores them (text), from the spec itself; None settings are not logged.
    expected = {
        "image": "sample:camera",
        "kind": "image",
        "task": "denoise",
        "seed": "0",
        "crop": "32",
        "grey": str(spec.grey),
        "method": "dip",
        "model": "decoder",
        "width": "8",
        "depth": "3",
        "lam": "2.0",
        "iterations": "10",
        "lr": "0.01",
        "param_sigma": "25.0",
    }
    assert expected.items() <= run.data.params.items()
    assert "key" not in run.data.params and "None" not in run.data.params.values()
    summary = store.summary(spec.key)
    assert run.data.metrics["final_psnr"] == pytest.approx(summary["final_psnr"])
    assert not {"seed", "width", "lam"} & set(run.data.metrics)  # settings are params, not metrics


def test_report_reads_a_manifest_and_store_on_s3(
    three_kinds: tuple[Store, dict[str, FitSpec]],
    tmp_path: Path,
    s3_store_uri: tuple[str, dict],
    s3_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, options = s3_store_uri
    path = manifest_file(tmp_path, "remote", IMAGE_FIT, uri, storage_options=options)
    bucket = uri.removeprefix("s3://").split("/")[0]
    store = open_store(str(path))  # a local manifest naming an S3 store
    assert store.uri == uri
    run_fits(path, store)
    store.fs.put_file(str(path), f"{bucket}/manifests/remote.yaml")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # how the client finds the manifest's own endpoint
    # s3fs reuses a file system made with the same arguments; one from an earlier test in this
    # process would still point at that test's (stopped) server
    s3fs.S3FileSystem.clear_instance_cache()
    remote = f"s3://{bucket}/manifests/remote.yaml"
    assert read_manifest(remote).storage == uri and open_store(remote).uri == uri

    assert dip(["report", remote, "--out", str(tmp_path / "out")]) == 0
    index = (tmp_path / "out" / "index.md").read_text()
    assert "# Report: remote" in index and f"Storage `{uri}`" in index and "fits done: 1" in index


@pytest.mark.parametrize(
    ("source", "manifest"),
    [
        ("m.yaml", True),
        ("s3://b/sweeps/m.yml", True),
        ("s3://b/results", False),
        ("results/", False),
        ("file:///x/m.yaml", True),
    ],
)
def test_a_yaml_source_is_a_manifest_anything_else_a_store(source: str, manifest: bool) -> None:
    assert is_manifest(source) is manifest


def test_the_report_needs_neither_sweep_nor_mlflow() -> None:
    code = (
        "import pipeline.report, sys; "
        "assert 'mlflow' not in sys.modules and 'pipeline.sweep' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env=os.environ | {"PYTHONPATH": str(REPO)})


@pytest.mark.parametrize(
    "row, name",
    [
        (
            {"image": "standard9/image_F16_512rgb.png", "task": "denoise", "param_sigma": 25.0}
            | {"model": "decoder", "lam": 2.0, "seed": 0, "method": None},
            "image_F16_512rgb · denoise σ=25 · decoder λ=2 · seed 0",
        ),
        (
            {"image": "set5/baby.png", "task": "superres", "param_factor": 4, "param_sigma": None}
            | {"model": "encoder_decoder_skip", "optimizer": "sgld", "lam": float("nan"), "seed": 3},
            "baby · superres ×4 · encoder_decoder_skip sgld · seed 3",
        ),
        (
            {"image": "cbsd68/101085.png", "task": "denoise", "param_sigma": 50, "method": "bm3d", "seed": 0},
            "101085 · denoise σ=50 · bm3d · seed 0",
        ),
        (
            {"image": "sample:camera", "task": "clean", "model": "convnet", "seed": 1},
            "camera · clean · convnet · seed 1",
        ),
    ],
)
def test_a_run_is_named_by_what_it_fits(row: dict[str, Any], name: str) -> None:
    """Image stem, task and its parameters, the network (λ, a non-Adam optimiser) or method, seed."""
    assert run_name(row) == name
