"""One fit's problem and its friendly results: what the sweep workers and `dip fit` share.

``prepare_problem`` is the shared first half (image → crop → operator → observation);
`write_fit_folder` is how `dip fit` shows a stored fit (images, metrics.csv, curves).
The preprocessing that defines an input (``downsample``, 1-D ``sine_signal``), the 1-D
amplitude metrics of C&M §3.1 and the numbers of a fit's curves that a worker stores in its
summary row (``convergence_iterations``, ``curve_outcome``) live here for the same reason.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dipmodel import metrics as M
from dipmodel.fit import ExtraMetric, FitResult
from dipmodel.networks import NetConfig
from dipmodel.operators import Operator, build_operator
from pipeline import plots
from pipeline.images import ImageError, center_crop, encode_png
from pipeline.record import FBC_CONVERGED_PREFIX, FBC_FINAL_PREFIX
from pipeline.storage import Store

SE_CONVERGED = 0.01  # C&M's delta: frequency k has converged once SE(k) <= delta
FBC_LEVEL = 0.9  # a band has "converged" once it reaches this fraction of its own maximum
PLATEAU_DB = 0.5  # a fit is on its plateau from the first iteration within this of its own peak PSNR


@dataclass
class Problem:
    """A clean input, its degradation operator and the observation the fit sees."""

    clean: torch.Tensor  # (1, C, H, W), or (1, C, L) for a 1-D signal
    op: Operator
    y: torch.Tensor


def downsample(image: torch.Tensor, factor: int, label: str) -> torch.Tensor:
    """Shrink (C, H, W) by ``factor`` (sides floored) with PIL's Lanczos filter, per channel in float.

    C&M Tables 1–2 fit the standard images downsampled ×4. Their make_dataset.py used OpenCV's
    default (bilinear, not antialiased) resize, which aliases at ×4; Lanczos, as in Ulyanov et
    al.'s code and our super-resolution operator, keeps that spurious high-frequency content out
    of a study of spectral bias. Float ('F') images avoid 8-bit rounding; the filter's overshoot
    is clipped to [0, 1].
    """
    _, h, w = image.shape
    size = (w // factor, h // factor)
    if min(size) < 1:
        raise ImageError(f"{label}: {w}x{h} is too small to downsample by {factor}")
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(c.numpy())).resize(size, Image.Resampling.LANCZOS))
        for c in image
    ]
    return torch.from_numpy(np.stack(channels)).clamp_(0.0, 1.0)


def sine_signal(length: int, freqs: Sequence[int], amplitudes: Sequence[float]) -> torch.Tensor:
    """C&M §3.1's 1-D input, (1, length): x0(t) = Σ a_i sin(2π k_i t) at t = i / length."""
    t = torch.arange(length, dtype=torch.float64) / length
    x = sum(a * torch.sin(2 * torch.pi * k * t) for k, a in zip(freqs, amplitudes, strict=False))
    return torch.as_tensor(x, dtype=torch.float32)[None]


def amplitude_metrics(clean: torch.Tensor, freqs: Sequence[int], device: str | torch.device) -> dict[str, ExtraMetric]:
    """SE(k) = (Ã_k(output) − A_k(x0))² at each k, on the device: metric columns se_1 … se_K."""
    target = clean[0, 0].to(device)
    return {"se": lambda out: M.amplitude_error(out[0, 0], target, freqs)}


def convergence_iterations(metrics: Mapping[str, np.ndarray], count: int) -> dict[str, int]:
    """converged_k1 … converged_kK: the first logged iteration with SE(k_i) ≤ δ, −1 if never."""
    se = torch.from_numpy(np.stack([metrics[f"se_{i + 1}"] for i in range(count)], axis=1))
    rows = M.first_convergence(se, delta=SE_CONVERGED).tolist()  # rows of the table, not iterations
    return {f"converged_k{i + 1}": int(metrics["iteration"][r]) if r >= 0 else -1 for i, r in enumerate(rows)}


def _fbc_columns(metrics: Mapping[str, Any]) -> list[str]:
    """The FBC band columns of a fit's metrics (arrays or a DataFrame), fbc_1 … fbc_K by band."""
    return sorted((c for c in metrics if re.fullmatch(r"fbc_\d+", c)), key=lambda c: int(c[4:]))


def _first(metrics: Mapping[str, Any], reached: np.ndarray) -> int:
    """The first logged iteration at which `reached` holds (the first one if it never does)."""
    return int(np.asarray(metrics["iteration"])[np.argmax(reached)])


def _peak(values: Any) -> float:
    """A curve's maximum, NaN rows (a diverged step) left out as pandas' max leaves them out."""
    return float(np.nanmax(np.asarray(values, dtype=np.float64), initial=-np.inf))


def band_convergence(metrics: Mapping[str, Any]) -> list[int]:
    """Per FBC band, the first logged iteration at which it reaches FBC_LEVEL × its maximum over
    the fit (Shi et al. 2022, Fig. 3).

    Relative to each band's own maximum, so bands that never match fully (noise in the high
    bands of a denoising target) are compared by how fast they get where they get.
    """
    return [_first(metrics, np.asarray(metrics[b]) >= FBC_LEVEL * _peak(metrics[b])) for b in _fbc_columns(metrics)]


def plateau_iteration(metrics: Mapping[str, Any]) -> int:
    """The first logged iteration whose PSNR against the clean image is within PLATEAU_DB of the
    fit's own peak: how long the fit took to get where it got (Shi et al. 2022, Fig. 9)."""
    return _first(metrics, np.asarray(metrics["psnr_clean"]) >= _peak(metrics["psnr_clean"]) - PLATEAU_DB)


def curve_outcome(metrics: Mapping[str, np.ndarray]) -> dict[str, int | float]:
    """The numbers the report's tables and the claims take from a fit's curves, one each, for
    its summary row, so that they need not read every fit's metrics: per FBC band b when it
    converged and where it ended (fbc_converged_b, fbc_final_b), and the plateau iteration."""
    columns = _fbc_columns(metrics)  # fbc_<b>
    outcome: dict[str, int | float] = {
        f"{FBC_CONVERGED_PREFIX}{c[4:]}": it for c, it in zip(columns, band_convergence(metrics), strict=True)
    }
    outcome |= {f"{FBC_FINAL_PREFIX}{c[4:]}": float(metrics[c][-1]) for c in columns}
    if "psnr_clean" in metrics:
        outcome["plateau_iteration"] = plateau_iteration(metrics)
    return outcome


def prepare_problem(
    image: torch.Tensor,
    task: str,
    task_params: dict[str, Any],
    net_cfg: NetConfig | None,
    seed: int,
    crop: int | None,
    label: str,
    multiple: int = 1,
) -> Problem:
    """Crop an image to the network's multiple (a (C, L) signal is used whole) and degrade it
    reproducibly from ``seed``. With no network (a classical method) sides are cropped to
    ``multiple``."""
    one_d = image.dim() == 2
    if one_d:
        if task != "clean":
            raise ValueError(f"{label}: a 1-D signal takes task clean only, not {task}")
        clean = image[None]
    else:
        multiple = net_cfg.side_multiple() if net_cfg is not None else multiple
        if task == "superres":  # the low-resolution observation must have whole pixels too
            multiple = math.lcm(multiple, int(task_params.get("factor", 4)))
        clean = center_crop(image, multiple, crop, label)[None]
    try:
        if net_cfg is not None:
            net_cfg.check_out_shape(tuple(clean.shape[1:]))
    except ValueError as err:
        raise ImageError(
            f"{label}: too small for the network at size {'x'.join(map(str, clean.shape[:1:-1]))} ({err})"
        ) from None
    if one_d:  # the operators take images: a (C, L) signal is a (C, 1, L) one
        op = build_operator(task, (clean.shape[1], 1, clean.shape[2]), seed=seed, **task_params)
        return Problem(clean=clean, op=op, y=op.degrade(clean[:, :, None])[:, :, 0])
    c, h, w = clean.shape[1:]
    op = build_operator(task, (c, h, w), seed=seed, **task_params)
    return Problem(clean=clean, op=op, y=op.degrade(clean))


def result_images(problem: Problem, result: FitResult) -> dict[str, bytes]:
    """PNG bytes of the images worth looking at: truth, observation, and the three outputs.

    Nothing for a 1-D signal: its outputs are in the trajectory snapshots, its fit in SE(k)."""
    if problem.clean.dim() != 4:
        return {}
    images = {
        "clean": problem.clean[0].numpy(),
        "final": result.final,
        "best": result.best_output,
        "autostop": result.stop_output,
        "posterior": result.posterior_mean,
    }
    if problem.y.shape == problem.clean.shape:
        images["degraded"] = problem.y[0].numpy()
    return {name: encode_png(img) for name, img in images.items() if img is not None}


def write_fit_folder(store: Store, key: str, out_dir: Path, title: str) -> dict[str, Any]:
    """The friendly view of one stored fit: its images, metrics.csv, summary.json and the curves
    figure in `out_dir`, read back from the store (`dip fit` runs the sweep's worker into it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("clean", "degraded", "final", "best", "autostop", "posterior"):
        if store.has_image(key, name):
            (out_dir / f"{name}.png").write_bytes(store.read_image(key, name))
    table = store.read_metrics(key)
    metrics = {name: column.to_numpy() for name, column in zip(table.column_names, table.columns, strict=True)}
    with (out_dir / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(metrics)
        writer.writerows(zip(*(column.tolist() for column in metrics.values()), strict=True))
    spec = store.read_spec(key)
    summary = store.summary(key) | {
        "title": title,
        "key": key,
        "network": spec["network"],
        "fit": spec["fit"],
        "operator": {"task": spec["task"], **spec["task_params"]},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plots.fit_curves(metrics, out_dir / "curves.png", title, summary["best_iteration"], summary["stop_iteration"])
    return summary
