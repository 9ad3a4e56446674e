"""Questions across many fits: how long `dip sweep collect` takes to build the query dataset and
how long, and how much memory, the mean-curve query takes, for N synthetic fits.

    python -m bench.query --fits 10000 --iterations 3000 [--report]

Each synthetic fit is written through `Store.write_fit` with the metric columns of a real image
fit (PSNR twice, five FBC bands, blur, sharpness, ratio, fallbacks) at every iteration, random
values, and a summary row with the spec columns a λ study has and the numbers the worker takes
from the curves (`pipeline.single.curve_outcome`); no trajectory. Then: collect
(summary and query dataset, timed apart), a second collect with nothing new, and in a fresh
process each the mean band-5 FBC curve by λ over every fit and iteration, with its peak memory
(the process's maximum resident set size, which includes Python and DuckDB themselves).
`--report` then times `dip report` over the same store in a fresh process, with its peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.query import consolidate
from pipeline.record import upgrade
from pipeline.single import curve_outcome
from pipeline.storage import Store

COLUMNS = ("psnr_target", "psnr_clean", "fbc_1", "fbc_2", "fbc_3", "fbc_4", "fbc_5", "blur", "sharp", "ratio")
MEAN_CURVE = "SELECT lam, iteration, avg(fbc_5) AS fbc_5 FROM metrics GROUP BY ALL ORDER BY ALL"
TIMED_QUERY = """
import json, resource, sys, time
from pipeline.query import query
from pipeline.storage import Store
started = time.perf_counter()
answer = query(Store(sys.argv[1]), sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(answer),
                  "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def log(message: str) -> None:
    print(message, flush=True)


def write_fits(store: Store, count: int, iterations: int) -> None:
    rng = np.random.default_rng(0)
    base = {c: rng.random(iterations, dtype=np.float32) for c in COLUMNS}

    def one(i: int) -> None:
        key = hashlib.sha256(str(i).encode()).hexdigest()[:16]
        metrics = {"iteration": np.arange(iterations)} | {c: v + np.float32(i % 7) for c, v in base.items()}
        metrics["fallbacks"] = np.zeros(iterations, np.float32)
        lam = (None, 1.0, 2.0, 3.0)[i % 4]
        summary = {"key": key, "sweep": "bench", "kind": "image", "image": f"img{i % 68:03d}.png",
                   "dataset": "cbsd68", "task": "denoise", "param_sigma": 25.0, "model": "decoder", "lam": lam,
                   "seed": i // 272, "iterations": iterations, "best_psnr": 20.0 + i % 5}  # fmt: skip
        summary |= curve_outcome(metrics)  # as the worker adds them
        store.write_fit(key, {"key": key}, summary, metrics, {"snapshot_iterations": np.zeros(0, np.int64)}, {})

    with ThreadPoolExecutor(8) as pool:
        for done, _ in enumerate(pool.map(one, range(count)), 1):
            if done % 2000 == 0:
                log(f"  {done} fits written")


def timed_query(root: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", TIMED_QUERY, root, MEAN_CURVE], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


TIMED_REPORT = """
import json, resource, sys, time
from pipeline.cli import main
started = time.perf_counter()
code = main(["report", sys.argv[1], "--out", sys.argv[2]])
print(json.dumps({"seconds": time.perf_counter() - started, "code": code,
                  "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def timed_report(root: str, out: str) -> dict[str, float]:
    """`dip report` over the store in a fresh process: its time and peak memory."""
    done = subprocess.run([sys.executable, "-c", TIMED_REPORT, root, out], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=10_000)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the store (default: a temporary folder)")
    parser.add_argument("--report", action="store_true", help="also time `dip report` over the same store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Store(tmp)
        started = time.perf_counter()
        write_fits(store, args.fits, args.iterations)
        log(f"{args.fits} fits × {args.iterations} iterations written in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        table = store.collect(upgrade=upgrade)
        summary_s = time.perf_counter() - started
        started = time.perf_counter()
        consolidate(store, table)
        dataset_s = time.perf_counter() - started
        started = time.perf_counter()
        consolidate(store, store.collect(upgrade=upgrade))
        again_s = time.perf_counter() - started
        size = sum(p.stat().st_size for p in Path(tmp, "metrics").glob("*.parquet")) / 1e9
        log(f"collect: summary {summary_s:.1f} s, query dataset {dataset_s:.1f} s ({size:.2f} GB)")
        log(f"collect again, nothing new: {again_s:.1f} s")
        for attempt in range(2):
            result = timed_query(tmp)
            log(
                f"mean band-5 curve by λ (run {attempt + 1}): {result['seconds']:.1f} s, "
                f"{result['rows']} rows, peak memory {result['max_rss_gb']:.2f} GB"
            )
        if args.report:
            report = timed_report(tmp, str(Path(tmp, "report")))
            log(f"dip report: {report['seconds']:.0f} s, peak memory {report['max_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
