"""Questions across fits (pipeline/query.py, `dip query`): the consolidated metrics dataset that
`dip sweep collect` keeps, on local disk and on an S3-compatible server, checked against the
per-fit files it copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import query
from pipeline.cli import main as dip
from pipeline.single import FBC_LEVEL, band_convergence
from pipeline.storage import Store
from tests.test_sweep import tiny_manifest

MEAN_CURVE = (
    "SELECT lam, iteration, avg(psnr_clean) AS psnr FROM metrics GROUP BY ALL ORDER BY lam NULLS FIRST, iteration"
)


def mean_curves_from_fit_files(store: Store) -> dict[float | None, np.ndarray]:
    """The same mean curve, the long way: every fit's own metrics file, averaged with NumPy."""
    curves: dict[float | None, list[np.ndarray]] = {}
    for key in sorted(store.done_keys()):
        lam = store.summary(key).get("lam")
        curves.setdefault(lam, []).append(store.read_metrics(key).column("psnr_clean").to_numpy())
    return {lam: np.mean(np.stack(c), axis=0) for lam, c in curves.items()}


def check_mean_curve(store: Store) -> None:
    answer = query.query(store, MEAN_CURVE)
    expected = mean_curves_from_fit_files(store)
    for lam, curve in expected.items():
        rows = answer[answer["lam"].isna()] if lam is None else answer[answer["lam"] == lam]
        assert np.allclose(rows["psnr"].to_numpy(), curve, atol=1e-4), lam


def dataset_keys(store: Store) -> list[str]:
    return sorted(k for keys in query.read_index(store).values() for k in keys)


def test_collect_then_query_locally_and_incrementally(ray_cluster, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    first = tiny_manifest(tmp_path, str(results), name="q1")
    assert dip(["sweep", "run", str(first)]) == 0
    assert dip(["query", str(first), "SELECT 1"]) == 2  # nothing collected yet: says what to do
    assert "dip sweep collect" in capsys.readouterr().err
    assert dip(["sweep", "collect", str(first)]) == 0
    store = Store(str(results))
    assert dataset_keys(store) == sorted(store.done_keys())
    check_mean_curve(store)
    # every row names its fit, and carries its spec: rows per fit are the fit's logged iterations
    per_fit = query.query(store, "SELECT key, image, seed, count(*) AS n FROM metrics GROUP BY ALL")
    assert len(per_fit) == 4 and set(per_fit["n"]) == {store.read_metrics(per_fit["key"][0]).num_rows}

    # the report's band-convergence iterations in one query equal those computed fit by fit
    crossings = query.band_crossings(store, FBC_LEVEL).set_index("key")
    assert sorted(crossings.index) == sorted(store.done_keys())
    for key in crossings.index:
        assert list(crossings.loc[key].astype(float)) == band_convergence(store.read_metrics(key).to_pandas())

    # a second sweep into the same storage: the next collect copies only its fits, into a new part
    [old_part] = query.read_index(store)
    second = tiny_manifest(tmp_path, str(results), name="q2", seeds=[1])
    assert dip(["sweep", "run", str(second)]) == 0
    assert dip(["sweep", "collect", str(second)]) == 0
    assert "metrics of 4 new fit(s)" in capsys.readouterr().out
    parts = query.read_index(store)
    assert len(parts) == 2 and set(parts[old_part]).isdisjoint(next(v for k, v in parts.items() if k != old_part))
    assert dataset_keys(store) == sorted(store.done_keys())
    check_mean_curve(store)

    # a part that no index names (an interrupted copy) is removed, never read
    stray = results / "metrics" / "part-interrupted.parquet"
    stray.write_bytes((results / "metrics" / old_part).read_bytes())
    # a fit deleted to run again: the dataset is rebuilt without it
    gone = dataset_keys(store)[0]
    assert dip(["sweep", "forget", str(second), gone]) == 0
    assert dip(["sweep", "collect", str(second)]) == 0
    assert not stray.exists()
    assert dataset_keys(store) == sorted(store.done_keys()) and gone not in dataset_keys(store)
    check_mean_curve(store)

    out = tmp_path / "curve.csv"
    assert dip(["query", str(results), MEAN_CURVE, "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(query.query(store, MEAN_CURVE))
    assert dip(["query", str(results), "SELECT nonsense FROM metrics"]) == 2
    assert "query failed" in capsys.readouterr().err


@pytest.mark.slow
def test_query_on_object_storage(tmp_path: Path, s3_store_uri: tuple[str, dict]) -> None:
    uri, options = s3_store_uri
    manifest = tiny_manifest(tmp_path, uri, name="q3", storage_options=options)
    assert dip(["sweep", "run", str(manifest), "--local"]) == 0  # in this process, which has the test's S3 setup
    assert dip(["sweep", "collect", str(manifest)]) == 0
    store = Store(uri, options)
    assert dataset_keys(store) == sorted(store.done_keys())
    check_mean_curve(store)  # DuckDB reads the parts through the store's own fsspec filesystem
