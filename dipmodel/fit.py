"""The single-image deep-image-prior fit: one seeded loop, top to bottom.

A fit optimises a freshly initialised network so that ``A(f(z))`` matches the degraded
observation ``y``. Every ``metric_stride`` iterations it records the spectral metrics of the
output; they are computed on the device and written into a device buffer, and the host only
looks at them every ``sync_every`` iterations. So the GPU is never stalled by a per-iteration
``.item()``: the oracle-best output and Shi et al.'s automatic stop (Eq. 8) are tracked with
``torch.where`` on the device as well.

Iteration ``t`` names the output after ``t`` optimiser steps, so a budget of T iterations
records t = 0 … T and the last row is the fixed-budget result.

Bayesian DIP (Cheng et al. 2019) is the same loop with ``optimizer="sgld"``: stochastic
gradient Langevin dynamics (Welling & Teh 2011), θ ← θ − η∇L + 𝒩(0, 2η·T), i.e. after every
Adam step each weight gets Gaussian noise whose variance is twice the step size η (``lr``)
times a temperature T (``sgld_temperature``), so the sampled distribution does not depend on
the step size. T = 1 would sample exp(−L) for the mean-squared loss L, far too flat for a
network (it destroys the fit); the default T = 0.002 gives, at Shi's lr = 0.001, noise of std
2·lr, the ``param_noise_sigma · lr`` of Cheng et al.'s released code. Like that code, the
noise goes to the weights of convolutions and linear layers (tensors of 2 or more dims), not
to biases and normalisation parameters. After ``burn_in`` iterations every output is a
posterior sample; their running mean is the Bayesian estimate (``posterior_mean``), the last
sample is ``final``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from dipmodel import metrics as M
from dipmodel.networks import NetConfig, build_network
from dipmodel.operators import Operator, data_term

ExtraMetric = Callable[[Tensor], Tensor]
OPTIMIZERS = ("adam", "sgld")


class FitDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


@dataclass(frozen=True)
class FitConfig:
    """Everything about the optimisation that is not the network or the degradation."""

    iterations: int = 3000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    metric_stride: int = 1
    snapshot_stride: int = 0  # 0 keeps no trajectory, only the final/best/stop outputs
    snapshot_dtype: str = "float16"
    auto_stop: bool = True  # evaluate Shi's rule (Eq. 8) along the way
    halt_at_stop: bool = False  # end the fit when the rule fires (else just record it)
    stop_window: int = 100  # n in Eq. 8, in iterations
    stop_eps: float = 0.01  # ε in Eq. 8
    sync_every: int = 200  # iterations between host syncs (NaN check, halting)
    spectral: bool = True  # FBC and blur/sharpness; off for 1-D signals
    optimizer: str = "adam"  # "sgld": Adam plus Langevin noise (Bayesian DIP, module docstring)
    sgld_temperature: float = 0.002  # T: the noise variance is 2·lr·T per step
    burn_in: int = 0  # sgld: iterations before outputs are averaged into the posterior mean

    def __post_init__(self) -> None:
        for name in ("iterations", "metric_stride", "stop_window", "sync_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.snapshot_stride < 0:
            raise ValueError(f"FitConfig.snapshot_stride must be >= 0, got {self.snapshot_stride}")
        if self.auto_stop and self.stop_window % self.metric_stride:
            raise ValueError(
                f"FitConfig.stop_window ({self.stop_window}) must be a multiple of "
                f"metric_stride ({self.metric_stride}) for the automatic stop"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"FitConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.sgld_temperature < 0 or self.burn_in < 0:
            raise ValueError("FitConfig.sgld_temperature and FitConfig.burn_in must be >= 0")
        if self.optimizer == "sgld" and self.burn_in >= self.iterations:
            raise ValueError(f"FitConfig.burn_in ({self.burn_in}) must be below iterations ({self.iterations})")
        if self.snapshot_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"FitConfig.snapshot_dtype must be float16, bfloat16 or float32, got {self.snapshot_dtype}")


@dataclass
class FitResult:
    """What one fit produced. Arrays are NumPy on the host; images are (C, H, W) or (C, L)."""

    metrics: dict[str, np.ndarray]  # column -> value per logged iteration; includes "iteration"
    loss: np.ndarray  # the data term at every iteration that ran
    final: np.ndarray
    final_iteration: int
    snapshots: np.ndarray | None  # (T, C, H, W) at snapshot_stride, in snapshot_dtype
    snapshot_iterations: np.ndarray
    best_output: np.ndarray | None = None  # oracle: highest PSNR against the clean image
    best_iteration: int | None = None
    best_psnr: float | None = None
    stop_output: np.ndarray | None = None  # where Shi's automatic stop fired
    stop_iteration: int | None = None
    stop_psnr: float | None = None
    final_psnr: float | None = None
    posterior_mean: np.ndarray | None = None  # sgld: mean of the samples after burn-in
    posterior_samples: int = 0
    posterior_psnr: float | None = None
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def summary(self) -> dict[str, float | int | None]:
        """The scalar outcome of the fit, one row of a results table."""
        return {
            "iterations_run": self.final_iteration,
            "final_psnr": self.final_psnr,
            "best_psnr": self.best_psnr,
            "best_iteration": self.best_iteration,
            "stop_psnr": self.stop_psnr,
            "stop_iteration": self.stop_iteration,
            "posterior_psnr": self.posterior_psnr,
            "posterior_samples": self.posterior_samples,
            "seconds": self.seconds,
            "ms_per_iteration": 1000.0 * self.seconds / max(self.final_iteration, 1),
        }


def metric_row(
    out: Tensor, y: Tensor, op: Operator, clean: Tensor | None, spectral: bool, extra: Mapping[str, ExtraMetric]
) -> dict[str, Tensor]:
    """The per-iteration metrics of one output, as 0-d or 1-d device tensors (no host sync)."""
    # Compare in the observation's space: the output itself when shapes agree (denoising,
    # JPEG, inpainting against the masked image, as the authors do), else A(output) (SR).
    seen = out if out.shape == y.shape else op.A(out)
    row = {"psnr_target": M.psnr(seen, y)[0]}
    if clean is not None:
        row["psnr_clean"] = M.psnr(out, clean)[0]
    if spectral:
        row["fbc"] = M.fbc(seen, y)[0]
        blur, sharp = M.blurriness(out)[0], M.sharpness(out)[0]
        row |= {"blur": blur, "sharp": sharp, "ratio": blur / sharp}
    for name, fn in extra.items():
        row[name] = fn(out)
    return row


def column_names(row: Mapping[str, Tensor]) -> list[str]:
    """Flat column names: a vector metric ``fbc`` of 5 values becomes fbc_1 … fbc_5."""
    names = []
    for key, value in row.items():
        if value.dim() == 0:
            names.append(key)
        else:
            names += [f"{key}_{i + 1}" for i in range(value.numel())]
    return names


class DeviceRecord:
    """What the fit remembers along the way, all on the device: no host sync per iteration.

    Metric rows go into a preallocated (rows, columns) buffer; the oracle-best output and
    Shi et al.'s automatic stop (Eq. 8, over the blur/sharpness ratio column) are tracked
    with ``torch.where``.
    """

    def __init__(self, cfg: FitConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.n_rows = cfg.iterations // cfg.metric_stride + 2
        self.window = cfg.stop_window // cfg.metric_stride  # n of Eq. 8, in logged rows
        self.rows: Tensor | None = None  # allocated at the first row, when the columns are known
        self.names: list[str] = []
        self.iterations: list[int] = []
        self.best_psnr = torch.tensor(-float("inf"), device=device)
        self.best_iter = torch.tensor(-1, device=device)
        self.best_out: Tensor | None = None
        self.stopped = torch.tensor(False, device=device)
        self.stop_iter = torch.tensor(-1, device=device)
        self.stop_out: Tensor | None = None

    def add(self, t: int, out: Tensor, row: dict[str, Tensor]) -> None:
        flat = torch.cat([v.reshape(-1).float() for v in row.values()])
        if self.rows is None:
            self.names = column_names(row)
            self.rows = torch.empty(self.n_rows, len(self.names), device=self.device)
            self.best_out, self.stop_out = out.clone(), out.clone()
        j = len(self.iterations)
        self.rows[j] = flat
        self.iterations.append(t)
        if "psnr_clean" in row:
            better = row["psnr_clean"] > self.best_psnr
            self.best_psnr = torch.where(better, row["psnr_clean"], self.best_psnr)
            self.best_iter = torch.where(better, t, self.best_iter)
            self.best_out = torch.where(better, out, self.best_out)
        if self.cfg.auto_stop and "ratio" in self.names and j >= 2 * self.window:
            r = self.rows[j - 2 * self.window : j, self.names.index("ratio")]
            delta = (r[self.window :].mean() - r[: self.window].mean()).abs()
            fire = (delta < self.cfg.stop_eps) & ~self.stopped
            self.stop_iter = torch.where(fire, t, self.stop_iter)
            self.stop_out = torch.where(fire, out, self.stop_out)
            self.stopped = self.stopped | fire

    def table(self) -> dict[str, np.ndarray]:
        """The logged rows on the host: column -> values, with "iteration" first."""
        assert self.rows is not None
        values = self.rows[: len(self.iterations)].cpu().numpy()
        return {"iteration": np.asarray(self.iterations)} | {n: values[:, i] for i, n in enumerate(self.names)}


def langevin_noise(params: list[Tensor], std: float, generator: torch.Generator) -> None:
    """Add 𝒩(0, std²) to every weight in place: the Langevin half of an SGLD step."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=std)


def fit(
    net_cfg: NetConfig,
    op: Operator,
    y: Tensor,
    clean: Tensor | None = None,
    cfg: FitConfig = FitConfig(),
    extra_metrics: Mapping[str, ExtraMetric] | None = None,
    device: str | torch.device = "cpu",
) -> FitResult:
    """Fit a freshly initialised network to the observation ``y`` (batch 1).

    ``clean`` is only used for evaluation (PSNR against the truth, the oracle-best output);
    the optimisation never sees it. ``extra_metrics`` maps a column name to a function of
    the output, evaluated at the metric stride on the device (e.g. the 1-D amplitude error).
    """
    extra = dict(extra_metrics or {})
    device = torch.device(device)
    y = y.to(device)
    clean = clean.to(device) if clean is not None else None
    op = op.to(device)
    out_shape = tuple(clean.shape[1:]) if clean is not None else tuple(y.shape[1:])
    if out_shape != tuple(y.shape[1:]) and op.A(torch.zeros(1, *out_shape, device=device)).shape != y.shape:
        raise ValueError(f"observation shape {tuple(y.shape)} does not match A(output) for output {out_shape}")

    # --- network and fixed input, both from the fit's seed --------------------------------
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_network(net_cfg, out_shape).to(device)
    z = net.make_input(torch.Generator().manual_seed(cfg.seed)).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)
    sgld = cfg.optimizer == "sgld"
    weights = [p for p in net.parameters() if p.dim() >= 2]
    noise_std = math.sqrt(2 * cfg.lr * cfg.sgld_temperature)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1) if sgld else None

    # --- device-side state ----------------------------------------------------------------
    T = cfg.iterations
    loss_hist = torch.full((T + 1,), float("nan"), device=device)
    record = DeviceRecord(cfg, device)
    snap_dtype = getattr(torch, cfg.snapshot_dtype)
    snapshots: list[Tensor] = []
    snapshot_iters: list[int] = []
    posterior: Tensor | None = None  # running mean of the samples after burn-in (sgld)
    n_samples = 0

    def check_chunk(upto: int, lo: int | None = None) -> bool:
        """Host sync point: raise on a non-finite loss; say whether to halt at the stop."""
        lo = max(0, upto - cfg.sync_every) if lo is None else lo
        chunk = loss_hist[lo:upto].cpu()
        bad = (~torch.isfinite(chunk)).nonzero()
        if len(bad):
            t_bad = lo + int(bad[0])
            raise FitDivergedError(f"loss became {float(chunk[bad[0]])} at iteration {t_bad}")
        return cfg.halt_at_stop and bool(record.stopped)

    start = time.perf_counter()
    net.train()
    t = 0
    try:
        for t in range(T + 1):
            out = net(z)
            loss = data_term(op, out, y)
            loss_hist[t] = loss.detach()
            if sgld and t > cfg.burn_in:  # a sample: fold it into the running mean
                n_samples += 1
                sample = out.detach()
                posterior = sample.clone() if posterior is None else posterior.add_(sample - posterior, alpha=1 / n_samples)

            # --- metrics on the device, at the stride and always at the last iteration ----------
            if t % cfg.metric_stride == 0 or t == T:
                with torch.no_grad():
                    row = metric_row(out.detach(), y, op, clean, cfg.spectral, extra)
                    record.add(t, out.detach(), row | {"loss": loss.detach()})
            if cfg.snapshot_stride and (t % cfg.snapshot_stride == 0 or t == T):
                snapshots.append(out.detach()[0].to(snap_dtype))
                snapshot_iters.append(t)

            if (t + 1) % cfg.sync_every == 0 and check_chunk(t + 1):
                break
            if t == T:
                break
            # --- the optimisation step ---------------------------------------------------------
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if noise_gen is not None:
                langevin_noise(weights, noise_std, noise_gen)
    except torch.linalg.LinAlgError:  # NaN weights break the exact σ before a sync sees the loss
        check_chunk(t + 1, lo=0)
        raise
    check_chunk(t + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    # --- back to the host, once ---------------------------------------------------------------
    metrics = record.table()
    final = out.detach()[0].float().cpu().numpy()
    result = FitResult(
        metrics=metrics,
        loss=loss_hist[: t + 1].cpu().numpy(),
        final=final,
        final_iteration=t,
        snapshots=torch.stack(snapshots).cpu().numpy() if snapshots else None,
        snapshot_iterations=np.asarray(snapshot_iters, dtype=np.int64),
        seconds=seconds,
        config=asdict(cfg),
    )
    if clean is not None:
        result.final_psnr = float(M.psnr(out.detach(), clean)[0])
        result.best_psnr = float(record.best_psnr)
        result.best_iteration = int(record.best_iter)
        result.best_output = record.best_out[0].float().cpu().numpy()
    if posterior is not None:
        result.posterior_mean = posterior[0].float().cpu().numpy()
        result.posterior_samples = n_samples
        if clean is not None:
            result.posterior_psnr = float(M.psnr(posterior, clean)[0])
    if bool(record.stopped):
        result.stop_iteration = int(record.stop_iter)
        result.stop_output = record.stop_out[0].float().cpu().numpy()
        if clean is not None:
            result.stop_psnr = float(M.psnr(record.stop_out, clean)[0])
    return result
