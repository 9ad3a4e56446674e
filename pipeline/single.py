"""One fit from an image on disk to a folder of results: what `dip fit` does.

``prepare_problem`` is the shared first half (image → crop → operator → observation), used
by the command line and by the sweep workers alike, so both degrade an image the same way.
"""

from __future__ import annotations

import csv
import math
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dipmodel.fit import FitConfig, FitResult, fit
from dipmodel.networks import NetConfig, build_network, side_multiple
from dipmodel.operators import Operator, build_operator
from pipeline import plots
from pipeline.images import ImageError, center_crop, encode_png


@dataclass
class Problem:
    """A clean image, its degradation operator and the observation the fit sees."""

    clean: torch.Tensor  # (1, C, H, W)
    op: Operator
    y: torch.Tensor


def prepare_problem(
    image: torch.Tensor, task: str, task_params: dict, net_cfg: NetConfig, seed: int, crop: int | None, label: str
) -> Problem:
    """Crop to the network's multiple and degrade reproducibly from ``seed``."""
    multiple = side_multiple(net_cfg)
    if task == "superres":  # the low-resolution observation must have whole pixels too
        multiple = math.lcm(multiple, int(task_params.get("factor", 4)))
    clean = center_crop(image, multiple, crop, label)[None]
    try:  # a 1-wide copy of the network checks the cropped size against every constraint
        build_network(NetConfig(**(asdict(net_cfg) | {"width": 1, "lam": None})), tuple(clean.shape[1:]))
    except ValueError as err:
        raise ImageError(f"{label}: too small for the network after cropping to "
                         f"{clean.shape[-1]}x{clean.shape[-2]} ({err})") from None
    op = build_operator(task, tuple(clean.shape[1:]), seed=seed, **task_params)
    return Problem(clean=clean, op=op, y=op.degrade(clean))


def result_images(problem: Problem, result: FitResult) -> dict[str, bytes]:
    """PNG bytes of the images worth looking at: truth, observation, and the three outputs."""
    images = {"clean": problem.clean[0].numpy(), "final": result.final, "best": result.best_output,
              "autostop": result.stop_output}
    if problem.y.shape == problem.clean.shape:
        images["degraded"] = problem.y[0].numpy()
    return {name: encode_png(img) for name, img in images.items() if img is not None}


def write_metrics_csv(result: FitResult, path: Path) -> None:
    columns = list(result.metrics)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for i in range(len(result.metrics["iteration"])):
            writer.writerow([result.metrics[c][i].item() for c in columns])


def fit_to_folder(
    problem: Problem, net_cfg: NetConfig, fit_cfg: FitConfig, out_dir: Path, title: str, device: str = "cpu"
) -> FitResult:
    """Run the fit and write images, metrics (CSV), a summary (JSON) and the curves figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = fit(net_cfg, problem.op, problem.y, problem.clean, fit_cfg, device=device)
    for name, png in result_images(problem, result).items():
        (out_dir / f"{name}.png").write_bytes(png)
    write_metrics_csv(result, out_dir / "metrics.csv")
    summary = result.summary() | {"title": title, "network": asdict(net_cfg), "fit": result.config,
                                  "operator": {"task": problem.op.name, **problem.op.params}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plots.fit_curves(result.metrics, out_dir / "curves.png", title, result.best_iteration, result.stop_iteration)
    return result
