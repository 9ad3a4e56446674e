"""How much the on-device metrics cost a fit, and how fast a step is.

    python -m bench.fit                      # CPU: Decoder λ=2, bilinear and Gaussian, 64² and 256²
    python -m bench.fit --device cuda --sizes 512 --iters 200

For each configuration it times (a) a bare loop — forward, data term, backward, Adam step,
nothing else — and (b) ``dipmodel.fit.fit`` with PSNR, FBC and blur/sharpness computed every
iteration, and prints both in ms per iteration with the overhead of (b) over (a). On CUDA it
adds peak memory and the achieved TFLOP/s of the step (FLOPs counted by
``torch.utils.flop_counter``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dipmodel.fit import FitConfig, fit
from dipmodel.networks import NetConfig, build_network
from dipmodel.operators import build_operator, data_term


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop_ms(net_cfg: NetConfig, size: int, iters: int, device: torch.device) -> tuple[float, float]:
    """ms per step of the plain optimisation, and the FLOPs of one step."""
    torch.manual_seed(0)
    net = build_network(net_cfg, (3, size, size)).to(device)
    z = net.make_input(torch.Generator().manual_seed(0)).to(device)
    op = build_operator("denoise", (3, size, size), seed=0, sigma=25).to(device)
    y = op.degrade(torch.rand(1, 3, size, size)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        data_term(op, net(z), y).backward()
        opt.step()

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(2):  # warm-up
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return 1000 * (time.perf_counter() - start) / iters, float(counter.get_total_flops())


def fit_ms(net_cfg: NetConfig, size: int, iters: int, device: torch.device) -> float:
    """ms per iteration of the real fit with every metric at every iteration."""
    op = build_operator("denoise", (3, size, size), seed=0, sigma=25)
    clean = torch.rand(1, 3, size, size)
    cfg = FitConfig(iterations=iters, metric_stride=1, auto_stop=True, stop_window=max(iters // 4, 1))
    fit(net_cfg, op, op.degrade(clean), clean, FitConfig(iterations=2), device=device)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = fit(net_cfg, op, op.degrade(clean), clean, cfg, device=device)
    return 1000 * result.seconds / (iters + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    print(f"{'config':34s} {'size':>5s} {'bare ms/it':>11s} {'fit+metrics':>12s} {'overhead':>9s} "
          f"{'TFLOP/s':>8s} {'peak MiB':>9s}")
    for upsample in ("bilinear", "gaussian"):
        net_cfg = NetConfig(name="decoder", width=args.width, upsample=upsample, norm="lipschitz", lam=2.0)
        for size in args.sizes:
            iters = args.iters if size <= 128 or device.type == "cuda" else max(args.iters // 4, 3)
            bare, flops = bare_loop_ms(net_cfg, size, iters, device)
            full = fit_ms(net_cfg, size, iters, device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            row = {"network": "decoder", "lam": 2.0, "upsample": upsample, "width": args.width, "size": size,
                   "device": str(device), "bare_ms": bare, "fit_metrics_ms": full,
                   "overhead_pct": 100 * (full - bare) / bare, "tflops": flops / (bare / 1000) / 1e12,
                   "peak_mib": peak, "iterations": iters}
            rows.append(row)
            print(f"{'decoder λ=2 ' + upsample:34s} {size:5d} {bare:11.1f} {full:12.1f} "
                  f"{row['overhead_pct']:8.1f}% {row['tflops']:8.3f} {peak:9.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
