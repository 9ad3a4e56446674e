"""The spectrally controlled layers of Shi et al. (2022, §4) and the plain layers they replace.

- `LipschitzConv`: a 1-D or 2-D convolution whose weight is W / max(1, σ(W)/λ), σ the
  spectral norm of W reshaped to (out, in·k…) (Shi Eq. 3; like Miyato et al., this bounds
  the convolution operator's own Lipschitz constant only up to a kernel-size factor).
- `LipschitzNorm` (Eq. 5): mean-only normalisation plus a learned bias; unlike batch norm it
  does not divide by the std, which would undo the bound (Eq. 4).
- `Upsample`: nearest, bilinear, the bed of nails, and Gaussian upsampling (Eq. 6).

Conventions chosen where the papers leave a choice:
- Padding: every convolution pads kernel_size // 2 by *reflection*, as Ulyanov et al.'s
  released DIP code does (zeros would add a dark border, i.e. spurious high frequencies).
  Reflection needs at least 2 pixels per side at every resolution a 3-wide kernel sees.
- σ(W), three ways (``sn_method``):
  "gram" (default): exact, as √ of the largest eigenvalue of the smaller Gram matrix W·Wᵀ
  (or Wᵀ·W), by ``eigvalsh``: about 1.7 ms forward+backward for a 128 × 1152 weight on a
  CPU, against 22 ms for the SVD of ``matrix_norm``.
  "svd": ``torch.linalg.matrix_norm(ord=2)`` every step, the slow baseline for benchmarks.
  It is not by itself what the authors' released code does: their SpectralNorm
  (code/models/common.py) takes the largest singular value of ``w.data`` by ``torch.svd``,
  at every forward in training and evaluation, and divides W by max(1, σ/λ) with that σ a
  constant, so no gradient flows through σ; here the gradient flows through σ unless
  ``detach_sigma=True``. ``sn_method="svd", detach_sigma=True`` together are theirs
  ("gram" with ``detach_sigma=True`` gives the same σ up to rounding, faster).
  "power": power iteration (Miyato et al. 2018) with persistent `u`, `v`, one step per
  training-mode forward, `u`, `v` initialised from an exact SVD. Alone it lags while the
  bound is active: training flattens the top of the spectrum, and since the gradient flows
  through σ̂ = uᵀWv the optimiser shrinks W along exactly the estimated direction, so the
  estimate can run 5–15 % low (tested, xfail, on a single layer at λ ≤ 1). More power steps
  do not help (the top singular values are nearly equal); `refresh_power_vectors`, an exact
  re-seed every few iterations, does: the fit calls it every ``FitConfig.sn_refresh_every``
  iterations, which keeps a Decoder at λ = 2 within 0.2 % of the exact σ after the first 50
  iterations and within 2 % before (measured; tested in tests/test_fit.py). σ̂ and the power
  step are computed in fp32 outside autocast, whatever the precision of the convolutions.
- ``detach_sigma``: the divisor max(1, σ/λ) is computed without gradient (under no_grad),
  so backward sees W / c with c a constant: ∂L/∂W = (∂L/∂W_eff) / c. It works the same with
  every ``sn_method``; with "power" the estimate σ̂ = uᵀWv is then a constant too. Forward
  values do not change (up to rounding); gradients do while the bound is active (σ > λ).
  With "power" it also removes the lag described above: nothing pushes W down along the
  estimated direction, and on the single layer of the tests (300 Adam steps at λ = 0.5 and 1)
  the estimate stays within 1e-5 of the exact σ where it otherwise ends 12–14 % low.
- Gaussian kernel: 5 × 5 (5 taps in 1-D), distances from the centre are halved before the
  Gaussian exp(−d²/2σ²) is applied, so σ is measured on the low-resolution grid of a ×2
  upsampling (the authors' convention); normalised to sum 1; applied with zero padding
  ('same'), which keeps the nail lattice at every scale. The bed of nails keeps one pixel
  in scale**dims, so Gaussian upsampling has DC gain 1/scale**dims (the next conv and
  normalisation absorb it). Nails sit at the top-left of each block.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_KINDS = ("batch", "lipschitz", "none")
UPSAMPLE_KINDS = ("nearest", "bilinear", "gaussian", "bed_of_nails")


def _check_dims(dims: int) -> None:
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")


# ---------------------------------------------------------------- Lipschitz-controlled convolution


SN_METHODS = ("gram", "svd", "power")


def fp32_region(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast off: σ and the power step stay fp32 whatever the precision of the convolutions."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()  # e.g. the meta device, which has no autocast


def spectral_norm_exact(weight: Tensor) -> Tensor:
    """Largest singular value of the weight as an (out, in·k…) matrix, differentiable (SVD)."""
    return torch.linalg.matrix_norm(weight.flatten(1), ord=2)


def spectral_norm_gram(weight: Tensor) -> Tensor:
    """The same exact value from the smaller Gram matrix: an eigvalsh instead of an SVD."""
    w = weight.flatten(1)
    gram = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
    return torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt()


class LipschitzConv(nn.Module):
    """Convolution with weight W / max(1, σ(W)/λ); λ None or inf gives a plain convolution.

    ``sn_method`` picks how σ is found (module docstring): "gram" exact (default), "svd"
    exact the slow way, "power" a power-iteration estimate (one step per training forward,
    under no_grad; the gradient flows through W in σ = uᵀWv). ``detach_sigma`` divides by
    max(1, σ/λ) held constant in backward, as the authors' code (with "svd": theirs exactly).
    """

    u: Tensor  # power-iteration vectors, buffers present only when σ is estimated
    v: Tensor

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        dims: int = 2,
        lam: float | None = None,
        sn_method: str = "gram",
        bias: bool = True,
        detach_sigma: bool = False,
    ) -> None:
        super().__init__()
        _check_dims(dims)
        if lam is not None and not lam > 0:
            raise ValueError(f"lam must be positive (or None/inf for no bound), got {lam}")
        self.dims, self.stride, self.padding = dims, stride, kernel_size // 2
        self.lam = lam if lam is not None and math.isfinite(lam) else None
        if sn_method not in SN_METHODS:
            raise ValueError(f"sn_method must be one of {', '.join(SN_METHODS)}, got {sn_method!r}")
        self.sn_method = sn_method
        self.detach_sigma = detach_sigma
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, *(kernel_size,) * dims))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        if self.lam is not None and sn_method == "power":
            u, _, vh = torch.linalg.svd(self.weight.detach().flatten(1), full_matrices=False)
            self.register_buffer("u", u[:, 0].clone())
            self.register_buffer("v", vh[0].clone())

    @property
    def uses_power_iteration(self) -> bool:
        return self.lam is not None and self.sn_method == "power"

    @torch.no_grad()
    def _power_step(self) -> None:
        with fp32_region(self.weight.device.type):
            w = self.weight.float().flatten(1)
            self.v.copy_(F.normalize(w.t() @ self.u, dim=0))
            self.u.copy_(F.normalize(w @ self.v, dim=0))

    def sigma_estimate(self) -> Tensor:
        """The σ the layer divides by (gradient through W); exact unless estimated by power steps.

        An unbounded layer needs no estimate; it reports the exact value so σ can still be
        monitored along a fit.
        """
        if self.sn_method == "svd":
            return spectral_norm_exact(self.weight)
        if not self.uses_power_iteration:
            return spectral_norm_gram(self.weight)
        # clones: a later power step must not modify tensors saved for this backward;
        # fp32 outside autocast, so a bf16 fit divides by the same σ̂ as an fp32 one
        with fp32_region(self.weight.device.type):
            return self.u.clone() @ (self.weight.float().flatten(1) @ self.v.clone())

    def effective_weight(self) -> Tensor:
        """W / max(1, σ/λ) with the current σ (no power step), or W when unbounded.

        With ``detach_sigma`` the divisor is computed under no_grad: a constant in backward.
        """
        if self.lam is None:
            return self.weight
        if self.detach_sigma:
            with torch.no_grad():
                divisor = torch.clamp(self.sigma_estimate() / self.lam, min=1.0)
            return self.weight / divisor
        return self.weight / torch.clamp(self.sigma_estimate() / self.lam, min=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.uses_power_iteration:
            self._power_step()
        if self.padding:
            x = F.pad(x, (self.padding,) * (2 * self.dims), mode="reflect")
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.effective_weight(), self.bias, stride=self.stride)


@torch.no_grad()
def refresh_power_vectors(layers: list[LipschitzConv]) -> None:
    """Re-seed every power-iteration layer's `u`, `v` with the exact top singular vectors.

    One batched ``eigh`` of the smaller Gram matrix per weight shape (a DIP has two or three
    shapes), so a refresh costs a few kernel launches, not one SVD per layer. It has no
    effect on layers that do not estimate σ.
    """
    groups: dict[tuple[int, ...], list[LipschitzConv]] = {}
    for layer in layers:
        if layer.uses_power_iteration:
            groups.setdefault(tuple(layer.weight.shape), []).append(layer)
    with fp32_region(layers[0].weight.device.type if layers else "cpu"):
        for group in groups.values():
            w = torch.stack([layer.weight.float().flatten(1) for layer in group])  # (L, out, in·k…)
            wide = w.shape[1] <= w.shape[2]
            gram = w @ w.transpose(1, 2) if wide else w.transpose(1, 2) @ w
            top = torch.linalg.eigh(gram)[1][..., -1]  # (L, smaller side), eigenvalues ascend
            other = (w.transpose(1, 2) @ top[..., None] if wide else w @ top[..., None])[..., 0]
            other = F.normalize(other, dim=1)
            for i, layer in enumerate(group):
                layer.u.copy_(top[i] if wide else other[i])
                layer.v.copy_(other[i] if wide else top[i])


# ---------------------------------------------------------------- normalisation


class LipschitzNorm(nn.Module):
    """Shi Eq. 5: subtract each sample's per-channel spatial mean, add a learned bias.

    No division by the std, so the Lipschitz bound of the preceding conv survives. With
    batch 1 (every DIP fit) the per-sample mean is the mini-batch mean of mean-only BN.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        # fp32 like autocast's own norms: in bf16, x − mean loses the small deviations
        x = x.float()
        spatial = tuple(range(2, x.dim()))
        bias = self.bias.view(1, -1, *(1,) * len(spatial))
        return x - x.mean(dim=spatial, keepdim=True) + bias


def make_norm(kind: str, channels: int, dims: int) -> nn.Module:
    """The normalisation after a conv: "batch", "lipschitz" (Shi Eq. 5) or "none"."""
    _check_dims(dims)
    if kind == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if kind == "lipschitz":
        return LipschitzNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}; allowed: {', '.join(NORM_KINDS)}")


# ---------------------------------------------------------------- upsampling


def gaussian_kernel(sigma: float, size: int = 5, dims: int = 2) -> Tensor:
    """Sampled Gaussian on a size^dims grid, distances halved (σ in low-res pixels), sum 1.

    σ = 0 is the exact delta at the centre, so Gaussian upsampling becomes the bed of nails.
    """
    _check_dims(dims)
    if sigma < 0 or size < 1 or size % 2 == 0:
        raise ValueError(f"need sigma >= 0 and an odd size, got sigma={sigma}, size={size}")
    offsets = (torch.arange(size, dtype=torch.float64) - size // 2) / 2
    d2 = torch.stack(torch.meshgrid(*(offsets,) * dims, indexing="ij")).square().sum(0)
    if sigma == 0:
        kernel = (d2 == 0).double()
    else:
        kernel = torch.exp(-d2 / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def bed_of_nails(x: Tensor, scale: int) -> Tensor:
    """Insert scale − 1 zeros after every sample along each spatial dim.

    (N, C, *S) → (N, C, *S·scale), the input at the top-left corner of each block.
    """
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    shape = (*x.shape[:2], *(s * scale for s in x.shape[2:]))
    out = x.new_zeros(shape).contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    nails = (slice(None),) * 2 + (slice(None, None, scale),) * (x.dim() - 2)
    out[nails] = x
    return out


class Upsample(nn.Module):
    """Upsampling by an integer scale: "nearest", "bilinear" (linear in 1-D, align_corners
    False), "bed_of_nails" (zero insertion) or "gaussian" (Shi Eq. 6: bed of nails, then a
    depthwise 'same' convolution with `gaussian_kernel(sigma)`, zero padded).
    """

    kernel: Tensor  # (1, 1, *taps), only for "gaussian"

    def __init__(self, kind: str, scale: int = 2, sigma: float = 0.5, dims: int = 2) -> None:
        super().__init__()
        _check_dims(dims)
        if kind not in UPSAMPLE_KINDS:
            raise ValueError(f"unknown upsample kind {kind!r}; allowed: {', '.join(UPSAMPLE_KINDS)}")
        self.kind, self.scale, self.sigma, self.dims = kind, scale, sigma, dims
        if kind == "gaussian":
            kernel = gaussian_kernel(sigma, dims=dims)
            self.register_buffer("kernel", kernel[None, None])  # (1, 1, *taps)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "nearest":
            return F.interpolate(x, scale_factor=self.scale, mode="nearest")
        if self.kind == "bilinear":
            mode = "linear" if self.dims == 1 else "bilinear"
            return F.interpolate(x, scale_factor=self.scale, mode=mode, align_corners=False)
        x = bed_of_nails(x, self.scale)
        # σ = 0 is the bed of nails by definition; skipping the delta filter keeps it exact
        # where convolutions round their inputs (TF32 on GPUs).
        if self.kind == "bed_of_nails" or self.sigma == 0:
            return x
        channels = x.shape[1]
        weight = self.kernel.to(x.dtype).expand(channels, 1, *self.kernel.shape[2:])
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, weight, padding="same", groups=channels)


# ---------------------------------------------------------------- frequency response (C&M App. E)


def measured_response(kind: str, stride: int, sigma: float = 0.5, length: int = 64) -> tuple[Tensor, Tensor]:
    """The 1-D layer's |DFT| / DC in response to a unit impulse, measured through `Upsample`.

    Returns (k, |H(k)| / |H(0)|) for k = j / (length·stride), j = 1 … length/2, in cycles per
    output sample: the band a low-resolution input of `length` samples can carry, where the
    layer's response is its interpolation filter (above it the spectrum holds the replicas).
    """
    impulse = torch.zeros(1, 1, length, dtype=torch.float64)
    impulse[..., length // 2] = 1
    response = Upsample(kind, stride, sigma, dims=1).double()(impulse)[0, 0]
    spectrum = torch.fft.rfft(response).abs()
    k = torch.arange(1, length // 2 + 1, dtype=torch.float64) / (length * stride)
    return k, spectrum[1 : length // 2 + 1] / spectrum[0]


def exact_response(kind: str, stride: int, k: Tensor, sigma: float = 0.5) -> Tensor:
    """|H(k)| / H(0) of the layer's discrete interpolation filter, from its taps in closed form.

    nearest: a box of `stride` taps, the Dirichlet kernel sin(π·stride·k) / (stride·sin πk);
    bilinear: the triangle 1 − |t|/stride sampled at t = ±1/2, …, ±(stride − 1/2) (where an
    input sample falls between output samples with align_corners=False, for even strides);
    gaussian: the taps of `gaussian_kernel` at t = −2 … 2; bed_of_nails: a single tap, 1.
    """
    k = k.double()
    if kind == "nearest":
        return torch.sin(math.pi * stride * k) / (stride * torch.sin(math.pi * k))
    if kind == "bilinear":
        if stride % 2:
            raise ValueError(f"the bilinear form is derived for even strides, got {stride}")
        t = torch.arange(2 * stride, dtype=torch.float64) - stride + 0.5
        taps = 1 - t.abs() / stride
    elif kind == "gaussian":
        taps = gaussian_kernel(sigma, dims=1).double()
        t = torch.arange(len(taps), dtype=torch.float64) - len(taps) // 2
    elif kind == "bed_of_nails":
        return torch.ones_like(k)
    else:
        raise ValueError(f"unknown upsample kind {kind!r}; allowed: {', '.join(UPSAMPLE_KINDS)}")
    return (taps * torch.exp(-2j * math.pi * k[:, None] * t)).sum(-1).abs() / taps.sum()


def paper_response(kind: str, stride: int, k: Tensor) -> Tensor | None:
    """C&M App. E's continuous forms divided by their DC value: sinc(stride·k) for nearest,
    sinc²(stride·k) for bilinear; None for layers the paper does not analyse. They differ from
    the discrete filters by aliasing, a relative error of about (πk)²/6 at low k."""
    sinc = torch.sinc(stride * k.double())
    return {"nearest": sinc, "bilinear": sinc**2}.get(kind)
