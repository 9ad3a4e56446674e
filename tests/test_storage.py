"""Storage: the layout, the done-marker-last rule, first completion wins, on local files and on S3."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.record import ROW_SCHEMA
from pipeline.storage import StorageError, Store, with_retries


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    """(URI, storage options): a relative local path (resolved against the cwd) or a fresh S3 bucket."""
    if request.param == "local":
        monkeypatch.chdir(tmp_path)
        return "results", {}
    return request.getfixturevalue("s3_store_uri")


@pytest.fixture
def store(location: tuple[str, dict]) -> Store:
    return Store(*location)


def make_fit(seed: int = 0, **summary_extra: Any) -> dict[str, Any]:
    """The arguments of one write_fit, with the dtypes a real fit produces."""
    rng = np.random.default_rng(seed)
    key = f"{seed:016x}"
    return {
        "key": key,
        "spec": {"image_name": "peppers.png", "task": "denoise", "task_params": {"sigma": 25}, "seed": seed},
        "summary": {
            "key": key,
            "image": "peppers",
            "task": "denoise",
            "param_sigma": 25,
            "seed": seed,
            "lam": np.float32(2.0),
            "best_psnr": float(rng.uniform(20, 30)),
            "stop_iteration": None,
        }
        | summary_extra,
        "metrics": {
            "iteration": np.arange(0, 50, 10, dtype=np.int32),
            "psnr": rng.random(5, dtype=np.float32),
            "fbc_0": rng.random(5),
        },
        "trajectory": {
            "snapshots": rng.random((3, 1, 8, 8)).astype(np.float16),
            "snapshot_iterations": np.array([0, 20, 40], dtype=np.int64),
        },
        "images": {"final": b"\x89PNG final" + bytes([seed]), "best": b"\x89PNG best"},
    }


def read_back(store: Store, key: str) -> dict[str, Any]:
    return {
        "spec": store.read_spec(key),
        "summary": store.summary(key),
        "metrics": store.read_metrics(key),
        "trajectory": store.read_trajectory(key),
        "images": {name: store.read_image(key, name) for name in ("final", "best")},
    }


def assert_same_fit(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["spec"] == want["spec"]
    assert got["images"] == want["images"]
    assert set(got["trajectory"]) == set(want["trajectory"])
    for name, array in want["trajectory"].items():
        assert got["trajectory"][name].dtype == array.dtype
        np.testing.assert_array_equal(got["trajectory"][name], array)


def test_round_trip(store: Store) -> None:
    fit = make_fit()
    assert store.uri.startswith(("file:///", "s3://"))
    assert store.write_fit(**fit) is True

    assert_same_fit(read_back(store, fit["key"]), fit)
    assert store.summary(fit["key"]) == fit["summary"] | {"lam": 2.0}  # numpy scalars stored as numbers
    metrics = store.read_metrics(fit["key"])
    assert metrics.column_names == ["iteration", "psnr", "fbc_0"]
    assert [str(t) for t in metrics.schema.types] == ["int64", "float", "double"]
    for name, values in fit["metrics"].items():
        np.testing.assert_array_equal(metrics.column(name).to_numpy(), values)
    assert store.has_image(fit["key"], "final") and not store.has_image(fit["key"], "autostop")
    assert store.done_keys() == {fit["key"]}
    assert store.is_done(fit["key"])


def test_done_marker_is_written_last(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    fit = make_fit()
    write = Store._write

    def crash_at_marker(self: Store, path: str, data: bytes) -> None:
        if "/done/" in path:
            raise RuntimeError("killed before the marker")
        write(self, path, data)

    monkeypatch.setattr(Store, "_write", crash_at_marker)
    with pytest.raises(RuntimeError, match="killed"):
        store.write_fit(**fit)
    assert store.read_spec(fit["key"]) == fit["spec"]  # the data files were written ...
    # ... and a local write interrupted mid-marker leaves only a temporary name
    store.fs.makedirs(f"{store.root}/done", exist_ok=True)
    store.fs.pipe_file(f"{store.root}/done/.{fit['key']}.json.0123.tmp", b"{")
    assert store.done_keys() == set()
    assert not store.is_done(fit["key"])
    assert store.collect(write=False).num_rows == 0

    monkeypatch.undo()
    assert store.write_fit(**fit) is True
    assert store.done_keys() == {fit["key"]}


def test_first_completion_wins(store: Store) -> None:
    first, second = make_fit(seed=1), make_fit(seed=2)
    second["key"] = second["summary"]["key"] = first["key"]
    assert store.write_fit(**first) is True
    assert store.write_fit(**second) is False
    assert_same_fit(read_back(store, first["key"]), first)
    assert store.summary(first["key"])["seed"] == 1


def test_failure_records(store: Store) -> None:
    fit = make_fit()
    store.write_failure(fit["key"], fit["spec"], "ImageError: cannot read\nsecond line", "ImageError", attempts=2)
    record = store.failed()[fit["key"]]
    assert record["reason"] == "ImageError: cannot read"
    assert (record["error_type"], record["attempts"], record["spec"]) == ("ImageError", 2, fit["spec"])
    assert "time" in record

    assert store.write_fit(**fit) is True
    assert store.failed() == {}
    store.write_failure(fit["key"], fit["spec"], "late failure of a retry", "RayActorError", attempts=3)
    assert store.failed() == {}
    assert store.is_done(fit["key"])


def test_write_sweep_keeps_a_different_manifest(store: Store) -> None:
    first, second = {"name": "s", "seeds": [0, 1]}, {"name": "s", "seeds": [0, 1, 2]}
    store.write_sweep(first)
    store.write_sweep(first)  # same content: nothing new
    assert [p.rsplit("/", 1)[1] for p in store.fs.ls(store.root, detail=False)] == ["sweep.json"]

    store.write_sweep(second)
    names = sorted(p.rsplit("/", 1)[1] for p in store.fs.ls(store.root, detail=False))
    assert len(names) == 2 and names[0].startswith("sweep-") and names[1] == "sweep.json"
    assert json.loads(store.fs.cat_file(f"{store.root}/sweep.json")) == first
    assert json.loads(store.fs.cat_file(f"{store.root}/{names[0]}")) == second


def test_collect(store: Store, tmp_path: Path) -> None:
    empty = store.collect(write=False)
    assert (empty.num_rows, empty.column_names) == (0, ROW_SCHEMA.names)

    fits = [make_fit(0), make_fit(1, param_ratio=0.25), make_fit(2, note="third")]
    for fit in reversed(fits):
        store.write_fit(**fit)
    table = store.collect()
    assert table.num_rows == 3
    assert table.column("key").to_pylist() == [f["key"] for f in fits]
    assert table.column("param_ratio").to_pylist() == [None, 0.25, None]
    assert table.column("note").to_pylist() == [None, None, "third"]
    assert table.column("stop_iteration").null_count == 3
    assert table.column_names[0] == "key"
    # every column of the record, and those others some fit has a value for
    assert set(table.column_names) == set(ROW_SCHEMA.names) | {"param_sigma", "param_ratio", "note"}
    assert pq.read_table(store.fs.open(f"{store.root}/summary.parquet", "rb")).equals(table)

    out = tmp_path / "elsewhere" / "summary.parquet"
    store.collect(str(out))
    assert pq.read_table(out).equals(table)


def test_check_writable(store: Store) -> None:
    store.check_writable()
    assert not [p for p in store.fs.find(store.root) if ".probe-" in p]


def test_check_writable_unreachable_s3(s3_server: str, unused_port: int) -> None:
    """Fails in seconds, with one line naming the URI (s3_server provides the fake credentials)."""
    uri = "s3://nowhere/results"
    store = Store(uri, {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{unused_port}"}})
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"^storage {uri} is not usable: EndpointConnectionError") as err:
        store.check_writable()
    assert time.monotonic() - start < 15
    assert "\n" not in str(err.value)


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder nobody can write to: root ignores modes, so for root it is made immutable (chattr +i)."""
    path.mkdir(mode=0o555)
    if os.geteuid() != 0:
        yield path
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], check=False).returncode:
        pytest.skip("running as root, and chattr +i is not available here")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_check_writable_read_only_folder(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    with read_only_folder(root), pytest.raises(StorageError, match=f"^storage file://{root} is not usable: Perm"):
        Store(str(root)).check_writable()


def test_check_writable_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / "file" / "results"
    with pytest.raises(StorageError, match=f"^storage file://{root} is not usable"):
        Store(str(root)).check_writable()


def test_same_results_on_local_and_s3(tmp_path: Path, s3_store_uri: tuple[str, dict]) -> None:
    local, s3 = Store(str(tmp_path / "results")), Store(*s3_store_uri)
    fit = make_fit(seed=3)
    for store in (local, s3):
        store.write_fit(**fit)
    got_local, got_s3 = read_back(local, fit["key"]), read_back(s3, fit["key"])
    assert_same_fit(got_local, got_s3)
    assert got_local["summary"] == got_s3["summary"]
    assert got_local["metrics"].equals(got_s3["metrics"])
    assert local.collect(write=False).equals(s3.collect(write=False))


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", delays.append)
    calls: list[int] = []

    def flaky(failures: int, error: Exception) -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return len(calls)

    assert with_retries(lambda: flaky(2, ConnectionResetError("reset"))) == 3
    assert delays == [0.2, 0.4]

    calls.clear()
    delays.clear()
    with pytest.raises(ConnectionRefusedError):
        with_retries(lambda: flaky(99, ConnectionRefusedError("down")))
    assert len(calls) == storage.WRITE_TRIES and delays == [0.2, 0.4, 0.8, 1.6]

    calls.clear()
    with pytest.raises(PermissionError):
        with_retries(lambda: flaky(99, PermissionError("denied")))
    assert len(calls) == 1


def test_write_survives_a_short_s3_outage(s3_server: str, unused_port: int) -> None:
    """The endpoint is down when write_fit starts and back 2 s later: the fit is still stored."""
    from moto.server import ThreadedMotoServer

    endpoint = f"http://127.0.0.1:{unused_port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=unused_port, verbose=False)
    server.start()
    store = Store("s3://outage/results", {"client_kwargs": {"endpoint_url": endpoint}})
    store.fs.mkdir("outage")
    server.stop()

    restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=unused_port, verbose=False)
    restart = threading.Timer(2.0, restarted.start)
    restart.start()
    try:
        fit = make_fit()
        assert store.write_fit(**fit) is True
        assert store.done_keys() == {fit["key"]}
    finally:
        restart.join()
        restarted.stop()


def test_metrics_are_stored_with_curve_encodings(tmp_path: Path) -> None:
    """Smooth float curves: byte-stream-split floats and delta-coded iterations under zstd, read
    back exactly, and smaller than Parquet's default writer makes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    iterations = np.arange(3000)
    curve = (30 - 20 * np.exp(-iterations / 300)).astype(np.float32)  # a PSNR-like rise
    noisy = curve + np.random.default_rng(0).normal(0, 0.05, 3000).astype(np.float32)
    fit = make_fit() | {"metrics": {"iteration": iterations, "psnr_clean": noisy, "fbc_1": noisy / 30}}
    store = Store(str(tmp_path / "r"))
    store.write_fit(**fit)
    path = tmp_path / "r" / "fits" / fit["key"] / "metrics.parquet"
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["psnr_clean"] and "DELTA_BINARY_PACKED" in encodings["iteration"]
    assert {meta.column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    assert np.array_equal(store.read_metrics(fit["key"]).column("psnr_clean").to_numpy(), noisy)
    default = pa.BufferOutputStream()
    pq.write_table(pq.read_table(path), default)
    assert path.stat().st_size < default.getvalue().size


# --- a trajectory read one snapshot at a time ----------------------------------------------------


def with_snapshots(snapshots: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """A fit whose trajectory is `snapshots`, kept every 10 iterations."""
    iterations = np.arange(0, 10 * len(snapshots), 10, dtype=np.int64)
    return make_fit(seed) | {"trajectory": {"snapshots": snapshots, "snapshot_iterations": iterations}}


def test_a_snapshot_reads_back_bit_exact(store: Store) -> None:
    """Every snapshot read alone is the float16 array written, bit for bit (NaN and -0.0 too),
    in any order and repeated; an index past the end is an IndexError."""
    snapshots = np.random.default_rng(1).normal(0.5, 0.3, (5, 3, 16, 12)).astype(np.float16)
    snapshots[2, 0, 0, :3] = [np.nan, -0.0, np.inf]
    fit = with_snapshots(snapshots)
    store.write_fit(**fit)
    trajectory = store.open_trajectory(fit["key"])
    assert trajectory.kept and trajectory.iterations.tolist() == [0, 10, 20, 30, 40]
    got = trajectory.read([4, 2, 2, -5])
    assert got.dtype == np.float16 and got.shape == (4, 3, 16, 12)
    np.testing.assert_array_equal(got.view(np.uint16), snapshots[[4, 2, 2, 0]].view(np.uint16))
    with pytest.raises(IndexError):
        trajectory.read([5])


def test_a_large_zip_directory_is_read_too(store: Store) -> None:
    """1,500 snapshots: their zip directory (~90 KB) is larger than the tail read first."""
    snapshots = np.arange(1500 * 4, dtype=np.float16).reshape(1500, 1, 2, 2)
    fit = with_snapshots(snapshots)
    store.write_fit(**fit)
    trajectory = store.open_trajectory(fit["key"])
    assert len(trajectory.iterations) == 1500
    np.testing.assert_array_equal(trajectory.read([0, 1499]), snapshots[[0, 1499]])


def range_bytes(requests: list[dict[str, Any]], size: int) -> list[int]:
    """Bytes each GET asked for, from its Range header as moto recorded it (a GET without one: the
    whole file of `size` bytes)."""
    asked = []
    for request in (r for r in requests if r["method"] == "GET"):
        first, last = request["headers"].get("Range", f"bytes=0-{size - 1}").removeprefix("bytes=").split("-")
        asked.append(int(last) - int(first) + 1)
    return asked


def test_one_snapshot_is_two_small_range_requests_on_s3(s3_store_uri: tuple[str, dict], s3_server: str) -> None:
    """Counted by moto's recorder: opening a 30-snapshot trajectory and reading one snapshot asks
    for its size (HEAD) and two ranges, the tail and that snapshot's member (its compressed bytes
    and a local header), under a tenth of the file; reading it whole GETs every byte once, and
    every snapshot through open_trajectory is one run of adjacent members after the tail."""
    import requests

    store = Store(*s3_store_uri)
    snapshots = np.random.default_rng(2).random((30, 3, 128, 128)).astype(np.float16)  # ~85 KB a member
    fit = with_snapshots(snapshots)
    store.write_fit(**fit)
    path = f"{store.root}/fits/{fit['key']}/trajectory.npz"
    size = store.fs.size(path)
    api = f"{s3_server}/moto-api/recorder"

    def recorded() -> list[dict[str, Any]]:
        lines = requests.get(f"{api}/download-recording", timeout=30).text.splitlines()
        requests.post(f"{api}/reset-recording", timeout=10).raise_for_status()
        return [entry for entry in map(json.loads, lines) if entry["url"].endswith(path.split("/", 1)[1])]

    requests.post(f"{api}/reset-recording", timeout=10).raise_for_status()
    requests.post(f"{api}/start-recording", timeout=10).raise_for_status()
    try:
        one = store.open_trajectory(fit["key"]).read([7])[0]
        one_requests = recorded()
        every = store.open_trajectory(fit["key"]).read(range(30))
        every_requests = recorded()
        whole = store.read_trajectory(fit["key"])["snapshots"]
        whole_requests = recorded()
    finally:
        requests.post(f"{api}/stop-recording", timeout=10)
    np.testing.assert_array_equal(one.view(np.uint16), snapshots[7].view(np.uint16))
    np.testing.assert_array_equal(whole.view(np.uint16), snapshots.view(np.uint16))

    assert [r["method"] for r in one_requests] == ["HEAD", "GET", "GET"]
    tail, member = range_bytes(one_requests, size)
    stored = zipfile.ZipFile(io.BytesIO(store.fs.cat_file(path))).getinfo("snapshots/7.npy").compress_size
    assert tail == storage.TAIL_BYTES and stored < member < stored + 100
    assert tail + member < size / 10 < size == sum(range_bytes(whole_requests, size))
    np.testing.assert_array_equal(every.view(np.uint16), snapshots.view(np.uint16))
    assert len(range_bytes(every_requests, size)) == 2  # the tail and one run of adjacent members


@pytest.mark.parametrize("kept", [True, False])
def test_a_trajectory_stored_before_is_still_read(store: Store, kept: bool) -> None:
    """A trajectory.npz as stored before (np.savez_compressed, all snapshots one member, iterations
    first) reads back whole, a snapshot at a time and as MLflow's images; a fit that kept no
    snapshots has their iterations alone."""
    from pipeline.sweep import trajectory_images

    fit = make_fit()
    store.write_fit(**fit)
    old = fit["trajectory"] if kept else {"snapshot_iterations": np.zeros(0, np.int64)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **old)
    store.fs.pipe_file(f"{store.root}/fits/{fit['key']}/trajectory.npz", buffer.getvalue())

    assert set(store.read_trajectory(fit["key"])) == set(old)
    for name, array in store.read_trajectory(fit["key"]).items():
        np.testing.assert_array_equal(array, old[name])
    trajectory = store.open_trajectory(fit["key"])
    assert trajectory.kept is kept
    np.testing.assert_array_equal(trajectory.iterations, old["snapshot_iterations"])
    if kept:
        np.testing.assert_array_equal(trajectory.read([2, 0]), old["snapshots"][[2, 0]])
    assert [step for step, _ in trajectory_images(trajectory, 2)] == ([0, 40] if kept else [])


def test_a_trajectory_is_checked_when_written(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "results"))
    with pytest.raises(ValueError, match="3 snapshots but 2 snapshot iterations"):
        store.write_fit(
            **make_fit() | {"trajectory": {**make_fit()["trajectory"], "snapshot_iterations": np.arange(2)}}
        )
    with pytest.raises(ValueError, match=r"not \['final'\]"):
        store.write_fit(**make_fit() | {"trajectory": {"final": np.zeros(3)}})
    assert not store.done_keys()


# --- markers bundled: collect reads only what summary.parquet lacks -----------------------------


def done_reads(requests: list[tuple[str, str]]) -> list[str]:
    """Keys of the done markers read (GET) or looked up (HEAD) in moto's request record."""
    return sorted(
        path.rsplit("/", 1)[-1].removesuffix(".json")
        for method, path in requests
        if method in ("GET", "HEAD") and "/done/" in path
    )


def listed(store: Store, folder: str) -> list[str]:
    """Names in a folder of the store (none if it does not exist)."""
    return (
        sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{store.root}/{folder}"))
        if store.fs.exists(f"{store.root}/{folder}")
        else []
    )


def test_collect_bundles_markers_and_equals_a_full_read(store: Store) -> None:
    """A collect moves the markers into one bundle and deletes them; after adds, a forgotten fit
    and one forgotten and run again with another outcome, the collect that reuses
    summary.parquet gives the table a full collect gives, and writes it."""
    for seed in range(4):
        assert store.write_fit(**make_fit(seed))
    first = store.collect()
    assert first.column("key").to_pylist() == [make_fit(s)["key"] for s in range(4)]
    assert listed(store, "done") == [] and len(listed(store, "bundles")) == 1
    assert store.done_keys() == set(first.column("key").to_pylist())
    assert (
        store.is_done(make_fit(3)["key"])
        and store.summary(make_fit(3)["key"]) == read_back(store, make_fit(3)["key"])["summary"]
    )

    gone, redone = make_fit(1)["key"], make_fit(2, best_psnr=99.0, note="redone")
    assert store.forget([gone, redone["key"], "ffffffffffffffff"]) == {gone, redone["key"]}
    assert not store.is_done(gone) and not store.is_done(redone["key"])
    assert store.write_fit(**redone)  # run again, with a different outcome
    for fit in (make_fit(5, param_ratio=0.25), make_fit(6)):
        store.write_fit(**fit)

    incremental = store.collect()
    full = store.collect(write=False, full=True)
    assert incremental.equals(full)
    assert incremental.column("key").to_pylist() == [make_fit(s)["key"] for s in (0, 2, 3, 5, 6)]
    assert incremental.column("best_psnr").to_pylist()[1] == 99.0 and "note" in incremental.column_names
    written = pq.read_table(store.fs.open(f"{store.root}/summary.parquet", "rb"))
    assert written.equals(full)
    assert listed(store, "done") == []


def test_collect_gets_only_new_markers_from_s3(s3_store_uri: tuple[str, dict], s3_requests: Any) -> None:
    """Counted by moto: the first collect GETs every marker once (no HEAD), the next only the new
    ones, and one with nothing new none; `full` reads the bundles again, no marker."""
    store = Store(*s3_store_uri)
    old = [make_fit(seed) for seed in range(5)]
    for fit in old:
        store.write_fit(**fit)
    s3_requests(reset=True)
    store.collect()
    assert done_reads(s3_requests(reset=True)) == sorted(f["key"] for f in old)

    new = [make_fit(seed) for seed in (7, 8)]
    for fit in new:
        store.write_fit(**fit)
    s3_requests(reset=True)
    assert store.collect().num_rows == 7
    assert done_reads(s3_requests(reset=True)) == sorted(f["key"] for f in new)

    assert store.collect(write=False).num_rows == 7  # as the report reads it: nothing new, nothing read
    requests = s3_requests(reset=True)
    assert done_reads(requests) == [] and not [path for _, path in requests if "/bundles/2" in path]
    assert store.collect(full=True).num_rows == 7
    requests = s3_requests()
    assert done_reads(requests) == [] and len({p for m, p in requests if m == "GET" and "/bundles/2" in p}) == 2


def test_a_fit_bundled_twice_or_bundled_and_marked_counts_once(tmp_path: Path) -> None:
    """A crash between writing a bundle and deleting its markers, or two collects at once, leaves
    a fit in two places: every reader counts it once, with the row of its first bundle, and the
    next collect deletes the left-over marker."""
    store = Store(str(tmp_path / "results"))
    fits = [make_fit(seed) for seed in range(3)]
    for fit in fits:
        store.write_fit(**fit)
    markers = [store.summary(fit["key"]) for fit in fits]
    store._write_bundle(markers)  # the crash: bundled, not deleted
    store._write_bundle([markers[0] | {"best_psnr": -1.0}])  # a later, second bundle of the first fit
    assert store.done_keys() == {fit["key"] for fit in fits}
    table = store.collect()
    assert table.column("key").to_pylist() == sorted(fit["key"] for fit in fits)
    assert table.column("best_psnr").to_pylist()[0] == markers[0]["best_psnr"]
    assert listed(store, "done") == [] and len(listed(store, "bundles")) == 2
    assert store.collect(write=False, full=True).equals(table)


def test_bundles_are_merged_past_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past BUNDLES_MERGED_AT bundles a collect, or the driver's next bundle, merges them into one
    holding every row; a summary that named the merged bundles is rebuilt from the merged one."""
    monkeypatch.setattr(storage, "BUNDLES_MERGED_AT", 3)
    store = Store(str(tmp_path / "results"))
    for seed in range(4):
        store.write_fit(**make_fit(seed))
        store.collect()
        assert len(listed(store, "bundles")) == (seed + 1 if seed < 3 else 1)  # the 4th collect merges
    table = store.collect()
    assert table.column("key").to_pylist() == [make_fit(s)["key"] for s in range(4)]
    assert table.equals(store.collect(write=False, full=True))

    for seed in range(4, 7):  # as the sweep's driver bundles the markers of fits it saw finish
        store.write_fit(**make_fit(seed))
        store.bundle([store.summary(make_fit(seed)["key"])])
        assert len(listed(store, "bundles")) == (seed - 2 if seed < 6 else 1)
    assert store.done_keys() == {make_fit(s)["key"] for s in range(7)} and listed(store, "done") == []
    assert store.collect().equals(store.collect(write=False, full=True))


def test_a_bundle_merged_away_after_the_listing_is_looked_for_again(tmp_path: Path) -> None:
    """The driver may merge bundles between a reader's listing and its reads: the reader lists
    again and finds the rows in the merged bundle, instead of failing or missing them."""
    store = Store(str(tmp_path / "results"))
    fits = [make_fit(seed) for seed in range(3)]
    for fit in fits:
        store.write_fit(**fit)
        store.bundle([store.summary(fit["key"])])
    keys = {fit["key"] for fit in fits}
    listed_before = store._bundles()
    real = store._bundles
    stale = iter([listed_before])  # the next listing a reader makes is the one from before the merge
    store._bundles = lambda: next(stale, None) or real()  # type: ignore[method-assign]
    merged = store._write_bundle([store.summary(fit["key"]) for fit in fits])
    store._delete(listed_before)  # a merge, as the driver does it, after the reader listed
    assert store.done_keys() == keys
    stale = iter([listed_before])
    assert store.collect(write=False).column("key").to_pylist() == sorted(keys)
    stale = iter([listed_before])
    assert set(store.summaries(keys)) == keys and listed(store, "bundles") == [merged]


def test_a_bundle_is_read_once_by_a_store_that_checks_fit_after_fit(
    s3_store_uri: tuple[str, dict], s3_requests: Any
) -> None:
    """A worker asks is_done before and after every fit: each bundle's keys are read the first
    time only (bundles never change), a new bundle's when it appears; every call still LISTs."""
    store, worker = Store(*s3_store_uri), Store(*s3_store_uri)
    for seed in range(2):
        store.write_fit(**make_fit(seed))
        store.bundle([store.summary(make_fit(seed)["key"])])
    s3_requests(reset=True)

    def bundle_reads() -> set[str]:
        return {path for method, path in s3_requests(reset=True) if method == "GET" and "/bundles/" in path}

    assert worker.is_done(make_fit(0)["key"]) and not worker.is_done(make_fit(5)["key"])
    assert len(bundle_reads()) == 2  # both bundles, once
    assert worker.is_done(make_fit(1)["key"]) and bundle_reads() == set()
    store.write_fit(**make_fit(2))
    store.bundle([store.summary(make_fit(2)["key"])])
    s3_requests(reset=True)
    assert worker.is_done(make_fit(2)["key"]) and len(bundle_reads()) == 1  # the new one only


def test_an_old_store_is_collected_and_bundled(tmp_path: Path) -> None:
    """A store written before bundles (markers only, and a summary.parquet whose metadata names
    no bundles) is read whole once; its markers then live in one bundle."""
    store = Store(str(tmp_path / "results"))
    fits = [make_fit(seed) for seed in range(3)]
    for fit in fits:
        store.write_fit(**fit)
    old_meta = {"store": store.uri, "upgrade": "", "listed_from": 1.0}
    stale = store.collect(write=False).slice(0, 1)  # an older table, missing two fits
    pq.write_table(
        stale.replace_schema_metadata({b"dip.collected": json.dumps(old_meta)}),
        str(tmp_path / "results" / "summary.parquet"),
    )
    table = store.collect()
    assert table.column("key").to_pylist() == sorted(fit["key"] for fit in fits)
    assert listed(store, "done") == [] and len(listed(store, "bundles")) == 1


def test_summary_of_another_store_or_upgrade_is_not_reused(tmp_path: Path) -> None:
    """summary.parquet is reused only by the store it was collected from and with the same
    upgrade; --out elsewhere keeps its own table."""
    from pipeline.record import upgrade

    one, two = Store(str(tmp_path / "one")), Store(str(tmp_path / "two"))
    one.write_fit(**make_fit(0))
    two.write_fit(**make_fit(1))
    out = str(tmp_path / "shared.parquet")
    one.collect(out)
    assert two.collect(out).column("key").to_pylist() == [make_fit(1)["key"]]
    two.collect()
    assert "kind" in two.collect(write=False, upgrade=upgrade).column_names
    assert two.collect(write=False, upgrade=upgrade).column("kind").to_pylist() == ["image"]
    assert two.collect(write=False).column("kind").to_pylist() == [None]


def test_listings_read_no_marker(s3_store_uri: tuple[str, dict], s3_requests: Any) -> None:
    """done_keys and failed_keys come from LIST pages; failure_reasons reads only the records
    it samples."""
    store = Store(*s3_store_uri)
    store.write_fit(**make_fit(0))
    failures = [make_fit(seed) for seed in range(1, 11)]
    for n, fit in enumerate(failures):
        store.write_failure(fit["key"], fit["spec"], f"reason {n % 2}", "ValueError", attempts=1)
    s3_requests(reset=True)
    assert store.done_keys() == {make_fit(0)["key"]}
    assert store.failed_keys() == {f["key"] for f in failures}
    bucket = store.root.split("/", 1)[0]
    assert {(method, path.rstrip("/")) for method, path in s3_requests(reset=True)} == {("GET", f"/{bucket}")}  # LISTs

    reasons, read = store.failure_reasons(store.failed_keys(), most=4)
    gets = {path for method, path in s3_requests(reset=True) if method == "GET" and "/failed/" in path}
    assert read == len(gets) == 4 and sum(reasons.values()) == 4
    keys = sorted(f["key"] for f in failures)
    assert store.failure_reasons(keys, most=100) == (Counter({"reason 0": 5, "reason 1": 5}), 10)


CLEAN = b"\x89PNG the clean image"


def input_sharing_fits(count: int) -> list[dict[str, Any]]:
    """`count` fits of one image, as a λ × seed grid stores them: one clean image for all, a
    degraded image per seed (seed parity here: two), final and best of their own."""
    fits = [make_fit(seed) for seed in range(count)]
    for fit in fits:
        fit["images"] |= {"clean": CLEAN, "degraded": b"\x89PNG degraded by seed %d" % (fit["summary"]["seed"] % 2)}
    return fits


def stored_objects(store: Store) -> list[str]:
    return [path.removeprefix(store.root + "/") for path in store.fs.find(store.root)]


def test_input_images_are_stored_once_and_read_back(store: Store) -> None:
    """4 fits, each: spec, metrics, trajectory, images.json, final, best and its marker (7 objects,
    28 in all); then one clean image and two degraded ones by content: 31 objects, where every
    image in its fit's folder made 4 × 8 = 32 (the saving is in bytes: the clean image once, not 4 times)."""
    fits = input_sharing_fits(4)
    for fit in fits:
        assert store.write_fit(**fit) is True
    objects = stored_objects(store)
    assert len(objects) == 31
    assert sorted(p.split("/")[0] for p in objects if not p.startswith(("fits/", "done/"))) == ["images"] * 3
    assert not [p for p in objects if p.endswith(("/clean.png", "/degraded.png"))]
    for fit in fits:
        assert store.has_image(fit["key"], "clean") and store.has_image(fit["key"], "degraded")
        assert not store.has_image(fit["key"], "autostop")
        assert {name: store.read_image(fit["key"], name) for name in fit["images"]} == fit["images"]
    keys = [fit["key"] for fit in fits]
    assert len({store.fs.cat_file(f"{store.root}/fits/{key}/images.json") for key in keys}) == 2  # by seed parity


def test_a_shared_image_is_written_before_the_fit_that_points_at_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the writes never leaves a done fit, nor an images.json, pointing at a missing image."""
    order: list[str] = []
    write = Store._write

    def recording(self: Store, path: str, data: bytes) -> None:
        order.append(path.removeprefix(self.root + "/"))
        write(self, path, data)

    monkeypatch.setattr(Store, "_write", recording)
    fit = input_sharing_fits(1)[0]
    store.write_fit(**fit)
    shared = [order.index(p) for p in order if p.startswith("images/")]
    assert len(shared) == 2 and max(shared) < order.index(f"fits/{fit['key']}/images.json")
    assert order[-1] == f"done/{fit['key']}.json"


def test_a_fit_stored_before_shared_images_still_reads(store: Store) -> None:
    """The old layout: every image in the fit's folder, no images.json."""
    fit = make_fit()
    store.write_fit(**fit)
    store.fs.pipe_file(f"{store.root}/fits/{fit['key']}/clean.png", CLEAN)
    assert store.has_image(fit["key"], "clean") and not store.has_image(fit["key"], "degraded")
    assert store.read_image(fit["key"], "clean") == CLEAN
    assert store.read_image(fit["key"], "final") == fit["images"]["final"]


def test_an_images_json_naming_anything_but_a_digest_is_refused(store: Store) -> None:
    fit = input_sharing_fits(1)[0]
    store.write_fit(**fit)
    store.fs.pipe_file(f"{store.root}/fits/{fit['key']}/images.json", b'{"clean": "../../done/x"}')
    with pytest.raises(ValueError, match="not a SHA-256 image digest"):
        store.read_image(fit["key"], "clean")


def test_shared_images_are_put_once_on_s3(s3_store_uri: tuple[str, dict], s3_requests: Any) -> None:
    """Counted by moto: 7 PUTs per fit and one per distinct input image, never a second."""
    store = Store(*s3_store_uri)
    s3_requests(reset=True)
    for fit in input_sharing_fits(4):
        store.write_fit(**fit)
    puts = [path for method, path in s3_requests() if method == "PUT"]
    assert len(puts) == 4 * 7 + 3 and len(set(puts)) == len(puts)
