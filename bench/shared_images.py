"""Bytes of the input images that a grid of fits of one image stores, before and after they were
stored once by content (docs/performance.md, "Input images stored once").

    python -m bench.shared_images                      # F16 512² RGB, 4 λ × 5 seeds at σ = 25
    python -m bench.shared_images --lams 1 --seeds 20  # no λ axis: every degraded image differs

Writes the grid's fits (their clean and degraded PNGs, as the worker makes them, and a one-row
metrics table; no outputs) through `Store.write_fit` into a temporary folder. Before, every fit
kept both PNGs in its folder; after, the bytes are those under images/ and the fits' images.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline.images import decode, encode_png, read_bytes
from pipeline.single import prepare_problem
from pipeline.storage import Store

DEFAULT_IMAGE = Path(os.environ.get("DIP_DATA_ROOT", "../shared/datasets")) / "standard9" / "image_F16_512rgb.png"


def input_bytes(image_path: Path, lams: int, seeds: int, sigma: float) -> tuple[int, int]:
    """(bytes of the fits' input images before, after) for `lams` × `seeds` denoising fits."""
    data, _ = read_bytes(image_path)
    image = decode(data, image_path.name)
    before = 0
    with tempfile.TemporaryDirectory() as root:
        store = Store(root)
        for seed in range(seeds):
            problem = prepare_problem(image, "denoise", {"sigma": sigma}, None, seed, None, image_path.name)
            pngs = {"clean": encode_png(problem.clean[0].numpy()), "degraded": encode_png(problem.y[0].numpy())}
            for lam in range(lams):  # λ changes the network, not the input
                key = f"{seed:08x}{lam:08x}"
                store.write_fit(key, {}, {}, {"iteration": np.zeros(1, dtype=np.int64)}, {}, pngs)
                before += sum(map(len, pngs.values()))
        shared = store.fs.find(f"{store.root}/images") + store.fs.glob(f"{store.root}/fits/*/images.json")
        return before, sum(store.fs.size(path) for path in shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--lams", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sigma", type=float, default=25.0)
    args = parser.parse_args()
    before, after = input_bytes(args.image, args.lams, args.seeds, args.sigma)
    fits = args.lams * args.seeds
    print(
        f"{fits} fits ({args.lams} λ × {args.seeds} seeds) of {args.image.name}: input images "
        f"{before:,} B before, {after:,} B after; per fit {before / fits:,.0f} B → {after / fits:,.0f} B"
    )


if __name__ == "__main__":
    main()
