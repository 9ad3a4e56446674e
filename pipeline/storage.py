"""Fit results on object storage through fsspec (``file://`` by default, ``s3://``, ``gs://``).

Layout under the storage root (see docs/storage.md for the Parquet schema)::

    sweep.json                  resolved manifest; a different one goes beside it as sweep-<time>.json
    fits/<key>/spec.json        resolved fit spec
    fits/<key>/metrics.parquet  per-iteration metrics, "iteration" (int64) first
    fits/<key>/trajectory.npz   a zip of snapshots/<i>.npy (C, H, W), each deflated on its own,
                                then snapshot_iterations.npy (T,)
    fits/<key>/<name>.png       images that are the fit's own (its outputs)
    fits/<key>/images.json      name -> SHA-256 of each input image (clean, degraded) the fit shares
    images/<sha256>.png         input images by content: one object for every fit of the same input
    done/<key>.json             completion marker holding the flat summary row, written LAST
    bundles/<time>-<id>.parquet done markers moved into one file: key, marker (its JSON text)
    failed/<key>.json           failure record
    summary.parquet             every done marker's row, written by `Store.collect`

There is no multi-object transaction on S3, so a fit counts as done only once its marker exists:
the data files go first and the marker last, and a crash in between leaves a fit that is simply
not done. Every file is written whole: one PUT on object stores (atomic there), a temporary name
plus rename on local disk. Markers carry the summary so that resume plans and ``collect`` need
only the marker folders, never the per-fit folders.

One file per done fit would make every plan LIST, and every fresh collect GET, all of them, so
markers are moved into bundles (`Store.bundle`: by the sweep's driver as fits finish, and by
``collect`` for those left over). A bundle is written before the markers it holds are deleted,
so a fit is never lost in between; a fit found in two places counts once. Plans read the
listings and the bundles' key columns; ``collect`` reads only the bundles and markers its last
``summary.parquet`` lacks (see `Store.collect`).

A reader of one snapshot fetches the trajectory's last bytes (its zip directory and iterations)
and that snapshot's member: two range requests after the size (a HEAD on S3), not the whole file
(`Store.open_trajectory`). Trajectories stored before hold all snapshots in one member
"snapshots"; every reader still reads them, whole.

A fit's input images are the same for hundreds of fits (every λ, σ and seed of one image has the
same clean image), so they are stored once by content under ``images/``, written only when absent
and before the fit's files; ``images.json`` says which the fit uses. Fits stored before this keep
every image in their folder and read as before. ``images/`` is never pruned: deleting a fit leaves
its inputs for the other fits that share them.

A second completion of a done fit (a Ray retry of a call that had in fact finished) writes
nothing: the first completion wins. Two completions racing at the same moment could both write;
fits are seeded, so both write the same results.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import re
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import fsspec.core
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError
from fsspec.implementations.local import LocalFileSystem

from pipeline.locations import as_uri, climbs
from pipeline.messages import DipError, UserError, one_line
from pipeline.record import canonical, column_type, summary_table

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_TRIES = 5
FIRST_RETRY_DELAY_S = 0.2  # then 0.4, 0.8, 1.6: about 3 s of waiting on top of the client's own retries
# Errors that mean "the endpoint is unreachable right now"; missing paths and refused
# permissions are answers, not outages, and are raised at once.
_TRANSIENT = (OSError, BotoConnectionError, HTTPClientError)
_PERMANENT = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SCALAR = (str, int, float, bool, type(None), np.generic)
SUMMARY = "summary.parquet"
SHARED_IMAGES = frozenset({"clean", "degraded"})  # a fit's inputs, the same for every fit of that input
IMAGES = "images.json"  # fits/<key>/images.json: shared image name -> SHA-256 of its PNG under images/
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COLLECTED = b"dip.collected"  # summary.parquet metadata: what it was collected from (Store.collect)
POOL_CONNECTIONS = 64  # concurrent requests per S3 client (botocore's default: 10); marker reads use them
# Reads started at once on an async file system: a started read waits for a free connection, and
# aiohttp counts that wait towards botocore's connect timeout (60 s), so a queue as long as
# fsspec's default (1280) times out on a server answering fewer than ~20 requests per second.
READ_BATCH = 4 * POOL_CONNECTIONS
BUNDLES = "bundles"  # the folder of marker bundles
BUNDLES_MERGED_AT = 16  # more bundles than this, and a collect merges them into one
TRAJECTORY = "trajectory.npz"
ITERATIONS = "snapshot_iterations.npy"
ALL_SNAPSHOTS = "snapshots.npy"  # the one member of all snapshots in trajectories stored before
# A trajectory's last bytes, read first: its zip directory (~70 bytes a snapshot) and iterations
# (8 bytes a snapshot) fit for up to ~800 snapshots; a larger directory costs one more request.
TAIL_BYTES = 64 * 1024


class StorageError(DipError, RuntimeError):
    """Storage cannot be used (unreachable, unwritable); the message is one line for users."""


def with_retries(action: Callable[[], T], tries: int = WRITE_TRIES) -> T:
    """Run `action`, retrying transient failures with exponential backoff.

    s3fs and botocore retry single requests already; this bounds a short outage of the whole
    endpoint (a few seconds) so that it does not fail a fit that took minutes to compute.
    """
    delay = FIRST_RETRY_DELAY_S
    for attempt in range(1, tries):
        try:
            return action()
        except _PERMANENT:
            raise
        except _TRANSIENT as err:
            log.warning("storage call failed (try %d of %d), retrying in %.1f s: %s", attempt, tries, delay, err)
            time.sleep(delay)
            delay *= 2
    return action()


def _fs_options(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """fsspec options with the store's defaults; the caller's own choices win.

    Listings are never cached: markers are written by other processes, and a cached listing
    would plan a resume from stale state. On S3, botocore's "standard" retry mode (3 retries,
    ~2.5 s against a dead endpoint) replaces its legacy default (~11 s there), so
    `Store.check_writable` fails in seconds and `with_retries` bounds the rest; and a client
    keeps up to POOL_CONNECTIONS requests in flight, since reading markers is many small GETs
    that mostly wait on the network.
    """
    options = {"use_listings_cache": False, **storage_options}
    if uri.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"mode": "standard", "max_attempts": 3})
        config.setdefault("max_pool_connections", POOL_CONNECTIONS)
        options["config_kwargs"] = config
    return options


def _normalise_uri(uri: str) -> str:
    """Plain paths become absolute file:// URIs, so every process resolves them alike.

    '..' components are refused: a store writes under its own prefix and nowhere else.
    """
    if climbs(uri):
        raise UserError(f"storage URI {uri!r} may not contain '..' components")
    return as_uri(uri)


def write_whole(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one file whole: readers see it complete or not at all."""
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)  # a single PUT, atomic on object stores
        return
    folder, name = path.rsplit("/", 1)
    fs.makedirs(folder, exist_ok=True)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(temporary, data)
    fs.mv(temporary, path)  # a rename within one folder: atomic


def _json_default(value: Any) -> Any:
    """NumPy scalars (a fit's numbers often are) as plain JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _to_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, default=_json_default).encode()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _parquet_bytes(table: pa.Table, curves: bool = False) -> bytes:
    """Parquet in memory, zstd-compressed. `curves` (per-iteration metrics) are written with
    encodings that suit smooth float series: byte-stream-split floats and delta-coded iterations,
    without dictionaries (about half the default's size on real fits)."""
    sink = pa.BufferOutputStream()
    if curves:
        floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
        pq.write_table(
            table,
            sink,
            compression="zstd",
            use_dictionary=False,
            use_byte_stream_split=floats,
            column_encoding={"iteration": "DELTA_BINARY_PACKED"},
        )
    else:
        pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _metrics_table(metrics: dict[str, np.ndarray]) -> pa.Table:
    """Per-iteration metrics, "iteration" as int64 first, then the other columns in the given order."""
    if "iteration" not in metrics:
        raise ValueError(f"metrics need an 'iteration' column, got {sorted(metrics)}")
    columns = {"iteration": np.asarray(metrics["iteration"], dtype=np.int64)}
    columns |= {name: np.asarray(values) for name, values in metrics.items() if name != "iteration"}
    return pa.table(columns)


def _snapshot(index: int) -> str:
    return f"snapshots/{index}.npy"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)  # plain arrays only, as Trajectory loads them
    return buffer.getvalue()


def trajectory_bytes(trajectory: dict[str, np.ndarray]) -> bytes:
    """A fit's trajectory as a zip (.npz) with one deflated member per snapshot, so that a reader
    fetches one alone, and the iterations last, beside the zip directory at the end."""
    unknown = set(trajectory) - {"snapshots", "snapshot_iterations"}
    if unknown:
        raise ValueError(f"a trajectory holds snapshots and snapshot_iterations, not {sorted(unknown)}")
    snapshots = trajectory.get("snapshots")
    iterations = trajectory.get("snapshot_iterations", np.zeros(0, np.int64))
    if snapshots is not None and len(snapshots) != len(iterations):
        raise ValueError(f"{len(snapshots)} snapshots but {len(iterations)} snapshot iterations")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, snapshot in enumerate(() if snapshots is None else snapshots):
            archive.writestr(_snapshot(index), _npy(snapshot))
        archive.writestr(ITERATIONS, _npy(np.asarray(iterations)))
    return buffer.getvalue()


class _RangeFile:
    """A stored file as a seekable file for `zipfile` that reads only the bytes asked for: from
    the parts fetched before (`fetch`) when one holds them, else with one range request."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, size: int, parts: dict[int, bytes]) -> None:
        self.fs, self.path, self.size, self.parts = fs, path, size, parts
        self.position = 0

    def _held(self, start: int, stop: int) -> bytes | None:
        for begin, data in self.parts.items():
            if begin <= start and stop <= begin + len(data):
                return data[start - begin : stop - begin]
        return None

    def fetch(self, spans: Iterable[tuple[int, int]]) -> None:
        """Fetch the (start, stop) spans not held yet: one request per run of adjacent spans (all
        of a trajectory's snapshots: one), the requests at once on S3."""
        runs: list[list[int]] = []  # [start, stop]
        for start, stop in sorted({span for span in spans if self._held(*span) is None}):
            if runs and runs[-1][1] == start:
                runs[-1][1] = stop
            else:
                runs.append([start, stop])
        if runs:
            starts, stops = [run[0] for run in runs], [run[1] for run in runs]
            blobs = self.fs.cat_ranges([self.path] * len(runs), starts, stops, on_error="raise")
            self.parts.update(zip(starts, blobs, strict=True))

    def read(self, size: int = -1, /) -> bytes:
        start = self.position
        stop = self.size if size < 0 else min(start + size, self.size)
        self.position = max(start, stop)
        if start >= stop:
            return b""
        held = self._held(start, stop)
        return self.fs.cat_file(self.path, start=start, end=stop) if held is None else held

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        self.position = offset + (0, self.position, self.size)[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True


class Trajectory:
    """A fit's stored snapshots, read a few at a time: each snapshot's member is fetched alone
    (`read`). Trajectories stored before hold all snapshots in one member, read whole."""

    def __init__(self, file: _RangeFile) -> None:
        self._file = file
        self._zip = zipfile.ZipFile(file)
        # a member's bytes (local header and data) run to the next member's or to the zip directory
        starts = sorted(info.header_offset for info in self._zip.infolist()) + [self._zip.start_dir]
        ends = dict(zip(starts, starts[1:], strict=False))
        self._spans = {info.filename: (info.header_offset, ends[info.header_offset]) for info in self._zip.infolist()}
        self.iterations = self._load([ITERATIONS])[0] if ITERATIONS in self._spans else np.zeros(0, np.int64)

    @property
    def kept(self) -> bool:
        """Whether the fit kept snapshots (a fit may store their iterations alone, or nothing)."""
        return ALL_SNAPSHOTS in self._spans or _snapshot(0) in self._spans

    def read(self, indices: Iterable[int]) -> np.ndarray:
        """The snapshots at `indices` (of `iterations`) as stored: (k, C, …), float16 by default."""
        rows = [range(len(self.iterations))[i] for i in indices]
        if ALL_SNAPSHOTS in self._spans:
            return self._load([ALL_SNAPSHOTS])[0][rows]
        return np.stack(self._load([_snapshot(row) for row in rows]))

    def _load(self, names: Sequence[str]) -> list[np.ndarray]:
        self._file.fetch(self._spans[name] for name in names)
        return [np.load(io.BytesIO(self._zip.read(name)), allow_pickle=False) for name in names]


def _check_flat(summary: dict[str, Any]) -> None:
    nested = sorted(name for name, value in summary.items() if not isinstance(value, _SCALAR))
    if nested:
        raise ValueError(f"summary values must be scalars (flatten them first): {nested}")


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _upgrade_name(upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None) -> str:
    return f"{upgrade.__module__}.{upgrade.__qualname__}" if upgrade else ""


def _spread(keys: list[str], most: int) -> list[str]:
    """At most `most` of the keys, evenly spaced (all of them when there are no more)."""
    return keys if len(keys) <= most else [keys[i * len(keys) // most] for i in range(most)]


def _part(name: str) -> str:
    """A key or image name, checked to be one safe path component."""
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"not a valid key or file name: {name!r}")
    return name


class Store:
    """The results of one sweep under a storage root URI; see the module docstring for the layout."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = _normalise_uri(uri)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **_fs_options(self.uri, self.storage_options))
        self._keys_of: dict[str, frozenset[str]] = {}  # bundle path -> its keys (a bundle never changes)

    # --- paths -----------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _fit_file(self, key: str, name: str) -> str:
        return self._path("fits", _part(key), name)

    def _shared_image(self, digest: Any) -> str:
        """images/<sha256>.png; the digest comes from a stored images.json, so it is checked."""
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"not a SHA-256 image digest: {digest!r}")
        return self._path("images", f"{digest}.png")

    def _image_path(self, key: str, name: str) -> str:
        """Where a fit's image lies: under images/ where its images.json names it, else in its
        folder (its outputs, and every image of a fit stored before images/ existed)."""
        if name in SHARED_IMAGES:
            try:
                shared = self._read_json(self._fit_file(key, IMAGES))
            except FileNotFoundError:
                shared = {}
            if name in shared:
                return self._shared_image(shared[name])
        return self._fit_file(key, f"{_part(name)}.png")

    def _done(self, key: str) -> str:
        return self._path("done", f"{_part(key)}.json")

    def _failed(self, key: str) -> str:
        return self._path("failed", f"{_part(key)}.json")

    # --- whole-file writes and reads -------------------------------------------------------------

    def _write(self, path: str, data: bytes) -> None:
        with_retries(lambda: write_whole(self.fs, path, data))

    def _write_absent(self, path: str, data: bytes) -> None:
        """Write a file named by its content unless it exists: an existing one holds the same bytes."""
        if not with_retries(lambda: self.fs.exists(path)):
            self._write(path, data)

    def _read_json(self, path: str) -> Any:
        return json.loads(self.fs.cat_file(path))

    def _listing(self, folder: str) -> set[str]:
        """Keys with a marker in done/ or failed/ from the listing alone (one LIST call per 1000
        keys on S3, no marker is read)."""
        try:
            names = self.fs.ls(self._path(folder), detail=False)
        except FileNotFoundError:
            return set()
        # skip temporary files of interrupted local writes (".<name>.<id>.tmp")
        names = (path.rsplit("/", 1)[-1] for path in names)
        return {name.removesuffix(".json") for name in names if name.endswith(".json") and not name.startswith(".")}

    def _read_markers(self, paths: list[str]) -> list[dict[str, Any]]:
        """Read many small JSON files at once: concurrent GETs on async file systems like s3fs.

        A marker deleted since it was listed is left out: its fit is no longer done. `cat_ranges`
        rather than `cat`, which first expands its paths with a HEAD request per file; and from
        byte 0 rather than None, for which s3fs asks each file's size (another HEAD) first.
        """
        markers: list[dict[str, Any]] = []
        batch = {"batch_size": READ_BATCH} if self.fs.async_impl else {}
        for path, blob in zip(paths, self.fs.cat_ranges(paths, 0, None, on_error="return", **batch), strict=True):
            if isinstance(blob, FileNotFoundError):
                continue
            if isinstance(blob, BaseException):
                raise blob
            try:
                markers.append(json.loads(blob))
            except ValueError as err:
                raise ValueError(f"{path}: not a JSON marker: {err}") from None
        return markers

    def _summary_file(self, out: str | None) -> tuple[fsspec.AbstractFileSystem, str]:
        """Where `collect` writes (and finds the table it may reuse): `out`, else <root>/summary.parquet."""
        if out is None:
            return self.fs, self._path(SUMMARY)
        uri = _normalise_uri(out)
        same_scheme = uri.split("://", 1)[0] == self.uri.split("://", 1)[0]
        fs, path = fsspec.core.url_to_fs(uri, **_fs_options(uri, self.storage_options if same_scheme else {}))
        return fs, path

    def _reusable(
        self, fs: fsspec.AbstractFileSystem, path: str, upgrade: str, bundles: list[str]
    ) -> tuple[pa.Table, set[str]] | None:
        """An earlier collect's table at `path` and the bundles its rows come from, if it was
        collected from this store with the same `upgrade`, every one of those bundles is still
        there, and its columns are typed as this code types them; else None (all is read)."""
        try:
            table = pq.read_table(pa.BufferReader(with_retries(lambda: fs.cat_file(path))))
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError) as err:  # unreadable: it is rebuilt from the bundles
            log.warning("%s cannot be read, collecting every bundle and marker again: %s", path, one_line(err))
            return None
        try:
            meta = json.loads((table.schema.metadata or {}).get(_COLLECTED, b"{}"))
        except ValueError:
            return None
        if (
            not isinstance(meta, dict)
            or (meta.get("store"), meta.get("upgrade")) != (self.uri, upgrade)
            or not isinstance(meta.get("bundles"), list)
            or not set(meta["bundles"]) <= {_name(bundle) for bundle in bundles}
            or any(field.type != column_type(field.name) for field in table.schema)
        ):
            return None
        return table.replace_schema_metadata(None), set(meta["bundles"])

    # --- marker bundles ----------------------------------------------------------------------------

    def _bundles(self) -> list[str]:
        """Paths of the marker bundles, oldest first (a bundle's name starts with when it was
        written); the keys kept of bundles merged away since are forgotten."""
        try:
            paths = self.fs.ls(self._path(BUNDLES), detail=False)
        except FileNotFoundError:
            paths = []
        bundles = sorted(p for p in paths if p.endswith(".parquet") and not _name(p).startswith("."))
        self._keys_of = {bundle: keys for bundle, keys in self._keys_of.items() if bundle in bundles}
        return bundles

    def _over_bundles(self, read: Callable[[list[str]], T]) -> T:
        """`read` over the bundles there are, listed again if one was merged away between the
        listing and its read (its rows are then in a newer bundle the first listing missed)."""
        for _ in range(WRITE_TRIES - 1):
            try:
                return read(self._bundles())
            except FileNotFoundError:
                continue
        return read(self._bundles())

    def _bundle_keys(self, bundles: list[str]) -> set[str]:
        """The keys the bundles hold: their key columns alone, read by range requests, once per
        bundle and Store (a bundle is written whole under a new name and never changed, so a
        worker checking fit after fit reads only the bundles new since its last check)."""
        for bundle in bundles:
            if bundle not in self._keys_of:
                with self.fs.open(bundle, "rb", cache_type="none") as fh:  # exact ranges: footer, key column
                    self._keys_of[bundle] = frozenset(pq.read_table(fh, columns=["key"]).column("key").to_pylist())
        return set().union(*(self._keys_of[bundle] for bundle in bundles))

    def _bundle_markers(self, bundles: list[str], keys: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """The markers the bundles hold by key (of `keys` only, if given); a key bundled twice (a
        retried fit, two collects at once) keeps the row of the older bundle."""
        markers: dict[str, dict[str, Any]] = {}
        for bundle in bundles:
            table = pq.read_table(pa.BufferReader(with_retries(functools.partial(self.fs.cat_file, bundle))))
            for key, marker in zip(table.column("key").to_pylist(), table.column("marker").to_pylist(), strict=True):
                if key not in markers and (keys is None or key in keys):
                    markers[key] = json.loads(marker)
        return markers

    def _write_bundle(self, markers: list[dict[str, Any]]) -> str:
        """One bundle of the given markers, sorted by key; returns its name."""
        rows = sorted(markers, key=lambda marker: str(marker["key"]))
        table = pa.table(
            {
                "key": pa.array([row["key"] for row in rows], pa.string()),
                "marker": pa.array([json.dumps(row, default=_json_default) for row in rows], pa.string()),
            }
        )
        name = f"{_now().strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}.parquet"
        self._write(self._path(BUNDLES, name), _parquet_bytes(table))
        return name

    def _delete(self, paths: list[str]) -> None:
        """Delete files, those already gone included (S3: one request per 1,000)."""
        if not paths:
            return
        if isinstance(self.fs, LocalFileSystem):
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
        else:
            with_retries(lambda: self.fs.rm(paths))

    def bundle(self, markers: list[dict[str, Any]]) -> str | None:
        """Move done markers (as written: the key and the summary) into one bundle, then delete
        their files; returns the bundle's name (None for no markers).

        The bundle is written whole before any marker is deleted, so a crash in between leaves a
        fit both bundled and marked, which readers count once. The sweep driver bundles the
        markers of the fits it sees finish (`pipeline.sweep`), `collect` those left over; past
        BUNDLES_MERGED_AT bundles, all are merged into one."""
        if not markers:
            return None
        name = self._write_bundle(markers)
        self._delete([self._done(str(marker["key"])) for marker in markers])
        self._merge(self._bundles())
        return name

    def _merge(self, bundles: list[str]) -> list[str]:
        """Merge the bundles into one when there are more than BUNDLES_MERGED_AT, so that readers
        open a bounded number of files; the merged bundle is written before the others go.
        Returns the bundles there are afterwards."""
        if len(bundles) <= BUNDLES_MERGED_AT:
            return bundles
        name = self._write_bundle(list(self._bundle_markers(bundles).values()))
        self._delete(bundles)
        return [self._path(BUNDLES, name)]

    # --- sweep level -----------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Write, read back and delete a probe, so a sweep fails before any fit when storage is unusable.

        One attempt only (the client's own retries still apply): a wrong endpoint or a missing
        bucket should be reported in seconds, not after a minute of backoff.
        """
        probe = self._path(f".probe-{uuid.uuid4().hex}")
        payload = b"dip storage probe"
        try:
            write_whole(self.fs, probe, payload)
            if self.fs.cat_file(probe) != payload:
                raise OSError("the probe read back differs from what was written")
            self.fs.rm_file(probe)
        except Exception as err:  # any cause becomes one line naming the URI
            raise StorageError(f"storage {self.uri} is not usable: {type(err).__name__}: {one_line(err)}") from err

    def write_sweep(self, manifest: dict[str, Any]) -> None:
        """Store the resolved manifest; never replace a different one (it describes fits already stored)."""
        path = self._path("sweep.json")
        data = _to_json(manifest)
        if self.fs.exists(path):
            if json.loads(self.fs.cat_file(path)) == json.loads(data):
                return
            path = self._path(f"sweep-{_now().strftime('%Y%m%dT%H%M%S.%fZ')}.json")
        self._write(path, data)

    def done_keys(self) -> set[str]:
        """Keys of the done fits: the listing of done/ and the key columns of the bundles."""
        return self._listing("done") | self._over_bundles(self._bundle_keys)

    def failed_keys(self) -> set[str]:
        """Keys with a failure record, from the listing alone; a key may also be done when a retry
        later succeeded elsewhere."""
        return self._listing("failed")

    def failed(self, keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Failure records by key, of `keys` (default: all); records that do not exist are left out."""
        wanted = sorted(self.failed_keys() if keys is None else keys)
        records = self._read_markers([self._failed(key) for key in wanted])
        return {record["key"]: record for record in records}

    def failure_reasons(self, keys: Iterable[str], most: int) -> tuple[Counter[str], int]:
        """How often each reason occurs among the failure records of `keys`, from at most `most`
        records spread evenly over the keys (a sweep with thousands of failures usually has a few
        reasons); returns the counts and how many records they come from."""
        records = self.failed(_spread(sorted(keys), most))
        return Counter(record.get("reason", "?") for record in records.values()), len(records)

    def is_done(self, key: str) -> bool:
        """Whether the fit's marker exists or a bundle holds it; retried, since write_fit and the
        workers start with it."""
        return with_retries(lambda: self.fs.exists(self._done(key)) or key in self._over_bundles(self._bundle_keys))

    def summaries(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The done markers (key and summary) of `keys`, bundled or not; keys not done are left out."""
        wanted = set(keys)
        found = self._over_bundles(lambda bundles: self._bundle_markers(bundles, wanted))
        loose = sorted((self._listing("done") & wanted) - found.keys())
        return found | {marker["key"]: marker for marker in self._read_markers([self._done(k) for k in loose])}

    def forget(self, keys: Iterable[str]) -> set[str]:
        """Make done fits not done, so that the next run computes them again; returns the keys
        that were done. Their markers are deleted, and each bundle holding one is written again
        without it; their files stay until the rerun replaces them. Not meant to run beside a
        collect: one that read a bundle before it was rewritten may write that bundle's rows back."""
        wanted = set(keys)
        forgotten = self._listing("done") & wanted
        self._delete([self._done(key) for key in sorted(forgotten)])
        for bundle in self._bundles():
            if not wanted & self._bundle_keys([bundle]):
                continue
            markers = self._bundle_markers([bundle])
            forgotten |= wanted & markers.keys()
            if rest := [marker for key, marker in markers.items() if key not in wanted]:
                self._write_bundle(rest)
            self._delete([bundle])
        return forgotten

    def collect(
        self,
        out: str | None = None,
        write: bool = True,
        upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        full: bool = False,
    ) -> pa.Table:
        """All done summaries as one table, one row per fit sorted by key.

        Columns are every column of the summary record's schema and each other field some fit
        has a value for, typed by that schema (`pipeline.record.summary_table`, `canonical`);
        `upgrade` (e.g. `pipeline.record.upgrade`) first adds to each marker's row what markers
        of older versions lack. Unless `write` is False, the markers still in done/ are moved
        into a bundle (`bundle`), bundles beyond BUNDLES_MERGED_AT are merged, and the table is written
        as Parquet to `out` (a path or URI; default ``<root>/summary.parquet``).

        Only what that file lacks is read: its metadata names the bundles its rows come from, so
        a collect reads the bundles written since (by sweeps or other collects) and the markers
        not bundled yet. If one of its bundles is gone (merged, or rewritten by `forget`), or
        `full`, every bundle is read.
        """
        fs, path = self._summary_file(out)
        loose = sorted(self._listing("done"))

        def since_summary(bundles: list[str]) -> tuple[list[str], list[pa.Table], dict[str, dict[str, Any]]]:
            """The bundles, the rows of the summary it may reuse, and the bundles' markers it lacks."""
            previous = None if full else self._reusable(fs, path, _upgrade_name(upgrade), bundles)
            kept, covered = ([previous[0]], previous[1]) if previous is not None else ([], set())
            return bundles, kept, self._bundle_markers([b for b in bundles if _name(b) not in covered])

        bundles, kept, bundled = self._over_bundles(since_summary)
        have = set().union(*(table["key"].to_pylist() for table in kept))
        markers = self._read_markers([self._done(key) for key in loose])
        new = [marker for marker in markers if marker["key"] not in have and marker["key"] not in bundled]
        rows = [marker for key, marker in bundled.items() if key not in have] + new
        rows = [upgrade(row) for row in rows] if upgrade else rows
        table = canonical(pa.concat_tables([*kept, summary_table(rows)], promote_options="default"))
        if write:
            if new:
                bundles.append(self._path(BUNDLES, self._write_bundle(new)))
            self._delete([self._done(marker["key"]) for marker in markers])
            bundles = self._merge(bundles)
            meta = {"store": self.uri, "upgrade": _upgrade_name(upgrade), "bundles": [_name(p) for p in bundles]}
            data = _parquet_bytes(table.replace_schema_metadata({_COLLECTED: json.dumps(meta)}))
            with_retries(lambda: write_whole(fs, path, data))
        return table

    # --- one fit ---------------------------------------------------------------------------------

    def write_fit(
        self,
        key: str,
        spec: dict[str, Any],
        summary: dict[str, Any],
        metrics: dict[str, np.ndarray],
        trajectory: dict[str, np.ndarray],
        images: dict[str, bytes],
    ) -> bool:
        """Store a finished fit, its done marker last; False (and nothing written) if it is done already.

        Its SHARED_IMAGES go to images/ by content, each written only if no fit wrote it before."""
        if summary.get("key", key) != key:
            raise ValueError(f"summary key {summary['key']!r} differs from the fit key {key!r}")
        _check_flat(summary)
        if self.is_done(key):
            return False
        shared = {name: hashlib.sha256(png).hexdigest() for name, png in images.items() if name in SHARED_IMAGES}
        files = {
            "spec.json": _to_json(spec),
            "metrics.parquet": _parquet_bytes(_metrics_table(metrics), curves=True),
            TRAJECTORY: trajectory_bytes(trajectory),
        } | {f"{_part(name)}.png": png for name, png in images.items() if name not in shared}
        if shared:
            files[IMAGES] = _to_json(shared)
        marker = _to_json({"key": key, **summary})
        for name, digest in shared.items():
            self._write_absent(self._shared_image(digest), images[name])
        for name, data in files.items():
            self._write(self._fit_file(key, name), data)
        with contextlib.suppress(FileNotFoundError):
            with_retries(lambda: self.fs.rm_file(self._failed(key)))
        self._write(self._done(key), marker)
        return True

    def write_failure(self, key: str, spec: dict[str, Any], reason: str, error_type: str, attempts: int) -> None:
        """Record why a fit failed, unless it is done (a success is never overwritten by a failure)."""
        if self.is_done(key):
            return
        record = {
            "key": key,
            "reason": one_line(reason, limit=500),
            "error_type": error_type,
            "attempts": attempts,
            "time": _now().isoformat(timespec="seconds"),
            "spec": spec,
        }
        self._write(self._failed(key), _to_json(record))

    def summary(self, key: str) -> dict[str, Any]:
        """A done fit's marker (key and summary), from its own file or else from its bundle."""
        try:
            return self._read_json(self._done(key))
        except FileNotFoundError:
            if found := self._over_bundles(lambda bundles: self._bundle_markers(bundles, {key})):
                return found[key]
            raise FileNotFoundError(f"fit {key} is not done in {self.uri}") from None

    def read_spec(self, key: str) -> dict[str, Any]:
        return self._read_json(self._fit_file(key, "spec.json"))

    def read_metrics(self, key: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.fs.cat_file(self._fit_file(key, "metrics.parquet"))))

    def read_trajectory(self, key: str) -> dict[str, np.ndarray]:
        """Every snapshot (T, C, …) and its iteration (T,), from one read of the whole file."""
        path = self._fit_file(key, TRAJECTORY)
        data = self.fs.cat_file(path)
        trajectory = Trajectory(_RangeFile(self.fs, path, len(data), {0: data}))
        arrays = {"snapshot_iterations": trajectory.iterations}
        if trajectory.kept:
            arrays["snapshots"] = trajectory.read(range(len(trajectory.iterations)))
        return arrays

    def open_trajectory(self, key: str) -> Trajectory:
        """A fit's snapshots to read a few of: the file's size and last TAIL_BYTES now (zip
        directory and iterations), then a range request per run of adjacent snapshots read."""
        path = self._fit_file(key, TRAJECTORY)
        size = self.fs.size(path)
        start = max(size - TAIL_BYTES, 0)
        return Trajectory(_RangeFile(self.fs, path, size, {start: self.fs.cat_file(path, start=start, end=size)}))

    def read_image(self, key: str, name: str) -> bytes:
        return self.fs.cat_file(self._image_path(key, name))

    def has_image(self, key: str, name: str) -> bool:
        return self.fs.exists(self._image_path(key, name))


def read_text(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """A small UTF-8 text file (a manifest) from any fsspec URI, as one-line StorageErrors."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **_fs_options(uri, dict(storage_options or {})))
        return with_retries(lambda: fs.cat_file(path)).decode("utf-8")
    except UnicodeDecodeError as err:
        raise StorageError(f"{uri}: not UTF-8 text (byte {err.start})") from None
    except Exception as err:  # any cause (missing, refused, unreachable) becomes one line naming the URI
        raise StorageError(f"cannot read {uri}: {type(err).__name__}: {one_line(err)}") from err


def data_lister(storage_options: dict[str, Any] | None = None) -> Callable[[str, str], list[str]]:
    """A ``list_files`` for ``manifest.expand`` that finds data sets on any fsspec data root."""

    def list_files(data_root: str, pattern: str) -> list[str]:
        fs, root = fsspec.core.url_to_fs(data_root, **(storage_options or {}))
        root = root.rstrip("/")
        if not fs.isdir(f"{root}/{pattern.split('/', 1)[0]}"):
            raise FileNotFoundError(f"no folder {data_root.rstrip('/')}/{pattern.split('/', 1)[0]}")
        return sorted(p[len(root) + 1 :] for p in fs.glob(f"{root}/{pattern}") if fs.isfile(p))

    return list_files
