"""How long plan, status and collect take on S3 when many fits are done (moto's server on 127.0.0.1).

    python -m bench.s3_scale --fits 100000            # and --new 1000 (the default)

Writes N done fits as a sweep leaves them (a bundle per 1,000 fits, `pipeline.sweep.BUNDLE_EVERY`;
each marker a realistic summary row, `bench.resume.summary`) and 100 failure records to a moto
S3 server in its own process, then times, once each:

- driver's bundle: what the sweep driver pays per 1,000 finished fits (`Store.bundle`, the markers
  written first);
- plan: the listings of done/, failed/ and bundles/, the bundles' key columns, and the keys left
  to run (what `sweep.make_plan` reads from storage; expanding the manifest is not counted);
- status: the same plus the reasons of at most 100 failure records (`sweep.status`);
- first collect: every bundle read (the driver merged them past `BUNDLES_MERGED_AT`), summary written;
- full collect: every bundle read again (`Store.collect(full=True)`);
- collect after `--new` fits bundled by a sweep, and after `--new` loose markers (a sweep
  stopped before it could bundle them: one GET each);
- unchanged collect: nothing new, not written (what the report's `load_fits` does).

The figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from bench.resume import fit_keys, s3_store, summary
from pipeline.storage import READ_BATCH, Store
from pipeline.sweep import BUNDLE_EVERY, STATUS_REASONS_READ

FAILED = 100
PUT_CHUNK = 10_000  # markers per fs.pipe call: concurrent PUTs, a bounded batch of bodies in memory


def put_markers(store: Store, keys: list[str], first: int) -> list[dict[str, Any]]:
    """Done markers for `keys`, numbered from `first`, written concurrently; returns them."""
    markers = [summary(k, first + i) for i, k in enumerate(keys)]
    for start in range(0, len(keys), PUT_CHUNK):
        chunk = markers[start : start + PUT_CHUNK]
        store.fs.pipe(
            {f"{store.root}/done/{m['key']}.json": json.dumps(m).encode() for m in chunk}, batch_size=READ_BATCH
        )
    return markers


def put_bundles(store: Store, keys: list[str], first: int) -> None:
    """The fits as a sweep's driver leaves them: their markers in bundles of BUNDLE_EVERY."""
    for start in range(0, len(keys), BUNDLE_EVERY):
        store.bundle([summary(k, first + start + i) for i, k in enumerate(keys[start : start + BUNDLE_EVERY])])


def timed(seconds: dict[str, float], name: str, action: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = action()
    seconds[name] = time.perf_counter() - start
    print(f"{name}: {seconds[name]:.1f} s", flush=True)
    return result


def plan(store: Store, keys: list[str]) -> tuple[list[str], set[str]]:
    """The keys left to run and the failed keys not done, from the two listings (as make_plan)."""
    done, failed = store.done_keys(), store.failed_keys()
    return [k for k in keys if k not in done and k not in failed], failed - done


def status(store: Store, keys: list[str]) -> tuple[Any, int]:
    """The plan and the reasons of at most STATUS_REASONS_READ failures (as sweep.status)."""
    return store.failure_reasons(plan(store, keys)[1], STATUS_REASONS_READ)


def measure(store: Store, fits: int, new: int) -> dict[str, float]:
    keys = fit_keys(fits + 2 * new + FAILED)
    done, bundled, loose, failing = keys[:fits], keys[fits : fits + new], keys[fits + new : -FAILED], keys[-FAILED:]
    seconds: dict[str, float] = {}
    timed(seconds, f"write {fits} fits in bundles", lambda: put_bundles(store, done[BUNDLE_EVERY:], BUNDLE_EVERY))
    markers = put_markers(store, done[:BUNDLE_EVERY], 0)
    timed(seconds, f"driver's bundle of {len(markers)}", lambda: store.bundle(markers))
    records = {f"{store.root}/failed/{k}.json": {"key": k, "reason": f"error {i % 3}"} for i, k in enumerate(failing)}
    store.fs.pipe({path: json.dumps(record).encode() for path, record in records.items()}, batch_size=READ_BATCH)
    todo, _ = timed(seconds, "plan", lambda: plan(store, keys))
    assert len(todo) == 2 * new
    _, read = timed(seconds, "status", lambda: status(store, keys))
    assert read == STATUS_REASONS_READ
    assert timed(seconds, "first collect", store.collect).num_rows == fits
    assert timed(seconds, "full collect", lambda: store.collect(full=True)).num_rows == fits
    put_bundles(store, bundled, fits)
    assert timed(seconds, f"collect after {new} new fits, bundled", store.collect).num_rows == fits + new
    put_markers(store, loose, fits + new)
    assert timed(seconds, f"collect after {new} new loose markers", store.collect).num_rows == fits + 2 * new
    assert timed(seconds, "unchanged collect (report)", lambda: store.collect(write=False)).num_rows == fits + 2 * new
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=10_000, help="done markers before the first collect")
    parser.add_argument("--new", type=int, default=1_000, help="markers added before the incremental collect")
    args = parser.parse_args()
    with s3_store() as store:
        seconds = measure(store, args.fits, args.new)
    print(f"s3 (moto), {args.fits} fits: " + "  ".join(f"{name}: {value:.1f} s" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
