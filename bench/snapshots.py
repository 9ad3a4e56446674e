"""What reading one snapshot of a paper-scale trajectory costs on S3, and what each snapshot
stride costs to store.

    python -m bench.snapshots                        # Peppers, 512² RGB
    python -m bench.snapshots --image set14/baboon.png --json snapshots.json

The snapshots look like a DIP fit's outputs: a DIP fits an image's low frequencies first, then
its details, then the noise of its target (Ulyanov et al. 2018; Shi et al. 2022), so the snapshot
at a fraction f of the 10,000 iterations is the clean image blurred with a Gaussian of width
8·(1−f)⁴ px plus Gaussian noise of σ = f·25/255 (a σ = 25 denoising target fitted in full by the
end), clipped to [0, 1]. Random pixels would not compress at all; real outputs do, a little.

- one snapshot: a trajectory of 21 snapshots (every 500 iterations, float16) written with
  `Store.write_fit` to moto's S3 server in its own process on 127.0.0.1; the requests and bytes
  moto records (its request recorder) and the seconds (median of 5) to read snapshot 10 alone
  (`Store.open_trajectory`) and the whole file (`Store.read_trajectory`);
- stride cost: the trajectory file of a 10,000-iteration fit at each snapshot stride, per fit and
  per 1,000 fits, float16 and float32, summed from each snapshot's measured bytes in the file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image
from scipy.ndimage import gaussian_filter

from bench.resume import s3_store
from pipeline.storage import trajectory_bytes

ITERATIONS = 10_000
STRIDES = (100, 250, 500, 1000, 2500, None)  # None: no snapshots kept (snapshot_stride 0)
DTYPES = ("float16", "float32")
NOISE = 25 / 255
REPEATS = 5


def snapshot_iterations(stride: int | None) -> np.ndarray:
    """The iterations a fit keeps snapshots at: every `stride`-th and the last (dipmodel.fit)."""
    if stride is None:
        return np.zeros(0, np.int64)
    return np.union1d(np.arange(0, ITERATIONS + 1, stride), [ITERATIONS])


def dip_like(clean: np.ndarray, iteration: int, dtype: str) -> np.ndarray:
    """The output of a DIP fit of `clean` (C, H, W) at `iteration`, seeded by the iteration."""
    f = iteration / ITERATIONS
    blurred = gaussian_filter(clean, sigma=(0, *(2 * [8 * (1 - f) ** 4])))
    noise = np.random.default_rng(iteration).normal(0, f * NOISE, clean.shape)
    return np.clip(blurred + noise, 0, 1).astype(dtype)


def trajectory(clean: np.ndarray, stride: int, dtype: str = "float16") -> dict[str, np.ndarray]:
    """A fit's trajectory at `stride`, as `Store.write_fit` takes it."""
    iterations = snapshot_iterations(stride)
    return {
        "snapshots": np.stack([dip_like(clean, t, dtype) for t in iterations.tolist()]),
        "snapshot_iterations": iterations,
    }


def load(path: Path) -> np.ndarray:
    """An image as (C, H, W) float32 in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255


# --- reading one snapshot from S3 ------------------------------------------------------------------


def requests_made(endpoint: str, size: int, read: Callable[[], Any]) -> tuple[dict[str, int], int, float]:
    """What `read` asks the S3 server for, by moto's own record: requests by method and the bytes
    its GETs ask for (their Range, else the whole `size`); and its seconds, median of REPEATS."""
    api = f"{endpoint}/moto-api/recorder"
    for action in ("reset-recording", "start-recording"):
        requests.post(f"{api}/{action}", timeout=10).raise_for_status()
    read()
    requests.post(f"{api}/stop-recording", timeout=10).raise_for_status()
    entries = [json.loads(line) for line in requests.get(f"{api}/download-recording", timeout=30).text.splitlines()]
    methods = dict(Counter(entry["method"] for entry in entries))
    asked = 0
    for entry in (e for e in entries if e["method"] == "GET"):
        first, last = entry["headers"].get("Range", f"bytes=0-{size - 1}").removeprefix("bytes=").split("-")
        asked += int(last) - int(first) + 1
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        read()
        seconds.append(time.perf_counter() - start)
    return methods, asked, statistics.median(seconds)


def one_snapshot(clean: np.ndarray) -> dict[str, Any]:
    """Requests, bytes and seconds to read one snapshot of a 21-snapshot trajectory, and all of it."""
    fit = trajectory(clean, 500)
    key = "0" * 16
    figures: dict[str, Any] = {"snapshots": len(fit["snapshots"])}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MOTO_RECORDER_FILEPATH"] = f"{folder}/moto-recording"  # read by moto's server as it starts
        with s3_store() as store:
            store.write_fit(key, {}, {"key": key}, {"iteration": np.arange(ITERATIONS + 1)}, fit, {})
            size = figures["file bytes"] = store.fs.size(f"{store.root}/fits/{key}/trajectory.npz")
            one_member = io.BytesIO()
            np.savez_compressed(one_member, allow_pickle=False, **fit)  # as trajectories were stored before
            figures["one-member file bytes"] = one_member.getbuffer().nbytes
            one = store.open_trajectory(key).read([10])[0]
            assert np.array_equal(one.view(np.uint16), fit["snapshots"][10].view(np.uint16))
            endpoint = store.storage_options["client_kwargs"]["endpoint_url"]
            reads = {
                "one snapshot": lambda: store.open_trajectory(key).read([10]),
                "whole file": lambda: store.read_trajectory(key),
            }
            for name, read in reads.items():
                methods, asked, seconds = requests_made(endpoint, size, read)
                figures[name] = {"requests": methods, "bytes": asked, "seconds": seconds}
        del os.environ["MOTO_RECORDER_FILEPATH"]
    return figures


# --- what a stride costs ------------------------------------------------------------------------


def snapshot_bytes(clean: np.ndarray, iteration: int, dtype: str) -> int:
    """What one snapshot adds to a trajectory file: its member, its zip entries and its iteration."""
    one = {"snapshots": dip_like(clean, iteration, dtype)[None], "snapshot_iterations": np.array([iteration])}
    return len(trajectory_bytes(one)) - len(trajectory_bytes({}))


def stride_costs(clean: np.ndarray) -> dict[str, dict[str, int]]:
    """Trajectory bytes per fit at each stride and dtype: the file with no snapshot plus each
    snapshot's own bytes, each snapshot measured once."""
    empty = len(trajectory_bytes({}))
    kept = np.unique(np.concatenate([snapshot_iterations(stride) for stride in STRIDES])).tolist()
    costs: dict[str, dict[str, int]] = {}
    for dtype in DTYPES:
        size = {t: snapshot_bytes(clean, t, dtype) for t in kept}
        costs[dtype] = {
            str(stride): empty + sum(size[t] for t in snapshot_iterations(stride).tolist()) for stride in STRIDES
        }
        check = len(trajectory_bytes(trajectory(clean, 2500, dtype)))
        assert abs(check - costs[dtype]["2500"]) < 100, (check, costs[dtype]["2500"])  # the sum is the file
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="standard9/image_Peppers512rgb.png", help="under DIP_DATA_ROOT")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    clean = load(Path(os.environ.get("DIP_DATA_ROOT", "../shared/datasets")) / args.image)
    c, h, w = clean.shape
    print(f"{args.image}: {c}×{h}×{w}, raw snapshot {clean.size * 2:,} bytes as float16", flush=True)

    read = one_snapshot(clean)
    print(f"\none snapshot of {read['snapshots']} on S3 (moto), file {read['file bytes']:,} bytes", end=" ")
    print(f"(all snapshots in one member, as stored before: {read['one-member file bytes']:,})")
    for name in ("one snapshot", "whole file"):
        figures = read[name]
        asked = ", ".join(f"{n} {method}" for method, n in sorted(figures["requests"].items()))
        print(f"  {name:12s} {figures['bytes']:>12,} bytes  {asked:12s}  {figures['seconds'] * 1000:6.1f} ms")

    raw = clean.size * 2
    blurry, noisy = (snapshot_bytes(clean, t, "float16") for t in (0, ITERATIONS))
    print(f"\none float16 snapshot in the file: {blurry:,} bytes at the start ({blurry / raw:.0%} of raw), ", end="")
    print(f"{noisy:,} at the end ({noisy / raw:.0%})")
    costs = stride_costs(clean)
    print(f"\ntrajectory per fit and per 1,000 fits, {ITERATIONS:,} iterations")
    print(
        f"  {'stride':>6s} {'snapshots':>9s}" + "".join(f" {d + ' / fit':>15s} {'/ 1,000 fits':>13s}" for d in DTYPES)
    )
    for stride in STRIDES:
        row = f"  {stride or 'none':>6} {len(snapshot_iterations(stride)):>9d}"
        for dtype in DTYPES:
            size = costs[dtype][str(stride)]
            row += f" {size / 1e6:>12.2f} MB {size / 1e6:>10.1f} GB"  # 1,000 fits: MB per fit = GB
        print(row)
    if args.json:
        args.json.write_text(json.dumps({"image": args.image, "one snapshot": read, "strides": costs}, indent=1))


if __name__ == "__main__":
    main()
