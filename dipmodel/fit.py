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

Speed options (docs/performance.md), all off by default: ``precision`` "tf32" (TF32 tensor
cores for fp32 convolutions and matmuls on CUDA) or "bf16" (autocast of the forward and data
term; the output is cast back to fp32 before the data term and the metrics, so metrics are
always fp32); ``channels_last`` (NHWC activations, what cuDNN's tensor-core kernels want);
``compile`` (``torch.compile`` of forward + data term, falling back to eager with a warning
when it cannot compile). "fp32" on CUDA turns TF32 *off* for the fit, so it is the exact
reference the reduced precisions are compared with.

Packing (`fit_many`): several independent fits in one process on one device, driven round
robin (iteration t of each before t + 1 of any), each with the result it has alone; `fit` is
a pack of one.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dipmodel import metrics as M
from dipmodel.layers import LipschitzConv, refresh_power_vectors
from dipmodel.networks import DIPNet, NetConfig, build_network
from dipmodel.operators import Operator, data_term

ExtraMetric = Callable[[Tensor], Tensor]
NetMetric = Callable[[nn.Module], Tensor]
PRECISIONS = ("fp32", "tf32", "bf16")
OPTIMIZERS = ("adam", "sgld")


STOP_WINDOW = 100  # Shi et al. 2022's n in Eq. 8, in iterations


def default_stop_window(metric_stride: int) -> int:
    """Eq. 8's window as near n = 100 iterations as whole logged rows allow: the automatic stop
    compares means over rows, so the window is a multiple of the stride, at least one stride."""
    return max(STOP_WINDOW // metric_stride, 1) * metric_stride


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
    stop_window: int | None = None  # n in Eq. 8, in iterations; None: `default_stop_window` of the stride
    stop_eps: float = 0.01  # ε in Eq. 8
    sync_every: int = 200  # iterations between host syncs (NaN check, halting)
    spectral: bool = True  # FBC and blur/sharpness; off for 1-D signals
    precision: str = "fp32"  # fp32 | tf32 | bf16 (autocast); metrics are always fp32
    channels_last: bool = False  # NHWC memory format for 2-D networks
    compile: bool = False  # torch.compile the forward and data term (eager if unavailable)
    sn_refresh_every: int = 20  # exact re-seed of power-iteration vectors (sn_method power); 0: never
    optimizer: str = "adam"  # "sgld": Adam plus Langevin noise (Bayesian DIP, module docstring)
    sgld_temperature: float = 0.002  # T: the noise variance is 2·lr·T per step
    burn_in: int = 0  # sgld: iterations before outputs are averaged into the posterior mean
    backtrack: bool = True  # restore the last good parameters after a collapse (module docstring)
    backtrack_drop: float = 5.0  # dB fall of the PSNR against the target that counts as a collapse
    backtrack_every: int = 1  # iterations between checks (each good check saves the parameters)
    input_noise_std: float = 0.0  # Ulyanov's input regularisation: z + N(0, std²), redrawn each step
    output_average: float = 0.0  # Ulyanov's exponential average of outputs (0.99); 0: off

    def __post_init__(self) -> None:
        if self.stop_window is None and self.metric_stride >= 1:  # a bad stride is reported below, first
            object.__setattr__(self, "stop_window", default_stop_window(self.metric_stride))
        for name in ("iterations", "metric_stride", "stop_window", "sync_every", "backtrack_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.sn_refresh_every < 0:
            raise ValueError(f"FitConfig.sn_refresh_every must be >= 0, got {self.sn_refresh_every}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"FitConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.snapshot_stride < 0:
            raise ValueError(f"FitConfig.snapshot_stride must be >= 0, got {self.snapshot_stride}")
        assert self.stop_window is not None  # set above, or metric_stride < 1 raised
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
        if not self.backtrack_drop > 0:
            raise ValueError(f"FitConfig.backtrack_drop must be > 0 dB, got {self.backtrack_drop}")
        if self.input_noise_std < 0:
            raise ValueError(f"FitConfig.input_noise_std must be >= 0, got {self.input_noise_std}")
        if not 0 <= self.output_average < 1:
            raise ValueError(f"FitConfig.output_average must be in [0, 1), got {self.output_average}")
        if self.snapshot_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(
                f"FitConfig.snapshot_dtype must be float16, bfloat16 or float32, got {self.snapshot_dtype}"
            )


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
    fallback_iterations: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

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
            "fallbacks": len(self.fallback_iterations),
            "seconds": self.seconds,
            "ms_per_iteration": 1000.0 * self.seconds / max(self.final_iteration, 1),
        }


def observed(out: Tensor, y: Tensor, op: Operator) -> Tensor:
    """The output in the observation's space, where it is compared with ``y``: the output itself
    when shapes agree (denoising, JPEG, inpainting against the masked image, as the authors
    do), else A(output) (super-resolution)."""
    return out if out.shape == y.shape else op.A(out)


def metric_row(
    out: Tensor, y: Tensor, op: Operator, clean: Tensor | None, spectral: bool, extra: Mapping[str, ExtraMetric]
) -> dict[str, Tensor]:
    """The per-iteration metrics of one output, as 0-d or 1-d device tensors (no host sync)."""
    seen = observed(out, y, op)
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
        assert cfg.stop_window is not None  # FitConfig.__post_init__ sets it
        self.window = cfg.stop_window // cfg.metric_stride  # n of Eq. 8, in logged rows
        self.rows: Tensor | None = None  # allocated at the first row, when the columns are known
        self.names: list[str] = []
        self.iterations: list[int] = []
        self.best_psnr = torch.tensor(-float("inf"), device=device)
        self.best_iter = torch.tensor(-1, device=device)
        # replaced by the first output's shape at the first row
        self.best_out = torch.empty(0, device=device)
        self.stopped = torch.tensor(False, device=device)
        self.stop_iter = torch.tensor(-1, device=device)
        self.stop_out = torch.empty(0, device=device)

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
            delta = M.autostop_delta(self.rows[:, self.names.index("ratio")], j, self.window)
            fire = (delta < self.cfg.stop_eps) & ~self.stopped
            self.stop_iter = torch.where(fire, t, self.stop_iter)
            self.stop_out = torch.where(fire, out, self.stop_out)
            self.stopped = self.stopped | fire

    def table(self) -> dict[str, np.ndarray]:
        """The logged rows on the host: column -> values, with "iteration" first."""
        assert self.rows is not None
        values = self.rows[: len(self.iterations)].cpu().numpy()
        return {"iteration": np.asarray(self.iterations)} | {n: values[:, i] for i, n in enumerate(self.names)}


class Backtrack:
    """The safeguard of Ulyanov et al.'s and Shi et al.'s released loops, on the device.

    At each check the PSNR of the output against the degraded target is compared with the
    last good check's. A fall of more than ``drop`` dB is a collapse (a too-large step can
    throw the network into a saturated sigmoid, whose gradient never brings it back): the
    parameters of the last good check come back. Otherwise the current parameters become the
    last good ones. As in those loops the optimiser's moments are kept; unlike them the
    parameters are restored *after* this iteration's step, so the step taken from the
    collapsed output is discarded rather than applied to the restored parameters.
    Everything is ``torch.where`` on device tensors, so a check never waits for the device.
    """

    def __init__(self, params: Sequence[Tensor], drop: float, device: torch.device) -> None:
        self.params, self.drop = params, drop
        self.saved = [p.detach().clone() for p in params]
        self.last = torch.tensor(-math.inf, device=device)
        self.count = torch.zeros((), device=device)

    @torch.no_grad()
    def check(self, psnr_target: Tensor) -> Tensor:
        """Compare with the last good check; save the current parameters if good. 0-d bool."""
        fall = (self.last - psnr_target) > self.drop
        for live, saved in zip(self.params, self.saved, strict=True):
            saved.copy_(torch.where(fall, saved, live))
        self.last = torch.where(fall, self.last, psnr_target)
        self.count = self.count + fall
        return fall

    @torch.no_grad()
    def restore(self, fall: Tensor) -> None:
        """After the step: back to the last good parameters where ``fall`` holds."""
        for live, saved in zip(self.params, self.saved, strict=True):
            live.copy_(torch.where(fall, saved, live))


def seeded_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """A generator on the device, seeded; None on the ``meta`` device, which has none (tests)."""
    return None if device.type == "meta" else torch.Generator(device=device).manual_seed(seed)


def langevin_noise(params: Sequence[Tensor], std: float, generator: torch.Generator | None) -> None:
    """Add 𝒩(0, std²) to every weight in place: the Langevin half of an SGLD step."""
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=std)


@contextlib.contextmanager
def precision_flags(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 on (tf32, bf16) or off (fp32) for CUDA convolutions and matmuls, restored on exit."""
    if device.type != "cuda":
        yield
        return
    mode = "ieee" if precision == "fp32" else "tf32"
    conv, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(conv, "conv") and hasattr(conv.conv, "fp32_precision"):  # torch >= 2.9
        saved = conv.conv.fp32_precision, matmul.fp32_precision
        conv.conv.fp32_precision = matmul.fp32_precision = mode
        try:
            yield
        finally:
            conv.conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved_legacy = conv.allow_tf32, matmul.allow_tf32
        conv.allow_tf32 = matmul.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            conv.allow_tf32, matmul.allow_tf32 = saved_legacy


def compile_or_eager(fn: Callable[[], tuple[Tensor, Tensor]], enabled: bool) -> Callable[[], tuple[Tensor, Tensor]]:
    """``torch.compile(fn)``, or ``fn`` itself with a warning on stderr if compiling fails.

    Compilation happens at the first call, so that call is tried here; a machine without a
    C++ compiler or Triton then runs eagerly instead of failing the fit.
    """
    if not enabled:
        return fn
    # Each fit compiles its own network: forget the previous fit's graphs, whose guards would
    # only fail and count towards dynamo's recompile limit (after which it silently runs eager).
    torch._dynamo.reset()
    compiled = torch.compile(fn)
    chosen: list[Callable[[], tuple[Tensor, Tensor]]] = []  # what runs after the first call

    def call() -> tuple[Tensor, Tensor]:
        if chosen:
            return chosen[0]()
        try:
            result = compiled()
            chosen.append(compiled)
            return result
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
            lines = str(err).strip().splitlines() or [""]
            print(
                f"warning: torch.compile unavailable ({type(err).__name__}: {lines[0][:200]}); running the fit eagerly",
                file=sys.stderr,
                flush=True,
            )
            chosen.append(fn)
            return fn()

    return call


class FitLoop:
    """The device side of one fit: network, input, optimiser and record.

    ``iteration(t)`` runs one iteration and never reads a device value on the host (tested
    on the ``meta`` device, where any such read raises), so the CPU can queue work ahead of
    the GPU; `fit` adds the host sync every ``sync_every`` iterations.
    """

    def __init__(
        self,
        net_cfg: NetConfig,
        op: Operator,
        y: Tensor,
        clean: Tensor | None,
        cfg: FitConfig,
        extra_metrics: Mapping[str, ExtraMetric] | None = None,
        net_metrics: Mapping[str, NetMetric] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        device = self.device
        self.extra, self.net_metrics = dict(extra_metrics or {}), dict(net_metrics or {})
        self.y = y.to(device)
        self.clean = clean.to(device) if clean is not None else None
        self.op = op.to(device)
        out_shape = tuple(clean.shape[1:]) if clean is not None else tuple(y.shape[1:])
        if out_shape != tuple(y.shape[1:]) and self.op.A(torch.zeros(1, *out_shape, device=device)).shape != y.shape:
            raise ValueError(f"observation shape {tuple(y.shape)} does not match A(output) for output {out_shape}")

        # --- network and fixed input, both from the fit's seed --------------------------------
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net: DIPNet = build_network(net_cfg, out_shape)
        z = net.make_input(torch.Generator().manual_seed(cfg.seed))
        net, z = net.to(device), z.to(device)
        if cfg.channels_last and z.dim() == 4:
            # Module.to takes memory_format at run time; torch's stubs leave it out of the overloads
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            z = z.to(memory_format=torch.channels_last)
        self.net, self.z = net, z
        self.optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.power_layers = [m for m in net.modules() if isinstance(m, LipschitzConv) and m.uses_power_iteration]
        self.weights = [p for p in net.parameters() if p.dim() >= 2]  # what SGLD perturbs
        self.noise_std = math.sqrt(2 * cfg.lr * cfg.sgld_temperature)
        self.sgld = sgld = cfg.optimizer == "sgld"
        self.noise_gen = seeded_generator(device, cfg.seed + 1) if sgld else None
        self.input_gen = seeded_generator(device, cfg.seed + 2) if cfg.input_noise_std else None
        self.z_step = z  # the input of this iteration's forward: z, or z + noise (input_noise_std)
        params = list(net.parameters())
        self.guard = Backtrack(params, cfg.backtrack_drop, device) if cfg.backtrack else None
        self.fallback_hist = torch.zeros(cfg.iterations + 1, dtype=torch.bool, device=device)
        self.forward = compile_or_eager(self._forward_loss, cfg.compile)

        # --- device-side state ----------------------------------------------------------------
        self.loss_hist = torch.full((cfg.iterations + 1,), float("nan"), device=device)
        self.record = DeviceRecord(cfg, device)
        self.snap_dtype = getattr(torch, cfg.snapshot_dtype)
        self.snapshots: list[Tensor] = []
        self.snapshot_iters: list[int] = []
        self.out: Tensor | None = None  # the recorded output: the raw one, or its running average
        self.posterior: Tensor | None = None  # running mean of the samples after burn-in (sgld)
        self.samples = 0
        net.train()

    def _forward_loss(self) -> tuple[Tensor, Tensor]:
        """The output (fp32) and the data term; the forward in bf16 under ``precision: bf16``."""
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = self.net(self.z_step)
        out = out.float()
        return out, data_term(self.op, out, self.y)

    def iteration(self, t: int) -> None:
        """Output t: metrics at the stride (and at the last iteration), then step t + 1 unless t = T."""
        cfg, T = self.cfg, self.cfg.iterations
        if self.power_layers and cfg.sn_refresh_every and t % cfg.sn_refresh_every == 0:
            refresh_power_vectors(self.power_layers)
        if cfg.input_noise_std:
            noise = torch.randn(self.z.shape, generator=self.input_gen, device=self.device, dtype=self.z.dtype)
            self.z_step = self.z + cfg.input_noise_std * noise
        out, loss = self.forward()
        raw = out.detach()
        self.loss_hist[t] = loss.detach()
        fall = None
        if self.guard is not None and t < T and t % cfg.backtrack_every == 0:
            fall = self.guard.check(M.psnr(observed(raw, self.y, self.op), self.y)[0])
            self.fallback_hist[t] = fall
        if cfg.output_average and self.out is not None:  # Ulyanov's exponential average
            self.out = self.out * cfg.output_average + raw * (1 - cfg.output_average)
        else:
            self.out = raw
        if self.sgld and t > cfg.burn_in:  # a sample: fold it into the running mean
            self.samples += 1
            if self.posterior is None:
                self.posterior = self.out.clone()
            else:
                self.posterior.add_(self.out - self.posterior, alpha=1 / self.samples)
        if t % cfg.metric_stride == 0 or t == T:
            with torch.no_grad():
                row = metric_row(self.out, self.y, self.op, self.clean, cfg.spectral, self.extra)
                if cfg.output_average and self.clean is not None:
                    row["psnr_clean_raw"] = M.psnr(raw, self.clean)[0]
                row |= {name: fn(self.net) for name, fn in self.net_metrics.items()}
                if self.guard is not None:
                    row["fallbacks"] = self.guard.count
                self.record.add(t, self.out, row | {"loss": loss.detach()})
        if cfg.snapshot_stride and (t % cfg.snapshot_stride == 0 or t == T):
            self.snapshots.append(self.out[0].to(self.snap_dtype))
            self.snapshot_iters.append(t)
        if t < T:
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            self.optimiser.step()
            if self.sgld:
                langevin_noise(self.weights, self.noise_std, self.noise_gen)
            if fall is not None and self.guard is not None:
                self.guard.restore(fall)

    def check_losses(self, lo: int, upto: int) -> bool:
        """Host sync point: raise on a non-finite loss in [lo, upto); say whether to halt at the stop."""
        chunk = self.loss_hist[lo:upto].cpu()
        bad = (~torch.isfinite(chunk)).nonzero()
        if len(bad):
            raise FitDivergedError(f"loss became {float(chunk[bad[0]])} at iteration {lo + int(bad[0])}")
        return self.cfg.halt_at_stop and bool(self.record.stopped)


@dataclass(frozen=True)
class FitJob:
    """The arguments of one `fit`, so that several can be run together by `fit_many`."""

    net_cfg: NetConfig
    op: Operator
    y: Tensor
    clean: Tensor | None = None
    cfg: FitConfig = FitConfig()
    extra_metrics: Mapping[str, ExtraMetric] | None = None
    net_metrics: Mapping[str, NetMetric] | None = None


def fit(
    net_cfg: NetConfig,
    op: Operator,
    y: Tensor,
    clean: Tensor | None = None,
    cfg: FitConfig = FitConfig(),
    extra_metrics: Mapping[str, ExtraMetric] | None = None,
    device: str | torch.device = "cpu",
    net_metrics: Mapping[str, NetMetric] | None = None,
) -> FitResult:
    """Fit a freshly initialised network to the observation ``y`` (batch 1).

    ``clean`` is only used for evaluation (PSNR against the truth, the oracle-best output);
    the optimisation never sees it. ``extra_metrics`` maps a column name to a function of
    the output, evaluated at the metric stride on the device (e.g. the 1-D amplitude error);
    ``net_metrics`` likewise to a function of the network (e.g. the σ of its layers).
    """
    [result] = fit_many([FitJob(net_cfg, op, y, clean, cfg, extra_metrics, net_metrics)], device)
    if isinstance(result, Exception):
        raise result
    return result


class _Running:
    """One fit of a pack while it runs: its loop, its CUDA stream (if any) and where it stands."""

    def __init__(self, job: FitJob, device: torch.device, own_stream: bool) -> None:
        self.cfg = job.cfg
        self.stream = torch.cuda.Stream(device) if own_stream else None  # type: ignore[no-untyped-call]
        if self.stream is not None:  # see the caller's work on the inputs
            self.stream.wait_stream(torch.cuda.current_stream(device))
        # The loop's tensors are made on its own stream too: the caching allocator may hand a
        # freed block to another stream at once, so a tensor must live and die on one stream.
        with precision_flags(job.cfg.precision, device), self.on_stream():
            self.loop = FitLoop(
                job.net_cfg, job.op, job.y, job.clean, job.cfg, job.extra_metrics, job.net_metrics, device
            )

    def on_stream(self) -> contextlib.AbstractContextManager[object]:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def advance(self, t: int) -> bool:
        """Iteration t, and the host sync at the fit's ``sync_every``; True when the fit is over."""
        cfg, loop = self.cfg, self.loop
        with precision_flags(cfg.precision, loop.device), self.on_stream():
            try:
                loop.iteration(t)
            except torch.linalg.LinAlgError:  # NaN weights break the exact σ before a sync sees the loss
                loop.check_losses(0, t + 1)
                raise
            at_sync = (t + 1) % cfg.sync_every == 0
            if at_sync and loop.check_losses(t + 1 - cfg.sync_every, t + 1):
                return True  # halted at the automatic stop
            if t == cfg.iterations:
                if not at_sync:
                    loop.check_losses(max(0, t + 1 - cfg.sync_every), t + 1)
                return True
        return False

    def wait(self) -> None:
        """Block until the device has finished this fit's work."""
        if self.stream is not None:
            self.stream.synchronize()
        elif self.loop.device.type == "cuda":
            torch.cuda.synchronize(self.loop.device)


def fit_many(jobs: Sequence[FitJob], device: str | torch.device = "cpu") -> list[FitResult | Exception]:
    """Run independent fits in one process, each exactly as `fit` would run it alone.

    Round robin: iteration t of every running fit before iteration t + 1 of any, and no
    host sync between them, so while the device computes one fit's step the host queues the
    next fit's (small fits leave most of a GPU idle; their launch overheads now overlap). On
    CUDA a pack of more than one fit gives each its own stream, so their kernels may also run
    side by side. Each fit keeps everything of its own (seeded network and input, optimiser,
    record, stop rule, host syncs at its own ``sync_every``, budget) and nothing one fit does
    reads another's tensors, so its result is the one `fit` gives. A fit that fails (e.g.
    `FitDivergedError`) gets its exception in its slot and the others go on. ``seconds`` of a
    result is the time from the start of the pack to the end of that fit.
    """
    device = torch.device(device)
    slots: dict[int, FitResult | Exception] = {}
    running: dict[int, _Running] = {}
    for i, job in enumerate(jobs):
        try:
            running[i] = _Running(job, device, own_stream=device.type == "cuda" and len(jobs) > 1)
        except Exception as err:  # noqa: BLE001 - this fit's own error, returned in its slot
            slots[i] = err
    start = time.perf_counter()
    t = 0
    while running:
        for i, fit_ in list(running.items()):
            try:
                over = fit_.advance(t)
                if over:
                    fit_.wait()
                    slots[i] = collect(fit_.loop, t, time.perf_counter() - start)
            except Exception as err:  # noqa: BLE001 - this fit's own error, returned in its slot
                over, slots[i] = True, err
            if over:
                del running[i]  # frees its device memory for the fits still running
        t += 1
    return [slots[i] for i in range(len(jobs))]


def collect(loop: FitLoop, t: int, seconds: float) -> FitResult:
    """Everything the fit produced, back on the host, once."""
    record, clean, out = loop.record, loop.clean, loop.out
    assert out is not None
    result = FitResult(
        metrics=record.table(),
        loss=loop.loss_hist[: t + 1].cpu().numpy(),
        final=out[0].float().cpu().numpy(),
        final_iteration=t,
        snapshots=torch.stack(loop.snapshots).cpu().numpy() if loop.snapshots else None,
        snapshot_iterations=np.asarray(loop.snapshot_iters, dtype=np.int64),
        seconds=seconds,
        config=asdict(loop.cfg),
        fallback_iterations=loop.fallback_hist[: t + 1].nonzero()[:, 0].cpu().numpy(),
    )
    if clean is not None:
        result.final_psnr = float(M.psnr(out, clean)[0])
        result.best_psnr = float(record.best_psnr)
        result.best_iteration = int(record.best_iter)
        result.best_output = record.best_out[0].float().cpu().numpy()
    if loop.posterior is not None:
        result.posterior_mean = loop.posterior[0].float().cpu().numpy()
        result.posterior_samples = loop.samples
        if clean is not None:
            result.posterior_psnr = float(M.psnr(loop.posterior, clean)[0])
    if bool(record.stopped):
        result.stop_iteration = int(record.stop_iter)
        result.stop_output = record.stop_out[0].float().cpu().numpy()
        if clean is not None:
            result.stop_psnr = float(M.psnr(record.stop_out, clean)[0])
    return result
