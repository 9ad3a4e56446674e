"""Pipeline overhead: trivial fits (32², 1 iteration) end to end through Ray, storage and MLflow.

    python -m bench.sweep --fits 500                 # local files, embedded MLflow (sqlite)
    python -m bench.sweep --fits 500 --no-mlflow

Prints the time to start Ray, the time of the sweep itself (plan, run, store, log) and fits/s.
Everything lives in a temporary folder; Ray runs locally on loopback.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import sweep
from pipeline.manifest import load_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=500)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "name": "bench",
            "images": [{"sample": "camera", "crop": 32}],
            "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
            "model": {"name": "decoder", "width": 4, "depth": 3},
            "repeats": args.fits,
            "fit": {"iterations": 1, "stop_window": 1, "snapshot_stride": 1},
            "storage": str(Path(tmp) / "results"),
            "mlflow": {"enabled": not args.no_mlflow, "tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
            "resources": {"num_cpus": 1},
        }
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(doc))
        manifest = load_manifest(path)
        start = time.perf_counter()
        sweep.connect(None)
        ray_s = time.perf_counter() - start
        outcome = sweep.run_sweep(manifest, progress=False)
        total = time.perf_counter() - start - ray_s
        print(
            f"{outcome.done} fits done, {outcome.failed} failed; Ray start {ray_s:.1f} s; "
            f"sweep {total:.1f} s → {outcome.done / total:.1f} fits/s end to end "
            f"(MLflow {'off' if args.no_mlflow else 'embedded sqlite'})"
        )


if __name__ == "__main__":
    main()
