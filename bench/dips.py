"""Why a λ-bounded Decoder's PSNR dips in bursts: the same fit under changed optimiser settings.

    python -m bench.dips [--iterations 600] [--variants baseline,adam-eps-1e-4,...]

The fit is the quickstart's camera case (64² centre crop of scikit-image's camera, denoising
σ = 15, Decoder width 32, depth 5, λ = 2), run without the backtracking safeguard. For each
variant it prints how many iterations lost more than 0.3 dB of PSNR against the target from
the iteration before, and where. Findings are in docs/training.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data

from dipmodel.fit import FitConfig, FitLoop
from dipmodel.layers import LipschitzNorm
from dipmodel.networks import NetConfig
from dipmodel.operators import build_operator

DIP_THRESHOLD = 0.3  # dB lost in one iteration that counts as a dip
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "adam-eps-1e-6": {"eps": 1e-6},
    "adam-eps-1e-4": {"eps": 1e-4},
    "beta2-0.99": {"betas": (0.9, 0.99)},
    "batch-norm": {"lam": None},
    "norm-bias-frozen": {"freeze_norm_bias": True},
    "lr-5e-4": {"lr": 5e-4},
}


def dips(
    iterations: int,
    lam: float | None = 2.0,
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.999),
    lr: float = 1e-3,
    freeze_norm_bias: bool = False,
) -> tuple[np.ndarray, float]:
    """Iterations whose PSNR against the target fell by more than DIP_THRESHOLD, and the final PSNR."""
    clean = torch.from_numpy(data.camera()[224:288, 224:288].copy()).float()[None, None] / 255
    op = build_operator("denoise", (1, 64, 64), seed=0, sigma=15)
    net = NetConfig(name="decoder", out_channels=1, width=32, depth=5, lam=lam)
    cfg = FitConfig(iterations=iterations, lr=lr, betas=betas, auto_stop=False, backtrack=False, spectral=False)
    loop = FitLoop(net, op, op.degrade(clean), clean, cfg)
    trained = [
        p
        for m in loop.net.modules()
        for p in m.parameters(recurse=False)
        if not (freeze_norm_bias and isinstance(m, LipschitzNorm))
    ]
    loop.optimiser = torch.optim.Adam(trained, lr=lr, betas=betas, eps=eps)
    for t in range(iterations + 1):
        loop.iteration(t)
    psnr = loop.record.table()["psnr_target"]
    return np.flatnonzero(psnr[:-1] - psnr[1:] > DIP_THRESHOLD) + 1, float(psnr[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.variants.split(","):
        start = time.perf_counter()
        where, final = dips(args.iterations, **VARIANTS[name])
        print(
            f"{name:18s} dips > {DIP_THRESHOLD} dB: {len(where):3d}  final PSNR vs target {final:.2f} dB  "
            f"at {where[:10].tolist()}{' …' if len(where) > 10 else ''}  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
