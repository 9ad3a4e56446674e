"""Questions across fits, in SQL: every fit's per-iteration metrics in one dataset, read by DuckDB.

Each fit keeps its own ``fits/<key>/metrics.parquet``; a question across thousands of fits
("the mean band-5 FBC curve by λ") should not open thousands of files. `consolidate` (run by
``dip sweep collect``) copies the metrics of every fit not yet copied into Parquet parts under
``<root>/metrics/``, each row carrying its fit key and its fit's spec columns, sorted by those
columns so that a filter on them (``WHERE lam = 2``) skips whole row groups by their statistics.
`query` answers SQL over two views: ``fits`` (one row per fit, the summary table) and
``metrics`` (one row per fit and logged iteration). DuckDB streams what a query needs, so memory
stays bounded whatever the number of fits.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.messages import UserError
from pipeline.storage import Store, with_retries, write_whole

DATASET = "metrics"
INDEX = "index.json"  # {"parts": {part file: [fit keys in it]}}: what the dataset holds, written after each part
FITS_PER_PART = 500  # bounds the memory of one copy: 500 fits × 10,000 iterations × ~15 columns
ROWS_PER_GROUP = 256 * 1024  # row groups small enough for their statistics to skip most of a filtered-out part
READERS = 8  # concurrent reads of per-fit metrics (object stores answer each GET in tens of ms)
MEMORY_LIMIT = "2GB"  # DuckDB spills to disk beyond this rather than growing
# Spec columns copied to every row, and the order rows are sorted in (most often filtered first)
SPEC_COLUMNS = (
    "experiment", "task", "model", "method", "lam", "up_sigma", "upsample", "optimizer", "width", "depth", "lr",
    "iterations", "crop", "image", "dataset", "seed",
)  # fmt: skip


def _index_path(store: Store) -> str:
    return f"{store.root}/{DATASET}/{INDEX}"


def read_index(store: Store) -> dict[str, list[str]]:
    """Part file -> fit keys of the consolidated dataset; empty when there is none yet."""
    path = _index_path(store)
    if not with_retries(lambda: store.fs.exists(path)):
        return {}
    parts: dict[str, list[str]] = json.loads(with_retries(lambda: store.fs.cat_file(path)))["parts"]
    return parts


def _write_index(store: Store, parts: dict[str, list[str]]) -> None:
    data = json.dumps({"parts": parts}, separators=(",", ":")).encode()
    with_retries(lambda: write_whole(store.fs, _index_path(store), data))


def _spec_columns(summary: pa.Table) -> list[str]:
    params = sorted(c for c in summary.column_names if c.startswith("param_"))
    wanted = [*SPEC_COLUMNS[:2], *params, *SPEC_COLUMNS[2:]]
    return [c for c in wanted if c in summary.column_names]


def _fit_rows(store: Store, key: str, spec: dict[str, Any], types: dict[str, pa.DataType]) -> pa.Table:
    """One fit's metrics with its key and spec values on every row."""
    metrics = store.read_metrics(key)
    n = metrics.num_rows
    constant = {"key": pa.repeat(pa.scalar(key, pa.string()), n)}
    constant |= {c: pa.repeat(pa.scalar(v, types[c]), n) for c, v in spec.items()}
    table = metrics
    for position, (name, column) in enumerate(constant.items()):
        table = table.add_column(position, name, column)
    return table


def _write_part(store: Store, keys: list[str], summary: pa.Table, name: str) -> None:
    spec_columns = _spec_columns(summary)
    types = {c: summary.schema.field(c).type for c in spec_columns}
    rows = {r["key"]: r for r in summary.select(["key", *spec_columns]).to_pylist() if r["key"] in set(keys)}
    specs = {k: {c: rows[k][c] for c in spec_columns} for k in keys}
    with ThreadPoolExecutor(READERS) as pool:
        tables = list(pool.map(lambda k: _fit_rows(store, k, specs[k], types), keys))
    table = pa.concat_tables(tables, promote_options="default")  # 1-D fits have other metric columns
    order = [(c, "ascending") for c in [*spec_columns, "key", "iteration"]]
    table = table.sort_by(order)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROWS_PER_GROUP, compression="zstd")
    data = sink.getvalue().to_pybytes()
    with_retries(lambda: write_whole(store.fs, f"{store.root}/{DATASET}/{name}", data))


def _remove(store: Store, path: str) -> None:
    with_retries(lambda: store.fs.rm_file(path))


def consolidate(store: Store, summary: pa.Table) -> int:
    """Copy into the dataset the metrics of every fit of `summary` (the collected table) that it
    lacks; returns how many fits were added.

    Parts are written first and the index after each one, so an interrupted copy leaves at most
    a part the index does not name: it is removed here and its fits copied again. A fit deleted
    from storage since (its done marker removed, so that it runs again) makes the whole dataset
    be rebuilt, since its rows sit among others' in a part.
    """
    folder = f"{store.root}/{DATASET}"
    parts = read_index(store)
    done = set(summary.column("key").to_pylist())
    if any(key not in done for keys in parts.values() for key in keys):
        parts = {}
    with_retries(lambda: store.fs.makedirs(folder, exist_ok=True))
    for path in with_retries(lambda: store.fs.find(folder, maxdepth=1)):  # nothing yet: [] (no folders on S3)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("part-") and name not in parts:  # left by an interrupted copy, or before a rebuild
            _remove(store, path)
    copied = {key for keys in parts.values() for key in keys}
    new = sorted(done - copied)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for start in range(0, len(new), FITS_PER_PART):
        keys = new[start : start + FITS_PER_PART]
        name = f"part-{stamp}-{start // FITS_PER_PART:05d}.parquet"
        _write_part(store, keys, summary, name)
        parts[name] = keys
        _write_index(store, parts)
    if not new and not parts:
        _write_index(store, parts)
    return len(new)


def _duckdb_path(store: Store, path: str) -> str:
    """A path DuckDB reads: local as it is, remote with its protocol (through the store's fsspec
    filesystem, registered with DuckDB: no DuckDB extension or download needed)."""
    if store.uri.startswith("file://"):  # Store makes every local root a file:// URI
        return path
    return f"{store.uri.split('://', 1)[0]}://{path}"


def query(store: Store, sql: str) -> pd.DataFrame:
    """The answer to `sql` over the views ``fits`` and ``metrics`` of a store."""
    import duckdb

    con = _connect(store, read_index(store))
    try:
        return con.execute(sql).df()
    except duckdb.Error as error:
        raise UserError(f"query failed: {str(error).splitlines()[0]}") from error


def band_crossings(store: Store, level: float) -> pd.DataFrame:
    """Per fit in the query dataset that has FBC columns: ``key``, then per band the first
    iteration at which it reaches `level` × its own maximum over the fit (the report's band
    convergence, Shi et al. Fig. 3), in one pass over the dataset. Empty without a dataset."""
    parts = read_index(store)
    if not parts:
        return pd.DataFrame(columns=["key"])
    con = _connect(store, parts)
    bands = sorted(
        (name for (name,) in con.execute("SELECT column_name FROM (DESCRIBE metrics)").fetchall()),
        key=lambda name: (len(name), name),
    )
    bands = [b for b in bands if b.startswith("fbc_")]
    if not bands:
        return pd.DataFrame(columns=["key"])
    peaks = ", ".join(f"max({b}) AS peak_{b}" for b in bands)
    firsts = ", ".join(f"min(m.iteration) FILTER (WHERE m.{b} >= {level!r} * p.peak_{b}) AS {b}" for b in bands)
    sql = (
        f"WITH p AS (SELECT key, {peaks} FROM metrics WHERE {bands[0]} IS NOT NULL GROUP BY key) "
        f"SELECT m.key, {firsts} FROM metrics m JOIN p USING (key) GROUP BY m.key"
    )
    return con.execute(sql).df()


def _connect(store: Store, parts: dict[str, list[str]]) -> Any:
    """A DuckDB connection with the store's views ``fits`` and ``metrics``."""
    import duckdb

    summary = f"{store.root}/summary.parquet"
    if not parts or not with_retries(lambda: store.fs.exists(summary)):
        raise UserError(f"storage {store.uri} has no collected results to query: run 'dip sweep collect' first")
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("SET enable_progress_bar = false")  # it would print into the answer on stdout
    if _duckdb_path(store, summary) != summary:
        con.register_filesystem(store.fs)
    files = [_duckdb_path(store, f"{store.root}/{DATASET}/{name}") for name in parts]
    con.execute(f"CREATE VIEW fits AS SELECT * FROM read_parquet('{_duckdb_path(store, summary)}')")
    con.execute(f"CREATE VIEW metrics AS SELECT * FROM read_parquet({files!r}, union_by_name = true)")
    return con
