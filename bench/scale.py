"""Every dataset-scale figure in one run: synthetic stores of N fits, local and on S3.

    python -m bench.scale --fits 10000            # and --fits 100000 (about 20 GB of disk, an hour)

Each part is a benchmark of its own, run here one after another in a fresh process each (so a
part's peak memory is its own), with its output as it comes:

- object storage (`bench.s3_scale`): plan, status and collect on a moto S3 server, N fits;
- queries and the report (`bench.query --report`): N fits × `--iterations` written locally,
  the query dataset built, the mean-curve query timed with its peak memory, `dip report` timed;
- resume on local disk and S3 (`bench.resume --s3`): 10,000 fits, fixed;
- MLflow (`bench.mlflow_scale`): `--mlflow-fits` 10,001-iteration fits into a real server, the
  rate a sweep and `dip sweep sync-mlflow` reach (per fit, so N does not change it);
- snapshots (`bench.snapshots`): bytes and requests to read one snapshot of a paper-scale
  trajectory on S3, and what each snapshot stride costs per 1,000 fits;
- input images (`bench.shared_images`): the bytes a grid's clean and degraded images take, once
  per image instead of once per fit (per fit, so N does not change it).

`--skip` leaves parts out. The figures, and what they are measured against, are in
docs/performance.md ("Dataset scale").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PARTS = ("s3", "query", "resume", "mlflow", "snapshots", "images")


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The command line of each part."""
    query = ["bench.query", "--fits", str(args.fits), "--iterations", str(args.iterations), "--report"]
    return {
        "s3": ["bench.s3_scale", "--fits", str(args.fits), "--new", str(args.new)],
        "query": query + (["--dir", str(args.dir)] if args.dir else []),
        "resume": ["bench.resume", "--s3"],
        "mlflow": ["bench.mlflow_scale", "--fits", str(args.mlflow_fits)],
        "snapshots": ["bench.snapshots"],
        "images": ["bench.shared_images"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=10_000, help="fits in the synthetic stores (default 10,000)")
    parser.add_argument("--iterations", type=int, default=3000, help="metric rows per fit for the query part")
    parser.add_argument("--new", type=int, default=1000, help="fits added before the incremental collect")
    parser.add_argument("--mlflow-fits", type=int, default=50, help="fits logged to MLflow (default 50)")
    parser.add_argument("--dir", type=Path, default=None, help="where the query part writes its store")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS, help="leave a part out; repeatable")
    args = parser.parse_args()
    failed = []
    for part, command in commands(args).items():
        if part in args.skip:
            continue
        print(f"\n=== {part}: python -m {' '.join(command)}", flush=True)
        started = time.perf_counter()
        if subprocess.run([sys.executable, "-m", *command]).returncode:
            failed.append(part)
        print(f"=== {part}: {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
