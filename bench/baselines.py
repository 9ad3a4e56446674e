"""Seconds per image of each classical baseline at 256² on this machine's CPU.

    python -m bench.baselines [--size 256] [--repeats 2] [--threads 1]

One RGB crop of scikit-image's astronaut; each method on the task it restores (TV on all four
it is used for in S6–S9), the median of ``repeats`` runs, and the PSNR gain over the degraded
input as a sanity check. These run on CPU actors (num_gpus = 0) in a GPU sweep.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from skimage import data

from dipmodel import metrics as M
from dipmodel.classical import ClassicalConfig, restore
from dipmodel.operators import build_operator

CASES = [  # (method, settings, task, task parameters), as in the S6–S9 manifests
    ("bm3d", {}, "denoise", {"sigma": 25}),
    ("bicubic", {}, "superres", {"factor": 4}),
    ("tv", {"tv_weight": 0.1}, "denoise", {"sigma": 25}),
    ("tv", {"tv_weight": 0.03}, "jpeg", {"quality": 10}),
    ("tv", {"tv_weight": 0.1}, "inpaint", {"kind": "center", "ratio": 0.25}),
    ("tv", {"tv_weight": 0.01}, "superres", {"factor": 4}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a CPU actor's num_cpus)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = args.size
    clean = torch.from_numpy(data.astronaut()[:s, 100 : 100 + s].copy()).permute(2, 0, 1).float()[None] / 255
    print(f"{'method':8} {'task':22} {'s/image':>8} {'PSNR':>6} {'gain':>6}")
    for method, settings, task, params in CASES:
        op = build_operator(task, (3, s, s), seed=0, **params)
        y = op.degrade(clean)
        shown = y if y.shape == clean.shape else torch.nn.functional.interpolate(y, size=(s, s), mode="nearest")
        runs = [restore(ClassicalConfig(method, **settings), op, y, clean) for _ in range(args.repeats)]
        seconds = statistics.median(r.seconds for r in runs)
        gain = runs[0].final_psnr - float(M.psnr(shown, clean)[0])
        label = f"{task} {' '.join(f'{k}={v}' for k, v in params.items())}"
        print(f"{method:8} {label:22} {seconds:8.2f} {runs[0].final_psnr:6.2f} {gain:+6.2f}", flush=True)


if __name__ == "__main__":
    main()
