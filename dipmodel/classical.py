"""Classical reconstructions with no network, as baselines beside the deep image prior.

Each returns a `FitResult` like `dipmodel.fit.fit`, with one metric row (that of its output),
so the pipeline stores, tracks and reports it as any other fit (Shi et al. Tables 1–5 print
CBM3D and bicubic beside the DIP rows):

- ``bm3d``: BM3D (Dabov et al. 2007) for grey images and CBM3D, its colour version in an
  opponent colour space, for RGB, from the maintained ``bm3d`` package (NumPy, CPU). Denoising
  only: it is told the true noise std σ/255, as in Shi Table 1 (from Zhang et al. 2018).
- ``bicubic``: the low-resolution observation upsampled with PIL's bicubic filter (Keys
  a = −0.5, MATLAB's ``imresize`` kernel, from which the papers' bicubic rows come).
  Super-resolution only.
- ``tv``: total-variation-regularised reconstruction for any operator,
  argmin_{x ∈ [0,1]} ½‖A(x) − y‖² + w·TV(x), TV the isotropic colour TV (Bresson & Chan
  2008: per pixel the 2-norm over channels and both forward differences). Solved with
  Condat–Vũ primal-dual iterations (Condat 2013), the Chambolle–Pock scheme with the smooth
  data term taken by its gradient, so A need not have a simple proximal operator (the SR
  downsampler does not); Aᵀ is A's vector-Jacobian product, exact for a linear A.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dipmodel import metrics as M
from dipmodel.fit import DeviceRecord, FitConfig, FitResult, metric_row
from dipmodel.operators import Operator, pil_resize

# method -> the tasks (operator names) it restores
METHOD_TASKS: dict[str, tuple[str, ...]] = {
    "bm3d": ("denoise",),
    "bicubic": ("superres",),
    "tv": ("denoise", "lowfreq_noise", "jpeg", "inpaint", "superres"),
}
METHODS = tuple(METHOD_TASKS)


@dataclass(frozen=True)
class ClassicalConfig:
    """Which classical method, and the settings of the TV solver (unused by the others)."""

    method: str
    tv_weight: float = 0.05  # w: weight of TV against ½‖A(x) − y‖² (a sum over pixels in [0, 1])
    tv_iterations: int = 300

    def __post_init__(self) -> None:
        if self.method not in METHOD_TASKS:
            raise ValueError(f"unknown method {self.method!r}; classical methods: {', '.join(METHODS)}")
        if self.tv_weight <= 0 or self.tv_iterations < 1:
            raise ValueError(
                f"tv_weight must be > 0 and tv_iterations >= 1, got {self.tv_weight}, {self.tv_iterations}"
            )

    def settings(self) -> dict[str, float | int]:
        """The settings that determine this method's output (a fit key's content)."""
        return {"tv_weight": self.tv_weight, "tv_iterations": self.tv_iterations} if self.method == "tv" else {}


def check_task(method: str, task: str) -> None:
    """Raise a ValueError naming both when the method cannot restore this task."""
    if task not in METHOD_TASKS.get(method, ()):
        raise ValueError(f"method {method} restores {', '.join(METHOD_TASKS.get(method, ()))} only, not {task}")


# ---------------------------------------------------------------- the methods


def bm3d_denoise(y: Tensor, sigma: float) -> Tensor:
    """BM3D (1 channel) or CBM3D (3 channels) of a (1, C, H, W) image with noise std ``sigma`` (0–255)."""
    import bm3d  # here: only this method needs it

    image = y[0].detach().double().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    if image.shape[2] == 3:
        out = bm3d.bm3d_rgb(image, sigma / 255)
    else:
        out = bm3d.bm3d(image[:, :, 0], sigma / 255)[:, :, None]
    out = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]
    return out.clamp(0, 1).to(y)


def bicubic_upsample(y: Tensor, factor: int) -> Tensor:
    """The low-resolution image upsampled ×factor with PIL's bicubic filter, clipped to [0, 1]."""
    _, _, h, w = y.shape
    return pil_resize(y, h * factor, w * factor, Image.Resampling.BICUBIC)


def gradient(x: Tensor) -> Tensor:
    """Forward differences (N, C, 2, H, W), zero across the last row/column (Neumann boundary)."""
    dy = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([dy, dx], dim=2)


def gradient_adjoint(p: Tensor) -> Tensor:
    """Dᵀp for the `gradient` D (minus the discrete divergence)."""
    py, px = p[:, :, 0], p[:, :, 1]
    out = torch.zeros_like(py)
    out[..., :-1, :] -= py[..., :-1, :]
    out[..., 1:, :] += py[..., :-1, :]
    out[..., :, :-1] -= px[..., :, :-1]
    out[..., :, 1:] += px[..., :, :-1]
    return out


def operator_norm_squared(op: Operator, shape: tuple[int, ...], device: torch.device, steps: int = 30) -> float:
    """‖A‖², the Lipschitz constant of ∇½‖A(x) − y‖², by power iteration on AᵀA (seeded)."""
    v = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    pullback = torch.func.vjp(op.A, v)[1]
    norm = torch.tensor(1.0)
    for _ in range(steps):
        v = v / v.norm()
        v = pullback(op.A(v))[0]
        norm = v.norm()
    return float(norm)


def tv_reconstruct(op: Operator, y: Tensor, out_shape: tuple[int, ...], weight: float, iterations: int) -> Tensor:
    """argmin over x in [0, 1] of ½‖A(x) − y‖² + weight·TV(x), by Condat–Vũ iterations.

    x ← clip(x − τ(Aᵀ(A(x) − y) + Dᵀp)), p ← project(p + σD(2x_new − x)) onto the ball of
    radius ``weight`` per pixel. Convergence needs 1/τ − σ‖D‖² ≥ ‖A‖²/2 with ‖D‖² ≤ 8; we
    take τ = σ at 0.95 of the largest such value, which is Chambolle–Pock's balanced
    1/√8 when A vanishes and stays balanced when ‖A‖ is small (SR), where τ ≫ σ would
    leave the TV term nearly idle for hundreds of iterations.
    """
    shape = (1, *out_shape)
    x = y.clone() if y.shape == shape else bicubic_upsample(y, out_shape[-1] // y.shape[-1])
    pullback = torch.func.vjp(op.A, torch.zeros(shape, device=y.device))[1]
    half_lipschitz = operator_norm_squared(op, shape, y.device) / 2
    tau = sigma = 0.95 * (math.sqrt(half_lipschitz**2 + 32) - half_lipschitz) / 16  # root of 8τ² + Lτ/2 = 1
    p = torch.zeros_like(gradient(x))
    for _ in range(iterations):
        grad = pullback(op.A(x) - y)[0]
        x_new = (x - tau * (grad + gradient_adjoint(p))).clamp(0, 1)
        p = p + sigma * gradient(2 * x_new - x)
        magnitude = p.square().sum(dim=(1, 2), keepdim=True).sqrt()  # per pixel, over channels and directions
        p = p / (magnitude / weight).clamp_min(1)
        x = x_new
    return x


# ---------------------------------------------------------------- as a fit


def restore(
    cfg: ClassicalConfig, op: Operator, y: Tensor, clean: Tensor | None = None, device: str | torch.device = "cpu"
) -> FitResult:
    """Run a classical method on the observation ``y`` (batch 1) and report it like a fit.

    ``clean`` is only used for evaluation. The result has one metric row, at the method's
    iteration count (the TV iterations; 0 for bm3d and bicubic); its final, best and
    only output are the same image.
    """
    check_task(cfg.method, op.name)
    device = torch.device(device)
    y, op = y.to(device), op.to(device)
    clean = clean.to(device) if clean is not None else None
    out_shape = tuple(clean.shape[1:]) if clean is not None else tuple(op.image_shape)
    start = time.perf_counter()
    with torch.no_grad():
        if cfg.method == "bm3d":
            out, iterations = bm3d_denoise(y, op.params["sigma"]), 0
        elif cfg.method == "bicubic":
            out, iterations = bicubic_upsample(y, op.params["factor"]), 0
        else:
            out = tv_reconstruct(op, y, out_shape, cfg.tv_weight, cfg.tv_iterations)
            iterations = cfg.tv_iterations
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        row = metric_row(out, y, op, clean, spectral=True, extra={})
        row["loss"] = (op.A(out) - y).square().mean()
    record = DeviceRecord(FitConfig(iterations=max(iterations, 1), auto_stop=False), device)
    record.add(iterations, out, row)
    image = out[0].float().cpu().numpy()
    psnr = float(M.psnr(out, clean)[0]) if clean is not None else None
    return FitResult(
        metrics=record.table(),
        loss=np.asarray([float(row["loss"])]),
        final=image,
        final_iteration=iterations,
        snapshots=None,
        snapshot_iterations=np.zeros(0, dtype=np.int64),
        best_output=image if clean is not None else None,
        best_iteration=iterations if clean is not None else None,
        best_psnr=psnr,
        final_psnr=psnr,
        seconds=seconds,
        config=asdict(cfg),
    )
