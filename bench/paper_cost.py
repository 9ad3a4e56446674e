"""What each of the papers' tables costs at paper scale: fits, iterations, FLOPs, GPU-hours.

    python -m bench.paper_cost --json paper-cost.json

For each paper table's manifest the pipeline's own code expands the fits; each distinct network
and image size is built once on PyTorch's ``meta`` device (shapes only, no arithmetic) and the
FLOPs of one training iteration (forward and backward of the network and the data term, counted
by ``torch.utils.flop_counter``) are summed over its fits and iterations. Per-iteration metrics
(FFTs) are not counted. GPU-hours are those FLOPs at an *assumed* achieved rate, not a
measurement: ACHIEVED_FRACTION of an H100 SXM's dense peak, in fp32 and, as a lower bound, in
bf16. Classical references (BM3D, TV, bicubic) are counted as fits and cost no GPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dipmodel.fit import FitJob, FitLoop

# Which manifest stands for which published table (manifests/README.md). Tables 4 and 5 of Shi
# et al. (Set14, Set5) share their two manifests, one per factor.
TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Shi et al. 2022, Table 1 (denoising)", ("S6-denoise.yaml",)),
    ("Shi et al. 2022, Table 2 (JPEG)", ("S7-jpeg.yaml",)),
    ("Shi et al. 2022, Table 3 (region inpainting)", ("S8-inpaint-center.yaml",)),
    ("Shi et al. 2022, Tables 4–5 (super-resolution)", ("S9-superres-x4.yaml", "S9-superres-x8.yaml")),
    ("Chakrabarty & Maji 2019, Tables 1–2 (architectures)", ("C6-denoise-architectures.yaml",)),
)
PEAK_TFLOPS = {"fp32": 67.0, "bf16": 989.0}  # H100 SXM, dense (NVIDIA's data sheet)
ACHIEVED_FRACTION = 0.4  # the project's GPU target: 40 % of peak


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def iteration_flops(job: FitJob) -> float:
    """FLOPs of one training iteration of a fit (forward + backward of network and data term),
    counted on the meta device so that a 512² network costs no arithmetic here."""
    loop = FitLoop(job.net_cfg, job.op, job.y, job.clean, job.cfg, job.extra_metrics, device="meta")
    with FlopCounterMode(display=False) as counter:
        _, loss = loop.forward()
        loss.backward()
    return float(counter.get_total_flops())


@dataclass
class Cost:
    """One manifest at paper scale."""

    manifest: str
    network_fits: int = 0
    classical_fits: int = 0
    iterations: int = 0
    flops: float = 0.0
    gflop_per_it: tuple[float, float] = (float("inf"), 0.0)  # (smallest, largest) over its networks

    def gpu_hours(self, precision: str) -> float:
        return self.flops / (ACHIEVED_FRACTION * PEAK_TFLOPS[precision] * 1e12) / 3600


def manifest_cost(path: Path) -> Cost:
    """Fits, iterations and training FLOPs of a manifest's sweep."""
    from pipeline.sources import expand_specs, read_manifest
    from pipeline.worker import prepare

    manifest = read_manifest(str(path))
    cost = Cost(path.name)
    counted: dict[tuple, float] = {}
    for spec in expand_specs(manifest):
        if spec.method:
            cost.classical_fits += 1
            continue
        job = prepare(spec, "cpu", manifest.storage_options).job
        if job is None:
            continue
        shape = tuple(job.y.shape) + tuple(job.clean.shape if job.clean is not None else ())
        key = (repr(job.net_cfg), shape, spec.task)
        if key not in counted:
            counted[key] = iteration_flops(job)
        per_it = counted[key]
        cost.network_fits += 1
        cost.iterations += job.cfg.iterations
        cost.flops += per_it * job.cfg.iterations
        low, high = cost.gflop_per_it
        cost.gflop_per_it = (min(low, per_it / 1e9), max(high, per_it / 1e9))
    log(f"{path.name}: {cost.network_fits} network fits, {len(counted)} distinct networks × sizes")
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", default="manifests/paper", help="folder of the paper-scale manifests")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for table, names in TABLES:
        for name in names:
            cost = manifest_cost(Path(args.manifests) / name)
            rows.append(
                {
                    "table": table,
                    "manifest": name,
                    "command": f"dip sweep run {args.manifests}/{name}",
                    "network_fits": cost.network_fits,
                    "classical_fits": cost.classical_fits,
                    "iterations": cost.iterations,
                    "gflop_per_it": list(cost.gflop_per_it),
                    "pflop": cost.flops / 1e15,
                    "gpu_hours_fp32": cost.gpu_hours("fp32"),
                    "gpu_hours_bf16": cost.gpu_hours("bf16"),
                }
            )
    print(
        f"GPU-hours at an assumed {ACHIEVED_FRACTION:.0%} of an H100 SXM's dense peak "
        f"(fp32 {PEAK_TFLOPS['fp32']:g}, bf16 {PEAK_TFLOPS['bf16']:g} TFLOP/s); counted, not measured"
    )
    print("| table | command | fits (network + classical) | iterations | GFLOP/it | PFLOP | GPU-h fp32 | GPU-h bf16 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        low, high = r["gflop_per_it"]
        print(
            f"| {r['table']} | `{r['command']}` | {r['network_fits']} + {r['classical_fits']} | "
            f"{r['iterations']:,} | {low:.3g}–{high:.3g} | {r['pflop']:.0f} | {r['gpu_hours_fp32']:.1f} | "
            f"{r['gpu_hours_bf16']:.2f} |"
        )
    log(f"counted in {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
