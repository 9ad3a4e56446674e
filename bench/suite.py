"""Throughput of a fit on this device: the paper configurations, the speed options, the naive baseline.

    python -m bench.suite --device cuda --json bench-gpu.json     # full set, ~5-8 min on an H100
    python -m bench.suite --device cpu --quick                     # CI-sized check, ~1-2 min
    python -m bench.suite --device cuda --check-precision          # tf32/bf16 vs fp32 PSNR curves, 512²
    python -m bench.suite --device cuda --pack                     # fits/hour of 128² fits packed N = 1, 2, 4, 8
    python -m bench.suite --device cpu --manifests manifests/medium  # a folder's fits in 4 speed modes vs fp32

Imports only dipmodel, torch, numpy and the standard library, so it runs on a bare GPU box
(``--manifests`` alone imports the pipeline, to read and prepare the manifests' fits).
For each network (Decoder, Encoder-Decoder; 128 channels, λ = 2, Lipschitz norm), upsampling
(bilinear, Gaussian) and size it times ``dipmodel.fit.fit`` in each *variant* (precision,
memory format, σ method, compile) with all metrics every iteration, every 10 iterations, and
with none, and reports ms/iteration, it/s, peak memory, achieved FLOP/s of the network
(forward + backward, counted by ``torch.utils.flop_counter``) and its fraction of the device's
dense peak for the precision used. "metrics cost" = (metrics every iteration) / (none) − 1.
The *naive* row is the papers' code style: exact SVD of every conv weight every step and
NumPy metrics on the host every step. ``--pack`` measures fits per hour of small fits run
N at a time by ``dipmodel.fit.fit_many`` against one at a time. docs/performance.md explains
every column.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dipmodel.fit import FitConfig, FitJob, FitLoop, FitResult, fit, fit_many
from dipmodel.networks import NetConfig, build_network
from dipmodel.operators import Operator, build_operator, data_term

# Dense peak TFLOP/s (no sparsity) by precision, from the vendors' data sheets; matched by
# substring of torch.cuda.get_device_name, first match wins. Unknown devices get no fraction.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}),  # SXM
    ("H200", {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
]
STRIDES: dict[str, int | None] = {"every 1": 1, "every 10": 10, "none": None}


@dataclass(frozen=True)
class Variant:
    """How a fit is run: the speed options of FitConfig and the σ method of the network."""

    name: str
    precision: str = "fp32"
    channels_last: bool = False
    sn_method: str = "gram"
    compile: bool = False


VARIANTS = [
    Variant("fp32"),  # the default fit: fp32, NCHW, exact σ by eigvalsh
    Variant("tf32", "tf32", True, "power"),
    Variant("bf16", "bf16", True, "power"),
]
COMPILED = Variant("bf16+compile", "bf16", True, "power", compile=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The dense peak of this GPU for a precision, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[precision] for key, peaks in PEAK_TFLOPS if key in name), None)


def test_image(size: int) -> torch.Tensor:
    """A deterministic (1, 3, size, size) picture with smooth shading, edges and texture.

    Synthetic so the suite needs no data set on the GPU box; it has the mix of low and high
    frequencies whose fitting order the papers study.
    """
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = ((xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.06).float()
    stripes = 0.5 + 0.5 * torch.sin(40 * (xx + 0.5 * yy)) * (xx > 0.6).float() * (yy > 0.5).float()
    r = 0.3 + 0.4 * xx * (1 - disc) + 0.5 * disc
    g = 0.2 + 0.5 * yy + 0.2 * stripes * (1 - disc)
    b = 0.6 - 0.3 * xx * yy + 0.2 * torch.cos(6 * yy) * (1 - disc)
    return torch.stack([r, g, b]).clamp(0, 1)[None]


def problem(size: int) -> tuple[Operator, torch.Tensor, torch.Tensor]:
    """Denoising at σ = 25 of the test image: (operator, observation, clean)."""
    clean = test_image(size)
    op = build_operator("denoise", (3, size, size), seed=0, sigma=25)
    return op, op.degrade(clean), clean


def net_config(network: str, upsample: str, width: int, sn_method: str) -> NetConfig:
    return NetConfig(name=network, width=width, upsample=upsample, norm="lipschitz", lam=2.0, sn_method=sn_method)


def fit_config(variant: Variant, iterations: int, stride: int | None) -> FitConfig:
    """Every metric and the stop rule at ``stride``, or (None) one row at the start and end only."""
    speed = {"precision": variant.precision, "channels_last": variant.channels_last, "compile": variant.compile}
    if stride is None:
        return FitConfig(iterations=iterations, metric_stride=iterations, auto_stop=False, spectral=False, **speed)
    window = max(stride, iterations // 4 // stride * stride)
    return FitConfig(iterations=iterations, metric_stride=stride, stop_window=window, sync_every=200, **speed)


def network_flops(net_cfg: NetConfig, size: int, variant: Variant, device: torch.device) -> float:
    """FLOPs of one forward + backward of the network and data term (what the tensor cores do)."""
    op, y, clean = problem(size)
    loop = FitLoop(
        net_cfg, op, y, clean, dataclasses.replace(fit_config(variant, 1, None), compile=False), device=device
    )
    with FlopCounterMode(display=False) as counter:
        _, loss = loop.forward()
        loss.backward()
    return float(counter.get_total_flops())


def timed_fit(net_cfg: NetConfig, size: int, cfg: FitConfig, device: torch.device) -> tuple[float, float | None]:
    """(ms per iteration, peak MiB) of a real fit, after a short warm-up fit of the same kind."""
    op, y, clean = problem(size)
    fit(
        net_cfg,
        op,
        y,
        clean,
        dataclasses.replace(cfg, iterations=cfg.metric_stride if cfg.metric_stride < 10 else 10, auto_stop=False),
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = fit(net_cfg, op, y, clean, cfg, device=device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return 1000 * result.seconds / cfg.iterations, peak


def compiled_fit(net_cfg: NetConfig, size: int, cfg: FitConfig, device: torch.device) -> tuple[float, float | None]:
    """(ms per iteration, peak MiB) of a compiled fit without its compile time.

    Every compiled fit compiles anew, so the time of a short fit is taken from a longer one:
    both pay the same compilation, the difference is ``cfg.iterations`` steady iterations.
    """
    op, y, clean = problem(size)
    short = fit(net_cfg, op, y, clean, dataclasses.replace(cfg, iterations=cfg.metric_stride), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    long = fit(
        net_cfg, op, y, clean, dataclasses.replace(cfg, iterations=cfg.metric_stride + cfg.iterations), device=device
    )
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return 1000 * max(long.seconds - short.seconds, 1e-9) / cfg.iterations, peak


# ---------------------------------------------------------------- the naive baseline


def host_metrics(out: np.ndarray, y: np.ndarray, clean: np.ndarray, bands: int = 5) -> dict[str, float]:
    """PSNRs, FBC bands and a gradient sharpness in NumPy, the way the papers' scripts log them."""

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))

    fo, fy = np.fft.fft2(out.mean(0)), np.fft.fft2(y.mean(0))
    h, w = fo.shape
    r = np.hypot(*np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")) / (min(h, w) / 2)
    corr = np.real(fo * np.conj(fy)) / (np.abs(fo) * np.abs(fy) + 1e-12)
    ring = np.minimum((r * bands).astype(int), bands - 1)
    fbc = [float(corr[(ring == k) & (r <= 1)].mean()) for k in range(bands)]
    sharp = float(np.abs(np.diff(out, axis=1)).mean() + np.abs(np.diff(out, axis=2)).mean())
    return {"psnr_clean": psnr(out, clean), "psnr_target": psnr(out, y), "sharp": sharp} | {
        f"fbc_{k + 1}": v for k, v in enumerate(fbc)
    }


def naive_ms(network: str, upsample: str, width: int, size: int, iterations: int, device: torch.device) -> float:
    """ms per iteration of the papers' loop: SVD σ of every conv and host NumPy metrics every step."""
    op, y, clean = problem(size)
    torch.manual_seed(0)
    net = build_network(net_config(network, upsample, width, "svd"), (3, size, size)).to(device)
    z = net.make_input(torch.Generator().manual_seed(0)).to(device)
    op, y_dev = op.to(device), y.to(device)
    y_np, clean_np = y[0].numpy(), clean[0].numpy()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []

    def step() -> None:
        out = net(z)
        loss = data_term(op, out, y_dev)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(host_metrics(out.detach().cpu().numpy()[0], y_np, clean_np) | {"loss": loss.item()})

    for _ in range(2):  # warm-up
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    sync(device)
    return 1000 * (time.perf_counter() - start) / iterations


# ---------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Plan:
    """What one run of the suite measures."""

    networks: tuple[str, ...]
    upsamples: tuple[str, ...]
    sizes: tuple[int, ...]
    width: int
    variants: tuple[Variant, ...]
    iterations: Callable[[int], int]  # timed iterations for a side length
    naive_size: int
    naive_iterations: int
    compile_size: int | None  # run the compiled variant at this size (None: never)


def make_plan(device: torch.device, quick: bool, compile_: bool) -> Plan:
    """The quick CI set, the full GPU set (compiled variant at 512² unless told not to), or a CPU set."""
    if quick:
        return Plan(
            ("decoder", "encoder_decoder"),
            ("bilinear", "gaussian"),
            (64,),
            32,
            (VARIANTS[0], VARIANTS[2]),
            lambda size: 10,
            64,
            5,
            None,
        )
    if device.type == "cuda":
        return Plan(
            ("decoder", "encoder_decoder"),
            ("bilinear", "gaussian"),
            (128, 256, 512),
            128,
            tuple(VARIANTS),
            lambda size: 100 if size <= 256 else 60,
            512,
            20,
            512 if compile_ else None,
        )
    return Plan(
        ("decoder", "encoder_decoder"),
        ("bilinear", "gaussian"),
        (128, 256),
        128,
        (VARIANTS[0], VARIANTS[2]),
        lambda size: 10 if size <= 128 else 4,
        256,
        3,
        None,
    )


def measure(plan: Plan, device: torch.device) -> list[dict]:
    """Every row of the table, printed as it is measured (progress on stderr)."""
    rows: list[dict] = []
    start = time.perf_counter()
    for network in plan.networks:
        for upsample in plan.upsamples:
            for size in plan.sizes:
                variants = list(plan.variants)
                if plan.compile_size == size and network == "decoder" and upsample == "bilinear":
                    log(
                        f"[{time.perf_counter() - start:6.0f} s] compiling: two fits of {network} {size}² "
                        "(skip with --no-compile)"
                    )
                    variants.append(COMPILED)
                for variant in variants:
                    net_cfg = net_config(network, upsample, plan.width, variant.sn_method)
                    flops = network_flops(net_cfg, size, variant, device)
                    peak = peak_tflops(device, variant.precision)
                    times = {}
                    for label, stride in STRIDES.items():
                        cfg = fit_config(variant, plan.iterations(size), stride)
                        if variant.compile and label == "every 10":  # compiling is slow: headline column only
                            times[label] = compiled_fit(net_cfg, size, cfg, device)
                        elif not variant.compile:
                            times[label] = timed_fit(net_cfg, size, cfg, device)
                    base = times["none"][0] if "none" in times else None
                    for label, (ms, mib) in times.items():
                        tflops = flops / (ms / 1000) / 1e12
                        rows.append(
                            {
                                "network": network,
                                "upsample": upsample,
                                "size": size,
                                "width": plan.width,
                                "lam": 2.0,
                                "variant": variant.name,
                                **dataclasses.asdict(variant),
                                "metrics": label,
                                "iterations": plan.iterations(size),
                                "ms_per_it": ms,
                                "it_per_s": 1000 / ms,
                                "peak_mib": mib,
                                "gflop_per_it": flops / 1e9,
                                "tflops": tflops,
                                "peak_fraction": tflops / peak if peak else None,
                                "metrics_cost": ms / base - 1 if base and label != "none" else None,
                            }
                        )
                    log(
                        f"[{time.perf_counter() - start:6.0f} s] {network} {upsample} {size}² {variant.name}: "
                        + ", ".join(f"{k} {v[0]:.2f} ms/it" for k, v in times.items())
                    )
        for upsample in plan.upsamples:
            if network != "decoder":
                continue
            ms = naive_ms(network, upsample, plan.width, plan.naive_size, plan.naive_iterations, device)
            rows.append(
                {
                    "network": network,
                    "upsample": upsample,
                    "size": plan.naive_size,
                    "width": plan.width,
                    "lam": 2.0,
                    "variant": "naive",
                    "name": "naive",
                    "precision": "fp32",
                    "channels_last": False,
                    "sn_method": "svd",
                    "compile": False,
                    "metrics": "host every 1",
                    "iterations": plan.naive_iterations,
                    "ms_per_it": ms,
                    "it_per_s": 1000 / ms,
                    "peak_mib": None,
                    "gflop_per_it": None,
                    "tflops": None,
                    "peak_fraction": None,
                    "metrics_cost": None,
                }
            )
            log(f"[{time.perf_counter() - start:6.0f} s] naive {network} {upsample} {plan.naive_size}²: {ms:.2f} ms/it")
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'network':16s} {'upsample':9s} {'size':>5s} {'variant':13s} {'metrics':12s} {'ms/it':>8s} "
        f"{'it/s':>8s} {'peak MiB':>9s} {'GFLOP/it':>9s} {'TFLOP/s':>8s} {'% peak':>7s} {'metrics cost':>12s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        pct = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
        cost = None if r["metrics_cost"] is None else 100 * r["metrics_cost"]
        print(
            f"{r['network']:16s} {r['upsample']:9s} {r['size']:5d} {r['variant']:13s} {r['metrics']:12s} "
            f"{r['ms_per_it']:8.2f} {r['it_per_s']:8.1f} {fmt(r['peak_mib'], '9.0f'):>9s} "
            f"{fmt(r['gflop_per_it'], '9.1f'):>9s} {fmt(r['tflops'], '8.2f'):>8s} {fmt(pct, '6.1f'):>7s} "
            f"{fmt(cost, '+11.1f') + ('%' if cost is not None else ''):>12s}"
        )


def headline(rows: list[dict]) -> dict:
    """The issue's targets, read off the rows: Decoder at the largest size, metrics every 10."""
    size = max(r["size"] for r in rows)
    decoder = [r for r in rows if r["network"] == "decoder" and r["size"] == size]
    fast = [r for r in decoder if r["metrics"] == "every 10"]
    naive = [r for r in decoder if r["variant"] == "naive"]
    if not fast:
        return {}
    best = max(fast, key=lambda r: r["it_per_s"])
    result = {
        "size": size,
        "best_variant": best["variant"],
        "best_upsample": best["upsample"],
        "best_it_per_s": best["it_per_s"],
        "best_peak_fraction": best["peak_fraction"],
    }
    same = [r for r in naive if r["upsample"] == best["upsample"]]
    if same:
        result["speedup_vs_naive"] = best["it_per_s"] / same[0]["it_per_s"]
    every = [
        r
        for r in decoder
        if r["metrics"] == "every 1" and r["variant"] == best["variant"] and r["upsample"] == best["upsample"]
    ]
    if every:
        result["metrics_cost_every_iteration"] = every[0]["metrics_cost"]
    return result


# ---------------------------------------------------------------- the precision check


def psnr_deviation(curve: np.ndarray, reference: np.ndarray, iterations: np.ndarray) -> dict:
    """How a clean-PSNR curve departs from the reference's (both logged at ``iterations``):
    the largest |Δ| in dB, the iteration where it occurs, and the final Δ (signed, curve − reference)."""
    delta = np.asarray(curve, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    worst = int(np.abs(delta).argmax())
    return {
        "max_abs_dpsnr_db": float(np.abs(delta).max()),
        "at_iteration": int(iterations[worst]),
        "final_dpsnr_db": float(delta[-1]),
    }


def check_precision(device: torch.device, size: int, iterations: int, width: int) -> list[dict]:
    """Clean-PSNR curves of the same 512² denoising fit in fp32 and each reduced precision."""
    op, y, clean = problem(size)
    rows = []
    for upsample in ("bilinear", "gaussian"):
        curves = {}
        for variant in VARIANTS:
            net_cfg = net_config("decoder", upsample, width, "gram")
            cfg = FitConfig(
                iterations=iterations,
                metric_stride=10,
                stop_window=100,
                precision=variant.precision,
                channels_last=variant.channels_last,
            )
            result = fit(net_cfg, op, y, clean, cfg, device=device)
            curves[variant.precision] = result.metrics["psnr_clean"]
            logged = result.metrics["iteration"]
            log(
                f"decoder {upsample} {size}² {variant.precision}: final PSNR {result.final_psnr:.2f} dB, "
                f"{1000 * result.seconds / iterations:.2f} ms/it"
            )
        for precision in ("tf32", "bf16"):
            deviation = psnr_deviation(curves[precision], curves["fp32"], logged)
            rows.append(
                {
                    "upsample": upsample,
                    "size": size,
                    "iterations": iterations,
                    "precision": precision,
                    "max_abs_dpsnr_db": deviation["max_abs_dpsnr_db"],
                    "at_logged_iteration": deviation["at_iteration"],
                    "final_dpsnr_db": deviation["final_dpsnr_db"],
                    "within_0_1_db": bool(deviation["max_abs_dpsnr_db"] <= 0.1),
                }
            )
    return rows


# ---------------------------------------------------------------- packing small fits


def pack_throughput(
    device: torch.device,
    size: int,
    width: int,
    iterations: int,
    variant: Variant,
    counts: tuple[int, ...] = (1, 2, 4, 8),
) -> list[dict]:
    """Fits per hour of N Decoder fits (seeds 0 … N−1) run together by ``fit_many``, each N.

    N = 1 is one fit at a time, the baseline. The time is the whole ``fit_many`` call
    (network set-up included), after a short warm-up pack; metrics every 10 iterations.
    """
    op, y, clean = problem(size)
    net_cfg = net_config("decoder", "bilinear", width, variant.sn_method)
    cfg = fit_config(variant, iterations, 10)
    jobs = [FitJob(net_cfg, op, y, clean, dataclasses.replace(cfg, seed=seed)) for seed in range(max(counts))]
    warm = [
        dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, iterations=2, auto_stop=False)) for job in jobs[:2]
    ]
    fit_many(warm, device)
    rows: list[dict] = []
    for n in counts:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        results = fit_many(jobs[:n], device)
        seconds = time.perf_counter() - start
        failed = [r for r in results if not isinstance(r, FitResult)]
        if failed:
            raise RuntimeError(f"a packed fit failed: {failed[0]!r}")
        fits_per_hour = 3600 * n / seconds
        rows.append(
            {
                "network": "decoder",
                "upsample": "bilinear",
                "size": size,
                "width": width,
                "lam": 2.0,
                "variant": variant.name,
                "iterations": iterations,
                "pack": n,
                "seconds": seconds,
                "fits_per_hour": fits_per_hour,
                "vs_one_at_a_time": fits_per_hour / rows[0]["fits_per_hour"] if rows else 1.0,
                "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            }
        )
        log(f"pack {n}: {seconds:.1f} s, {fits_per_hour:.1f} fits/hour")
    return rows


def print_pack_table(rows: list[dict]) -> None:
    header = f"{'pack':>4s} {'seconds':>9s} {'fits/hour':>10s} {'× one at a time':>16s} {'peak MiB':>9s}"
    print(
        f"Decoder {rows[0]['size']}², width {rows[0]['width']}, λ = 2, {rows[0]['variant']}, "
        f"{rows[0]['iterations']} iterations, metrics every 10"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['pack']:4d} {r['seconds']:9.1f} {r['fits_per_hour']:10.1f} {r['vs_one_at_a_time']:16.2f} "
            f"{fmt(r['peak_mib'], '9.0f'):>9s}"
        )


# ---------------------------------------------------------------- the speed modes of a folder of manifests

# The speed modes compared on a manifest's own fits: precision and memory format only. The
# network (σ method included) and every other fit setting are the manifest's.
MODES = [
    Variant("fp32"),
    Variant("channels-last", channels_last=True),
    Variant("bf16", "bf16"),
    Variant("bf16+channels-last", "bf16", True),
]
MODE_WARMUP = 3  # iterations of an untimed fit of the same kind before each timed one


def manifest_fits(path: str) -> list[tuple[str, FitJob]]:
    """(label, job) of one fit per distinct network and image size of a manifest, in its order.

    The pipeline's own code expands the manifest and prepares each fit (image, crop, operator,
    observation), exactly as a sweep worker would; the pipeline is imported here only, so the
    rest of the suite needs nothing but dipmodel, torch and numpy. Classical methods (no network)
    and upsampling-response specs (nothing is fitted) are skipped.
    """
    from pipeline.sources import expand_specs, read_manifest
    from pipeline.worker import prepare

    manifest = read_manifest(path)
    fits: dict[tuple, tuple[str, FitJob]] = {}
    for spec in expand_specs(manifest):
        if spec.method or spec.task == "upsampling_response":
            continue
        job = prepare(spec, "cpu", manifest.storage_options).job
        if job is None:
            continue
        net = job.net_cfg
        shape = tuple(job.y.shape[1:]) if job.clean is None else tuple(job.clean.shape[1:])
        key = (net.name, net.width, net.depth, net.upsample, net.lam, shape, job.cfg.optimizer)
        if key not in fits:
            lam = "none" if net.lam is None else f"{net.lam:g}"
            size = "x".join(map(str, shape[1:]))
            label = f"{net.name} w{net.width} d{net.depth} {net.upsample} λ={lam} {size} {job.cfg.optimizer}"
            fits[key] = (label, job)
    return list(fits.values())


def mode_config(cfg: FitConfig, mode: Variant, iterations: int) -> FitConfig:
    """The fit's own settings, run for ``iterations`` with metrics every iteration, no automatic
    stop, and the mode's precision and memory format (never compiled)."""
    return dataclasses.replace(
        cfg,
        iterations=iterations,
        metric_stride=1,
        auto_stop=False,
        halt_at_stop=False,
        burn_in=min(cfg.burn_in, iterations - 1),  # sgld: the burn-in must end within the shortened fit
        precision=mode.precision,
        channels_last=mode.channels_last,
        compile=False,
    )


def compare_modes(folder: str, iterations: int, device: torch.device, warmup: int) -> list[dict]:
    """One row per fit × mode: ms/iteration and the clean-PSNR curve against fp32's (same seed)."""
    paths = sorted(str(p) for p in Path(folder).glob("*.yaml"))
    if not paths:
        raise SystemExit(f"no *.yaml manifests in {folder}")
    rows: list[dict] = []
    start = time.perf_counter()
    for path in paths:
        for label, job in manifest_fits(path):
            iters = min(iterations, job.cfg.iterations)
            reference: np.ndarray | None = None
            ref_ms = 0.0
            for mode in MODES:
                cfg = mode_config(job.cfg, mode, iters)
                if warmup:  # a few iterations of the same kind first (allocator, oneDNN kernels)
                    fit(
                        job.net_cfg,
                        job.op,
                        job.y,
                        job.clean,
                        mode_config(job.cfg, mode, warmup),
                        job.extra_metrics,
                        device,
                    )
                result = fit(job.net_cfg, job.op, job.y, job.clean, cfg, job.extra_metrics, device)
                ms = 1000 * result.seconds / iters
                curve = result.metrics["psnr_clean"]
                if reference is None:
                    reference, ref_ms = curve, ms
                deviation = psnr_deviation(curve, reference, result.metrics["iteration"])
                rows.append(
                    {
                        "manifest": Path(path).name,
                        "fit": label,
                        "network": job.net_cfg.name,
                        "width": job.net_cfg.width,
                        "depth": job.net_cfg.depth,
                        "upsample": job.net_cfg.upsample,
                        "lam": job.net_cfg.lam,
                        "sn_method": job.net_cfg.sn_method,
                        "shape": list(job.clean.shape[1:] if job.clean is not None else job.y.shape[1:]),
                        "optimizer": job.cfg.optimizer,
                        "variant": mode.name,
                        "precision": mode.precision,
                        "channels_last": mode.channels_last,
                        "iterations": iters,
                        "warmup_iterations": warmup,
                        "ms_per_it": ms,
                        "speedup": ref_ms / ms,
                        "final_psnr": result.final_psnr,
                        **deviation,
                    }
                )
                log(
                    f"[{time.perf_counter() - start:6.0f} s] {Path(path).name}: {label} {mode.name}: "
                    f"{ms:.1f} ms/it, max |ΔPSNR| {deviation['max_abs_dpsnr_db']:.3f} dB"
                )
    return rows


def mode_summary(rows: list[dict], tolerance: float = 0.1) -> tuple[list[dict], str]:
    """Per mode: mean speed-up over the fits, worst max |ΔPSNR|, within ``tolerance`` dB on every
    fit; and the fastest mode within it on every fit (fp32 if none)."""
    summary = []
    for mode in MODES:
        mine = [r for r in rows if r["variant"] == mode.name]
        worst = max(r["max_abs_dpsnr_db"] for r in mine)
        summary.append(
            {
                "variant": mode.name,
                "fits": len(mine),
                "mean_speedup": float(np.mean([r["speedup"] for r in mine])),
                "worst_max_abs_dpsnr_db": worst,
                "within_tolerance_on_every_fit": bool(worst <= tolerance),
            }
        )
    within = [s for s in summary if s["within_tolerance_on_every_fit"]]
    choice = max(within, key=lambda s: s["mean_speedup"])["variant"] if within else "fp32"
    return summary, choice


def print_mode_table(rows: list[dict], summary: list[dict], choice: str) -> None:
    m = max(len("manifest"), *(len(r["manifest"]) for r in rows))
    f = max(len("fit"), *(len(r["fit"]) for r in rows))
    header = (
        f"{'manifest':{m}s} {'fit':{f}s} {'variant':18s} {'ms/it':>8s} {'speed-up':>8s} "
        f"{'max|ΔPSNR|':>10s} {'at it':>6s} {'final Δ':>8s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['manifest']:{m}s} {r['fit']:{f}s} {r['variant']:18s} {r['ms_per_it']:8.1f} {r['speedup']:8.2f} "
            f"{r['max_abs_dpsnr_db']:10.3f} {r['at_iteration']:6d} {r['final_dpsnr_db']:+8.3f}"
        )
    print()
    for s in summary:
        print(
            f"{s['variant']:18s}: mean speed-up {s['mean_speedup']:.2f}× over {s['fits']} fits, worst max |ΔPSNR| "
            f"{s['worst_max_abs_dpsnr_db']:.3f} dB, {'within' if s['within_tolerance_on_every_fit'] else 'NOT within'} "
            "0.1 dB on every fit"
        )
    print(f"fastest mode within 0.1 dB of fp32 on every fit: {choice}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="CI-sized: width 32, 64², fp32 and bf16")
    parser.add_argument(
        "--check-precision",
        action="store_true",
        help="compare tf32/bf16 clean-PSNR curves with fp32 (512², 1000 iterations)",
    )
    parser.add_argument(
        "--pack", action="store_true", help="fits/hour of 128² Decoder fits packed N = 1, 2, 4, 8 at a time (fit_many)"
    )
    parser.add_argument(
        "--manifests",
        help="folder of manifests: time each distinct fit (*.yaml) in fp32, channels-last, bf16, bf16+channels-last",
    )
    parser.add_argument("--variant", default="fp32", choices=[v.name for v in VARIANTS], help="--pack: variant")
    parser.add_argument("--size", type=int, help="side length (--check-precision: 512, --pack: 128)")
    parser.add_argument(
        "--iters",
        type=int,
        help="iterations (--check-precision: 1000; --pack: 300 on a GPU, 5 on a CPU; "
        "--manifests: 300, capped at each fit's own)",
    )
    parser.add_argument("--json", help="write the rows (and the headline) to this JSON file")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1: on a shared CPU a second thread mostly waits)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    log(f"bench.suite on {info['device']} (torch {info['torch']})")
    if args.manifests:
        rows = compare_modes(args.manifests, args.iters or 300, device, MODE_WARMUP)
        summary, choice = mode_summary(rows)
        print_mode_table(rows, summary, choice)
        output: dict = {"info": info, "modes": rows, "mode_summary": summary, "fastest_within_0_1_db": choice}
    elif args.pack:
        size, iters, width = (64, 5, 32) if args.quick else (128, 300 if device.type == "cuda" else 5, 128)
        variant = next(v for v in VARIANTS if v.name == args.variant)
        rows = pack_throughput(device, args.size or size, width, args.iters or iters, variant)
        print_pack_table(rows)
        output = {"info": info, "pack": rows}
    elif args.check_precision:
        size, iters, width = (64, 100, 32) if args.quick else (args.size or 512, args.iters or 1000, 128)
        rows = check_precision(device, size, iters, width)
        for r in rows:
            print(
                f"decoder {r['upsample']:9s} {r['size']}² {r['precision']}: max |ΔPSNR| {r['max_abs_dpsnr_db']:.3f} dB "
                f"(at iteration {r['at_logged_iteration']}), final Δ {r['final_dpsnr_db']:+.3f} dB, "
                f"{'within' if r['within_0_1_db'] else 'NOT within'} 0.1 dB"
            )
        output = {"info": info, "precision_check": rows}
    else:
        rows = measure(make_plan(device, args.quick, not args.no_compile), device)
        print_table(rows)
        head = headline(rows)
        print(json.dumps(head, indent=1))
        output = {"info": info, "rows": rows, "headline": head}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(output, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
