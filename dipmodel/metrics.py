"""Metrics of SPEC §6: pure tensor functions, cheap enough to run at every iteration of a fit.

Images are float tensors in [0, 1] shaped (N, C, H, W), or (C, H, W) read as N = 1; image
metrics return one value per image, (N,), or (N, bands). Everything stays on the inputs' device
and none of the per-iteration metrics reads a tensor value on the host (no `.item()`, no
data-dependent shapes or branches), so a GPU fit loop never waits on them. Callers wrap them in
`torch.no_grad()`. The host-side helpers (`first_autostop`, `first_convergence`) are for
post-hoc analysis of recorded series.

Conventions chosen where the papers leave a choice (each documented at its function):
- Grey images use ITU-R 601 luma (0.299, 0.587, 0.114).
- Frequencies are measured in FFT index units from the zero frequency, so the centred layout
  (fftshift) of the papers is used without shifting any data: ring tables are built directly in
  the FFT's own layout.
- FBC rings: radius normalised by min(H, W)/2; ring n holds n/N ≤ r < (n+1)/N, the last ring
  also r = 1; corners (r > 1) are ignored.
- Blurriness: the 9-tap box blur uses replicate padding. Sharpness: replicate padding, so a
  border pixel compares only with its in-image neighbours.
- Radial power spectrum: bins by the nearest integer radius, 0 … min(H, W)//2; orthonormal FFT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- shared pieces


def _batched(x: Tensor) -> Tensor:
    """(C, H, W) → (1, C, H, W); a 4-D batch passes through."""
    return x.unsqueeze(0) if x.dim() == 3 else x


def to_grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma, (N, 1, H, W): the metrics defined on grey images all see the same grey."""
    x = _batched(x)
    channels = x.shape[1]
    if channels == 1:
        return x
    if channels != 3:
        raise ValueError(f"to_grey expects 1 or 3 channels, got {channels}")
    # Scalar weights, not a weight tensor: building one would copy from the host every call.
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _freq_radius2(h: int, w: int) -> Tensor:
    """Squared distance of every FFT bin from the zero frequency, in index units, (H, W) int64.

    Laid out as `torch.fft.fft2` returns bins; `fftshift` of this is the centred distance map
    of the papers (zero frequency at index (H//2, W//2)).
    """
    fy: Tensor = torch.fft.fftfreq(h, 1.0 / h).round().long()
    fx: Tensor = torch.fft.fftfreq(w, 1.0 / w).round().long()
    return fy[:, None].square() + fx[None, :].square()


def _ring_tables(index: Tensor, bins: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Device copies of a per-bin ring index (value `bins` = ignored) and 1/(pixels per ring)."""
    counts = torch.bincount(index, minlength=bins + 1)[:bins]
    if bool((counts == 0).any()):  # host tensor, built once per cache key
        raise ValueError(f"an image this small leaves a ring empty (pixels per ring: {counts.tolist()})")
    return index.to(device), (1.0 / counts.double()).to(device, dtype)


def _ring_mean(values: Tensor, index: Tensor, inv_count: Tensor) -> Tensor:
    """Mean of (N, H·W) `values` within each ring: one scatter-add, (N, rings)."""
    n, rings = values.shape[0], inv_count.shape[0]
    sums = values.new_zeros(n, rings + 1).index_add_(1, index, values)
    return sums[:, :rings] * inv_count


@functools.lru_cache(maxsize=32)
def _fbc_rings(h: int, w: int, bands: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """FBC ring index per FFT bin and inverse ring sizes, cached so a fit builds them once.

    r = d / (m/2) with m = min(H, W); ring n holds n/bands ≤ r < (n+1)/bands and the last one
    also r = 1. The edges are compared in integers, d²·(2·bands)² against (k·m)², so a bin on
    an edge is never misplaced by rounding.
    """
    m = min(h, w)
    q = _freq_radius2(h, w).flatten() * (2 * bands) ** 2
    edges = (torch.arange(1, bands + 1) * m) ** 2
    index = (q[:, None] >= edges).sum(1)  # rings passed; `bands` means r ≥ 1
    index = torch.where(q == edges[-1], bands - 1, index)  # r = 1 closes the last ring
    return _ring_tables(index, bands, device, dtype)


@functools.lru_cache(maxsize=32)
def _radial_bins(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Nearest-integer radius bin per FFT bin (0 … min(H, W)//2; beyond is ignored), cached."""
    bins = min(h, w) // 2 + 1
    index = _freq_radius2(h, w).flatten().double().sqrt().round().long()  # d² is an integer: no ties
    return _ring_tables(index.clamp_max(bins), bins, device, dtype)


# ---------------------------------------------------------------- image metrics


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """10·log10(1/MSE) over all dimensions but the batch, (N,); identical inputs give +inf."""
    mse = (_batched(x) - _batched(y)).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse)


def fbc(output: Tensor, target: Tensor, bands: int = 5) -> Tensor:
    """Frequency-band correspondence (Shi et al. 2022, Eq. 1), (N, bands), lowest band first.

    H = |F{grey(output)}| / |F{grey(target)}| per frequency, clipped to [0, 1] as in the
    authors' code, then averaged within `bands` equal-width rings of the radius normalised by
    min(H, W)/2 (half the width for square images); corners beyond radius 1 are ignored. A
    target bin that is exactly zero gives H = 0 if the output's is zero too, else 1.
    """
    out_grey, tgt_grey = to_grey(output), to_grey(target)
    h, w = out_grey.shape[-2:]
    out_amp = torch.fft.fft2(out_grey).abs().flatten(1)
    tgt_amp = torch.fft.fft2(tgt_grey).abs().flatten(1)
    ratio = (out_amp / tgt_amp.clamp_min(torch.finfo(tgt_amp.dtype).tiny)).clamp(0.0, 1.0)
    index, inv_count = _fbc_rings(h, w, bands, ratio.device, ratio.dtype)
    return _ring_mean(ratio, index, inv_count)


def _blur_retained(grey: Tensor, blurred: Tensor, dim: int) -> Tensor:
    """Crete's b_F along `dim`: the share of neighbour variation that survives the box blur."""
    d_f = grey.diff(dim=dim).abs()
    d_b = blurred.diff(dim=dim).abs()
    s_f = d_f.flatten(1).sum(1)
    s_v = (d_f - d_b).clamp_min(0.0).flatten(1).sum(1)
    return 1.0 - s_v / s_f.clamp_min(torch.finfo(s_f.dtype).tiny)


def blurriness(img: Tensor) -> Tensor:
    """Crete et al. (2007) no-reference blur in [0, 1], (N,); higher is blurrier.

    Blur the grey image with a 9-tap box vertically and horizontally (replicate padding, so the
    blurred image has the input's size and no artificial border edge), sum the neighbour
    differences D_F and the lost variation V = max(0, D_F − D_B) over every vertical
    (horizontal) neighbour pair, b = (s_F − s_V)/s_F, and take the larger direction. Written
    as 1 − s_V/s_F, a constant image (s_F = 0) scores 1: nothing left to blur.
    """
    grey = to_grey(img)
    ver = F.avg_pool2d(F.pad(grey, (0, 0, 4, 4), mode="replicate"), (9, 1), stride=1)
    hor = F.avg_pool2d(F.pad(grey, (4, 4, 0, 0), mode="replicate"), (1, 9), stride=1)
    return torch.maximum(_blur_retained(grey, ver, 2), _blur_retained(grey, hor, 3))


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def sharpness(img: Tensor, top: int = 1000, decay: float = 0.01) -> Tensor:
    """Maximum local variation sharpness (Bahrami & Kot 2014), as in SPEC §6, (N,).

    Per pixel of the grey image, the largest absolute difference to its 8 neighbours (replicate
    padding: a border pixel compares only with neighbours inside the image). The `top` largest
    (all pixels if fewer), in descending order, are weighted by exp(−decay·i), i = 0, 1, …, and
    the score is the RMS of the weighted values. A constant image scores 0.
    """
    grey = to_grey(img)
    h, w = grey.shape[-2:]
    pad = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    shifted = [pad[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in _NEIGHBOURS]
    mlv = torch.stack([(grey - s).abs() for s in shifted]).amax(0).flatten(1)  # (N, H·W)
    k = min(top, mlv.shape[1])
    largest = mlv.topk(k, dim=1).values  # descending
    weights = torch.exp(-decay * torch.arange(k, device=mlv.device, dtype=mlv.dtype))
    return (weights * largest).square().mean(1).sqrt()


def blur_sharp_ratio(img: Tensor) -> Tensor:
    """r = B/S (Shi et al. §4.3), the quantity the automatic stop watches, (N,).

    A constant image gives 1/0 = inf.
    """
    return blurriness(img) / sharpness(img)


# ---------------------------------------------------------------- automatic stopping


def autostop_delta(ratios: Tensor, t: int, n: int) -> Tensor:
    """Shi Eq. 8 at iteration t, on the device: |mean(r[t−n..t−1]) − mean(r[t−2n..t−n−1])|, 0-d.

    `ratios` holds r(0), r(1), … (at least t values); defined for t ≥ 2n.
    """
    if t < 2 * n or t > ratios.shape[0]:
        raise ValueError(f"Δr({t}) needs 2n = {2 * n} ≤ t ≤ len(ratios) = {ratios.shape[0]}")
    return (ratios[t - n : t].mean() - ratios[t - 2 * n : t - n].mean()).abs()


def first_autostop(ratios: Tensor, n: int = 100, eps: float = 0.01) -> int | None:
    """Host-side Eq. 8 over a whole recorded series: the first t with Δr(t) < eps, or None.

    t runs over the series' own indices 2n … T−1 (so the output at t exists); window means come
    from one float64 cumulative sum. NaN or inf ratios never satisfy the test.
    """
    r = ratios.detach().to("cpu", torch.float64).flatten()
    total = r.shape[0]
    if total <= 2 * n:
        return None
    c = torch.cat([r.new_zeros(1), r.cumsum(0)])
    t = torch.arange(2 * n, total)
    delta = ((c[t] - 2 * c[t - n] + c[t - 2 * n]) / n).abs()
    hits = torch.nonzero(delta < eps)
    return int(t[hits[0, 0]]) if hits.numel() else None


# ---------------------------------------------------------------- Chakrabarty & Maji


def trajectory_divergence(t1: Tensor, t2: Tensor) -> Tensor:
    """C&M §2: ε(i) = Σ over pixels (T1(i) − T2(i))² for trajectories shaped (T, …), (T,)."""
    return (t1 - t2).square().flatten(1).sum(1)


def amplitude_spectrum_1d(signal: Tensor) -> Tensor:
    """Amplitudes Ã_k, k = 0 … L//2, of a real signal (…, L), from its DFT, (…, L//2 + 1).

    Scaled so a·sin(2πkt/L + φ) with integer 0 < k < L/2 gives Ã_k = a: 2|X_k|/L; the DC and
    (for even L) Nyquist bins have no mirror image and use |X_k|/L, so a constant a gives a.
    """
    length = signal.shape[-1]
    mag: Tensor = torch.fft.rfft(signal, dim=-1).abs()
    scale = torch.full((mag.shape[-1],), 2.0 / length, device=mag.device, dtype=mag.dtype)
    scale[0] = 1.0 / length
    if length % 2 == 0:
        scale[-1] = 1.0 / length
    return mag * scale


def amplitude_error(output: Tensor, target: Tensor, freqs: Sequence[int]) -> Tensor:
    """C&M §3.1: SE(k) = (Ã_k(output) − A_k(target))² at each k in `freqs`, (…, len(freqs))."""
    diff = amplitude_spectrum_1d(output) - amplitude_spectrum_1d(target)
    # Integer indexing per k: an index tensor would be copied from the host every call.
    return torch.stack([diff[..., k] for k in freqs], dim=-1).square()


def first_convergence(se: Tensor, delta: float = 0.01, stay: bool = False) -> Tensor:
    """Host-side: per frequency, the first row of an SE series (T, K) with SE ≤ δ; −1 if never.

    C&M: k "has converged at t if SE(k) ≤ δ after t iterations". Default: the first crossing.
    With `stay`, the first row from which SE stays ≤ δ to the end of the series. Rows are
    indices into the series; map them to iterations if it was recorded at a stride. (K,) int64.
    """
    below = (se.detach().cpu() <= delta).long()
    if stay:  # below from t to the end: a reversed running product
        below = below.flip(0).cumprod(0).flip(0)
    first = below.argmax(0)
    return torch.where(below.any(0), first, torch.full_like(first, -1))


def radial_power_spectrum(img: Tensor) -> Tensor:
    """Radially averaged power |F|² of the grey image, (N, min(H, W)//2 + 1).

    Bin r holds the frequencies whose distance from zero rounds to r (index units); corners
    beyond min(H, W)//2 + ½ are dropped. The FFT is orthonormal, so Σ|F|² = Σ pixel².
    """
    grey = to_grey(img)
    h, w = grey.shape[-2:]
    power = torch.fft.fft2(grey, norm="ortho").abs().square().flatten(1)
    index, inv_count = _radial_bins(h, w, power.device, power.dtype)
    return _ring_mean(power, index, inv_count)


def power_spectrum_error(output: Tensor, target: Tensor, eps: float = 1e-10) -> Tensor:
    """C&M Fig. 4/5: per radius, |log(P_out + eps) − log(P_target + eps)|, (N, R).

    Stacked over iterations this is the iterations × frequency error image; `eps` keeps empty
    power finite.
    """
    p_out, p_tgt = radial_power_spectrum(output), radial_power_spectrum(target)
    return (torch.log(p_out + eps) - torch.log(p_tgt + eps)).abs()
