"""How much the on-device metrics cost a fit, and how fast a step is.

    python -m bench.fit                      # CPU: Decoder λ=2, bilinear and Gaussian, 64² and 256²
    python -m bench.fit --device cuda --sizes 512 --iters 200

For each configuration it times, in ms per iteration: a bare loop (forward, data term,
backward, Adam step, nothing else); ``dipmodel.fit.fit`` with no metrics (one row at the
start and the end); and ``fit`` with PSNR, FBC, blur/sharpness and the stop rule at every
iteration. "metrics cost" compares the last two, which share all other code. The achieved
TFLOP/s is of the bare step (FLOPs counted by ``torch.utils.flop_counter``); on CUDA it adds
peak memory.
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


def fit_ms(net_cfg: NetConfig, size: int, iters: int, device: torch.device, metrics: bool) -> float:
    """ms per iteration of the real fit, with every metric at every iteration or with none."""
    op = build_operator("denoise", (3, size, size), seed=0, sigma=25)
    clean = torch.rand(1, 3, size, size)
    if metrics:
        cfg = FitConfig(iterations=iters, metric_stride=1, auto_stop=True, stop_window=max(iters // 4, 1))
    else:  # one row at t = 0 and t = T only, no spectral metrics, no stop rule
        cfg = FitConfig(iterations=iters, metric_stride=iters, auto_stop=False, spectral=False)
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
    print(f"{'config':28s} {'size':>5s} {'bare ms/it':>11s} {'fit, none':>10s} {'fit, all':>9s} "
          f"{'metrics cost':>12s} {'TFLOP/s':>8s} {'peak MiB':>9s}")
    for upsample in ("bilinear", "gaussian"):
        net_cfg = NetConfig(name="decoder", width=args.width, upsample=upsample, norm="lipschitz", lam=2.0)
        for size in args.sizes:
            iters = args.iters if size <= 128 or device.type == "cuda" else max(args.iters // 4, 3)
            bare, flops = bare_loop_ms(net_cfg, size, iters, device)
            fit_ms(net_cfg, size, 2, device, metrics=True)  # warm-up
            plain = fit_ms(net_cfg, size, iters, device, metrics=False)
            full = fit_ms(net_cfg, size, iters, device, metrics=True)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            row = {"network": "decoder", "lam": 2.0, "upsample": upsample, "width": args.width, "size": size,
                   "device": str(device), "bare_ms": bare, "fit_no_metrics_ms": plain, "fit_all_metrics_ms": full,
                   "metrics_cost_pct": 100 * (full - plain) / plain, "tflops": flops / (bare / 1000) / 1e12,
                   "peak_mib": peak, "iterations": iters}
            rows.append(row)
            print(f"{'decoder λ=2 ' + upsample:28s} {size:5d} {bare:11.1f} {plain:10.1f} {full:9.1f} "
                  f"{row['metrics_cost_pct']:11.1f}% {row['tflops']:8.3f} {peak:9.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
