"""Spectral-bias metrics: pure tensor functions, cheap enough to run at every iteration of a fit.

Images are float tensors in [0, 1] shaped (N, C, H, W), or (C, H, W) read as N = 1; image
metrics return one value per image, (N,), or (N, bands). Everything stays on the inputs' device
and none of the per-iteration metrics reads a tensor value on the host (no `.item()`, no
data-dependent shapes or branches), so a GPU fit loop never waits on them. Callers wrap them in
`torch.no_grad()`. The host-side helpers (`first_autostop`, `first_convergence`) are for
post-hoc analysis of recorded series.

Conventions (each documented at its function). FBC, blurriness and sharpness follow the
functions released with Shi et al. (2022, "Measuring and controlling the spectral bias of the
deep image prior") exactly, border handling and constants included, so their numbers can be
compared with the paper's:
- Grey: Shi's metrics see `shi_grey`, 0.2989 R + 0.5870 G + 0.1140 B clipped to [0, 1] (a
  one-channel image is used as it is). `to_grey`, ITU-R 601 luma (0.299, 0.587, 0.114) without
  clipping, prepares grey fits and feeds the radial power spectrum (Chakrabarty & Maji).
- Frequencies are measured in FFT index units from the zero frequency, so the centred layout
  (fftshift) of the papers is used without shifting any data: ring tables are built directly in
  the FFT's own layout (fftshift puts zero frequency at (H//2, W//2) for odd and even sizes).
- FBC: H = |F{out}| / (|F{target}| + 1e-8) clipped to [0, 1]; ring radii are int(W/2)·k/N,
  k = 1 … N (half the width, whatever the height); ring k holds r_{k−1} < d ≤ r_k (ring 1
  includes the zero frequency); bins beyond int(W/2) are ignored.
- Blurriness (Crete et al. 2007): 9-tap box blur along each axis; only neighbour pairs inside
  the authors' crop are summed, whose blur windows all lie in the image (so padding never
  matters); the larger of the two axes' scores. A constant image scores 1 (theirs: NaN).
- Sharpness (maximum local variation, Bahrami & Kot 2014): on the interior rows/columns
  2 … side−2, zeros outside it, the signed max(neighbour) − centre; the two largest values are
  dropped and ranks 2 … 1000 weighted by exp(−0.01·rank), then the RMS (999 values).
- Automatic stop (Shi Eq. 8): see `autostop_delta` for our windows and the authors'.
- Radial power spectrum: bins by the nearest integer radius, 0 … min(H, W)//2; orthonormal FFT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- shared pieces


def _batched(x: Tensor) -> Tensor:
    """(C, H, W) → (1, C, H, W); a 4-D batch passes through."""
    return x.unsqueeze(0) if x.dim() == 3 else x


def _three_channels(x: Tensor, name: str) -> bool:
    """True for a 3-channel batch, False for a 1-channel one; other counts are an error."""
    channels = x.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"{name} expects 1 or 3 channels, got {channels}")
    return channels == 3


def to_grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma (0.299, 0.587, 0.114), (N, 1, H, W); a 1-channel batch is returned as is.

    The grey of grey fits (the Y of YCbCr) and of the radial power spectrum. Shi et al.'s
    metrics use `shi_grey` instead.
    """
    x = _batched(x)
    if not _three_channels(x, "to_grey"):
        return x
    # Scalar weights, not a weight tensor: building one would copy from the host every call.
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def shi_grey(x: Tensor) -> Tensor:
    """The grey of Shi et al.'s code, (N, 1, H, W): 0.2989 R + 0.5870 G + 0.1140 B, clipped to
    [0, 1]. A 1-channel batch is returned as is, unclipped (their functions take a 2-D grey image
    without converting it). FBC, blurriness and sharpness measure this grey.
    """
    x = _batched(x)
    if not _three_channels(x, "shi_grey"):
        return x
    return (0.2989 * x[:, 0:1] + 0.5870 * x[:, 1:2] + 0.1140 * x[:, 2:3]).clamp(0.0, 1.0)


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

    Shi et al.'s rings, computed on the host in float64 the way their code does, so a bin on an
    edge lands in the same ring: d = sqrt(fy² + fx²), radii r_k = int(W/2)·s_k with s the
    float64 linspace(1/bands, 1, bands); ring k holds r_{k−1} < d ≤ r_k (index `bands`:
    d > int(W/2), ignored).
    """
    radii = (w // 2) * np.linspace(1.0 / bands, 1.0, bands)
    dist = np.sqrt(_freq_radius2(h, w).flatten().numpy().astype(np.float64))
    index = (dist[:, None] > radii[None, :]).sum(1)  # radii passed
    return _ring_tables(torch.from_numpy(index), bands, device, dtype)


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

    As the authors' code computes it: H = |F{g(output)}| / (|F{g(target)}| + 1e-8) per
    frequency, g = `shi_grey`, clipped to [0, 1], then averaged within `bands` rings of the
    distance d from the zero frequency (index units): with r_k = int(W/2)·k/bands, ring k holds
    r_{k−1} < d ≤ r_k (ring 1 from d = 0). The unit is half the WIDTH for any aspect ratio:
    bins with d > int(W/2) (corners; for a portrait image also the highest vertical
    frequencies) are ignored. An image so small that a ring is empty raises ValueError.
    """
    out_grey, tgt_grey = shi_grey(output), shi_grey(target)
    h, w = out_grey.shape[-2:]
    out_amp = torch.fft.fft2(out_grey).abs().flatten(1)
    tgt_amp = torch.fft.fft2(tgt_grey).abs().flatten(1)
    ratio = (out_amp / (tgt_amp + 1e-8)).clamp(0.0, 1.0)
    index, inv_count = _fbc_rings(h, w, bands, ratio.device, ratio.dtype)
    return _ring_mean(ratio, index, inv_count)


def _blur_retained(grey: Tensor, blurred: Tensor, dim: int) -> Tensor:
    """Crete's b_F over the neighbour pairs along `dim` of two equal crops."""
    d_f = grey.diff(dim=dim).abs()
    d_b = blurred.diff(dim=dim).abs()
    s_f = d_f.flatten(1).sum(1)
    s_v = (d_f - d_b).clamp_min(0.0).flatten(1).sum(1)
    return 1.0 - s_v / s_f.clamp_min(torch.finfo(s_f.dtype).tiny)


def blurriness(img: Tensor) -> Tensor:
    """Crete et al. (2007) no-reference blur in [0, 1], (N,); higher is blurrier.

    As Shi et al.'s code computes it on the grey g = `shi_grey` (H × W, 0-based indices): blur g
    with a 9-tap box along one axis; sum the neighbour differences D_F = |g(i+1) − g(i)| and the
    lost variation V = max(0, D_F − D_B), D_B the same difference of the blurred image, over
    the pairs (i, i+1) along that axis with i = 5 … n−7 (n the side along the axis), in the
    rows (columns) 6 … m−6 across it (m the other side); b = (s_F − s_V)/s_F, and the larger of
    the two axes. Their crops keep only blur windows inside the image, so padding never
    matters. Written as 1 − s_V/s_F, a constant image (s_F = 0) scores 1, nothing left to blur
    (theirs gives NaN), and so does an image with a side under 12 pixels, which has no pairs.
    """
    grey = shi_grey(img)
    h, w = grey.shape[-2:]
    # Zero-padded ("same") box blurs: index i of each is the window centred on pixel i.
    ver = F.avg_pool2d(F.pad(grey, (0, 0, 4, 4)), (9, 1), stride=1)
    hor = F.avg_pool2d(F.pad(grey, (4, 4, 0, 0)), (1, 9), stride=1)
    along_rows = (..., slice(5, h - 5), slice(6, w - 5))  # vertical pairs: rows 5 … h−6, cols 6 … w−6
    along_cols = (..., slice(6, h - 5), slice(5, w - 5))
    b_ver = _blur_retained(grey[along_rows], ver[along_rows], 2)
    b_hor = _blur_retained(grey[along_cols], hor[along_cols], 3)
    return torch.maximum(b_ver, b_hor)


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def sharpness(img: Tensor, top: int = 1000, decay: float = 0.01) -> Tensor:
    """Maximum local variation sharpness (Bahrami & Kot 2014) as Shi et al.'s code computes it, (N,).

    On the grey g = `shi_grey`, keep the interior P = rows 2 … H−2, columns 2 … W−2 (0-based;
    two lines dropped at the top and left, one at the bottom and right) and pad it with zeros.
    The map is the signed MLV(p) = max over the 8 neighbours q of P(q) − P(p) (a neighbour
    outside P counts as 0, so it never wins over an in-image one for images in [0, 1]).
    Sorted in descending order, the values of rank k = 2 … `top` (0-based: the two largest are
    dropped; fewer if P has under top + 1 pixels) are weighted by exp(−decay·k), and the score
    is the RMS of the weighted values: with their T = 1000, 999 values. A constant image
    scores 0.
    """
    grey = shi_grey(img)
    h, w = grey.shape[-2:]
    centre = grey[..., 2 : h - 1, 2 : w - 1]
    ih, iw = centre.shape[-2:]
    pad = F.pad(centre, (1, 1, 1, 1))  # zeros
    shifted = [pad[..., 1 + dy : 1 + dy + ih, 1 + dx : 1 + dx + iw] for dy, dx in _NEIGHBOURS]
    # max(q) − p equals max(q − p) exactly: rounding a subtraction is monotonic.
    mlv = (torch.stack(shifted).amax(0) - centre).flatten(1)  # (N, pixels of P)
    k = min(top + 1, mlv.shape[1])
    ranked = mlv.topk(k, dim=1).values[:, 2:]  # descending, ranks 2 … k−1
    weights = torch.exp(-decay * torch.arange(2, k, device=mlv.device, dtype=mlv.dtype))
    return (weights * ranked).square().mean(1).sqrt()


def blur_sharp_ratio(img: Tensor) -> Tensor:
    """r = B/S (Shi et al. §4.3), the quantity the automatic stop watches, (N,).

    A constant image gives 1/0 = inf.
    """
    return blurriness(img) / sharpness(img)


# ---------------------------------------------------------------- automatic stopping


def autostop_delta(ratios: Tensor, t: int, n: int) -> Tensor:
    """Shi Eq. 8 at iteration t, on the device: |mean(r[t−n..t−1]) − mean(r[t−2n..t−n−1])|, 0-d.

    `ratios` holds r(0), r(1), … (at least t values); defined for t ≥ 2n. Windows are
    inclusive index ranges. Ours: two adjacent windows of n values each just before t, the
    older r[t−2n..t−n−1], the newer r[t−n..t−1] (`DeviceRecord.add` in dipmodel/fit.py calls this
    over logged rows). The authors' denoising script (code/denoising.py) differs:
    at iteration i > 2n it compares the mean of r[i−2n..i−n−1] (n values) with the mean of
    r[i−n+1..i−1] (n − 1 values), leaving out r[i−n] (and r[i], as we do). We keep the two
    equal windows of Eq. 8.
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
