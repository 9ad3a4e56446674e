"""How long planning a resume takes when 10,000 fits are done and 10 are not.

    python -m bench.resume          # local files in a temporary folder
    python -m bench.resume --s3     # and on a moto S3 server on 127.0.0.1

A resume plan needs only `Store.done_keys()` and `Store.failed_keys()`: two listings (one LIST
call per 1000 keys on S3), no marker read. The benchmark writes 10,000 done markers holding a
realistic summary row and 5 failure records, then times the plan (best of 3) and, for scale,
`collect()` of all 10,000 summaries into one table (bench/s3_scale.py times collect at scale).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator

from devservices.loopback import AWS_TEST_ENV
from devservices.s3_server import S3Server
from pipeline.storage import Store

DONE, MISSING, FAILED = 10_000, 10, 5


def fit_keys(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(n)]


def summary(key: str, i: int) -> dict:
    """About the size of a real summary row: spec columns and ~20 metric numbers."""
    row = {
        "key": key,
        "sweep": "bench",
        "image": f"img{i % 68:03d}",
        "dataset": "CBSD68",
        "task": "denoise",
        "seed": i % 5,
        "model": "decoder",
        "lam": 2.0,
        "up_sigma": 0.5,
        "iterations": 10_000,
        "param_sigma": 25,
    }
    return row | {f"metric_{m}": i * 0.001 + m for m in range(20)}


def populate(store: Store, keys: list[str]) -> None:
    """Done markers for all but the last MISSING keys, failure records for FAILED of those."""
    store.fs.makedirs(f"{store.root}/done", exist_ok=True)
    store.fs.makedirs(f"{store.root}/failed", exist_ok=True)
    markers = {f"{store.root}/done/{k}.json": json.dumps(summary(k, i)).encode() for i, k in enumerate(keys[:DONE])}
    markers |= {
        f"{store.root}/failed/{k}.json": json.dumps({"key": k, "reason": "NaN loss"}).encode()
        for k in keys[DONE : DONE + FAILED]
    }
    store.fs.pipe(markers)  # concurrent PUTs on s3fs


def measure(store: Store, keys: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    populate(store, keys)
    seconds = {"write markers": time.perf_counter() - start}
    plans = []
    for _ in range(3):
        start = time.perf_counter()
        done, failed = store.done_keys(), store.failed_keys()
        todo = [k for k in keys if k not in done and k not in failed]
        plans.append(time.perf_counter() - start)
        assert (len(done), len(failed), len(todo)) == (DONE, FAILED, MISSING - FAILED)
    seconds["resume plan (best of 3)"] = min(plans)
    start = time.perf_counter()
    rows = store.collect(write=False).num_rows
    seconds["collect all summaries"] = time.perf_counter() - start
    assert rows == DONE
    return seconds


@contextlib.contextmanager
def s3_store() -> Iterator[Store]:
    """A store on moto's S3 server in its own process on 127.0.0.1 (so it does not share our GIL).

    Fake credentials and a region (AWS_TEST_ENV) and no instance-metadata lookups: nothing leaves
    the machine.
    """
    os.environ.update(AWS_TEST_ENV)
    server = S3Server(own_process=True)
    try:
        store = Store("s3://bench/results", server.options())
        store.fs.mkdir("bench")
        yield store
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--s3", action="store_true", help="also measure on a moto S3 server on 127.0.0.1")
    args = parser.parse_args()
    keys = fit_keys(DONE + MISSING)
    with tempfile.TemporaryDirectory() as folder:
        results = {"local": measure(Store(folder), keys)}
    if args.s3:
        with s3_store() as store:
            results["s3 (moto)"] = measure(store, keys)
    for where, seconds in results.items():
        print(f"{where:10s} " + "  ".join(f"{name}: {value:.2f} s" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
