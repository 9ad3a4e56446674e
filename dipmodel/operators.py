"""Forward operators: the degradations of SPEC §5 and the model A in y = A(x*) + e.

Pure kernels (Lanczos taps, masks, low-pass noise, codecs) are plain functions; each operator
class is a thin `nn.Module` over them, holding masks and filters as buffers so `.to(device)`
moves them. `A` is what the loss sees (differentiable, stateless); `degrade` makes the
observation, reproducibly from the seed given at construction.

Conventions chosen where the papers are silent (each is documented at its function):
- Gaussian noise (denoise, low-frequency) is clipped to [0, 1] after it is added, as in
  Ulyanov et al.'s released code (`np.clip(img + noise, 0, 1)`); at large σ this makes the
  noise non-Gaussian and biased near black and white.
- Low-frequency noise: white noise through a Gaussian low-pass in the Fourier domain.
- JPEG: PIL's default chroma subsampling (4:2:0 for RGB).
- Super-resolution: y is PIL's Lanczos (a = 3) resize in float mode "F", clipped to [0, 1];
  A is Ulyanov's 'lanczos2' downsampler, which has 4·factor taps (see `lanczos_kernel`).
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

# ---------------------------------------------------------------- pure kernels


def lanczos_kernel(factor: int, support: int = 2) -> Tensor:
    """1-D Lanczos-`support` taps for downsampling by `factor`, normalised to sum 1.

    Taps sit at the high-resolution pixels within `support` low-resolution pixels of the
    low-resolution pixel's centre, which lies between pixels for even factors (the half-pixel
    phase) and on a pixel for odd ones. So an even factor gives 2·support·factor taps: for
    lanczos2 that is 4·factor, exactly what Ulyanov's Downsampler builds from its nominal
    `kernel_width = 4·factor + 1` with phase 0.5 (it drops one tap to centre the phase). An odd
    factor gives 2·support·factor − 1 taps (the two end taps would be zeros of the window).
    """
    taps = 2 * support * factor - factor % 2
    offsets = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2  # high-res pixels
    d = offsets / factor  # low-res pixels
    kernel = torch.sinc(d) * torch.sinc(d / support)
    return (kernel / kernel.sum()).float()


def lanczos_downsample(x: Tensor, kernel2d: Tensor, factor: int) -> Tensor:
    """Depthwise strided convolution with replicate padding: (N, C, H, W) → (N, C, H/f, W/f).

    The symmetric padding of (taps − factor)/2 puts each output on the centre of its
    factor × factor block, as Ulyanov's `preserve_size=True` does.
    """
    channels, taps = x.shape[1], kernel2d.shape[-1]
    pad = (taps - factor) // 2
    weight = kernel2d.to(x.dtype).expand(channels, 1, taps, taps)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(padded, weight, stride=factor, groups=channels)


def pil_resize(x: Tensor, height: int, width: int, resample: Image.Resampling) -> Tensor:
    """PIL resize of (N, C, H, W) to height × width, per channel in float mode "F" (no 8-bit
    rounding). Lanczos and bicubic lobes can overshoot, so the result is clipped to [0, 1]
    like any stored image."""
    n, c, h, w = x.shape
    planes = x.detach().float().cpu().reshape(n * c, h, w).numpy()
    out = [np.asarray(Image.fromarray(p).resize((width, height), resample)) for p in planes]
    y = torch.from_numpy(np.stack(out)).reshape(n, c, height, width)
    return y.clamp(0, 1).to(device=x.device, dtype=x.dtype)


def pil_lanczos_resize(x: Tensor, factor: int) -> Tensor:
    """PIL Lanczos resize by 1/factor: the super-resolution observation."""
    _, _, h, w = x.shape
    return pil_resize(x, h // factor, w // factor, Image.Resampling.LANCZOS)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Encode and decode each image with PIL's JPEG codec, in memory.

    Images are rounded to 8 bits first; mode "L" for one channel, "RGB" for three, with PIL's
    default chroma subsampling (4:2:0).
    """
    mode = {1: "L", 3: "RGB"}[x.shape[1]]
    pixels = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    decoded = []
    for img in pixels.permute(0, 2, 3, 1).numpy():  # (H, W, C)
        buffer = io.BytesIO()
        Image.fromarray(img.squeeze(-1) if mode == "L" else img).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded.append(np.asarray(Image.open(buffer).convert(mode)).reshape(img.shape))
    y = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return (y.to(x.dtype) / 255).to(x.device)


def center_mask(height: int, width: int, ratio: float) -> Tensor:
    """(1, 1, H, W) mask, 1 = known, with a centred square hole of area ≈ ratio·H·W.

    The side is round(sqrt(ratio·H·W)), clipped to each image dimension.
    """
    side = round(math.sqrt(ratio * height * width))
    hole_h, hole_w = min(side, height), min(side, width)
    top, left = (height - hole_h) // 2, (width - hole_w) // 2
    mask = torch.ones(1, 1, height, width)
    mask[..., top : top + hole_h, left : left + hole_w] = 0
    return mask


def bernoulli_mask(height: int, width: int, p: float, generator: torch.Generator) -> Tensor:
    """(1, 1, H, W) mask dropping each pixel (all channels together) with probability p."""
    return (torch.rand(1, 1, height, width, generator=generator) >= p).float()


def lowpass_noise(shape: tuple[int, ...], std: float, cutoff: float, generator: torch.Generator) -> Tensor:
    """Gaussian noise whose power lies at low spatial frequencies, with std exactly `std`.

    White noise is multiplied in the Fourier domain by exp(−½ (r / r_c)²), r the radial
    frequency in units of Nyquist and r_c = cutoff: a Gaussian rather than an ideal low-pass,
    so the spectrum has no hard edge. Then 1 − e⁻⁴ ≈ 98 % of the power lies below 2·cutoff.
    Each image is rescaled so its sample std over (C, H, W) is `std`: with few low-frequency
    modes the sample variance would otherwise scatter far from the expected one.
    """
    h, w = shape[-2:]
    white = torch.randn(shape, generator=generator)
    fy = torch.fft.fftfreq(h).abs()[:, None] / 0.5  # units of Nyquist
    fx = torch.fft.rfftfreq(w)[None, :] / 0.5
    gain = torch.exp(-0.5 * (fy**2 + fx**2) / cutoff**2)
    noise = torch.fft.irfft2(torch.fft.rfft2(white) * gain, s=(h, w))
    sample_std = noise.flatten(1).std(dim=1, correction=0).view(-1, *[1] * (len(shape) - 1))
    return noise * (std / sample_std)


# ---------------------------------------------------------------- operators


class Operator(nn.Module):
    """Base operator: identity A, observation y = A(x*) (clean fitting / enhancement).

    Subclasses override `A` and/or `_observe`; `degrade` hands `_observe` a fresh generator
    seeded from the construction seed, so observations are reproducible and stateless.
    """

    name = "clean"

    def __init__(self, image_shape: tuple[int, int, int], seed: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.seed = seed
        self.params: dict[str, Any] = {}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 - the forward model's usual name
        """Forward model applied to the network output; identity here."""
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """Adjoint of the (linear) A, by reverse-mode autodiff, so it is exact for every linear A."""
        zeros = torch.zeros(y.shape[0], *self.image_shape, device=y.device, dtype=y.dtype)
        pullback = torch.func.vjp(self.A, zeros)[1]
        return pullback(y)[0]

    @torch.no_grad()
    def degrade(self, clean: Tensor) -> Tensor:
        """Observation y = A(x*) + e of a (N, C, H, W) clean batch in [0, 1]."""
        if clean.dim() != 4 or tuple(clean.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name}: expected (N, {', '.join(map(str, self.image_shape))}) images, got {tuple(clean.shape)}"
            )
        return self._observe(clean, torch.Generator().manual_seed(self.seed))

    def _observe(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        return self.A(clean)


class DenoiseOperator(Operator):
    """Additive white Gaussian noise of std σ/255, clipped to [0, 1] as in Ulyanov's code."""

    name = "denoise"

    def __init__(self, image_shape: tuple[int, int, int], seed: int = 0, *, sigma: float) -> None:
        super().__init__(image_shape, seed)
        _check("sigma", sigma, _is_real(sigma) and 0 < sigma <= 255, "a number in (0, 255]")
        self.params = {"sigma": float(sigma)}

    def _observe(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(clean.shape, generator=generator)  # on the CPU: device-independent
        return (clean + self.params["sigma"] / 255 * noise.to(clean)).clamp(0, 1)


class LowFreqNoiseOperator(Operator):
    """Low-pass filtered Gaussian noise (C&M Fig. 2's failure case), clipped like denoise."""

    name = "lowfreq_noise"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        seed: int = 0,
        *,
        sigma: float = 25.0,
        cutoff: float = 0.1,
    ) -> None:
        super().__init__(image_shape, seed)
        _check("sigma", sigma, _is_real(sigma) and 0 < sigma <= 255, "a number in (0, 255]")
        ok = _is_real(cutoff) and 0 < cutoff <= 1
        _check("cutoff", cutoff, ok, "a fraction of Nyquist in (0, 1]")
        self.params = {"sigma": float(sigma), "cutoff": float(cutoff)}

    def _observe(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        std, cutoff = self.params["sigma"] / 255, self.params["cutoff"]
        noise = lowpass_noise(tuple(clean.shape), std, cutoff, generator)
        return (clean + noise.to(clean)).clamp(0, 1)


class JpegOperator(Operator):
    """JPEG compression artefacts at a given quality; A is the identity."""

    name = "jpeg"

    def __init__(self, image_shape: tuple[int, int, int], seed: int = 0, *, quality: int) -> None:
        super().__init__(image_shape, seed)
        _check("quality", quality, _is_int(quality) and 1 <= quality <= 95, "an integer in 1..95")
        self.params = {"quality": quality}

    def _observe(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        return jpeg_roundtrip(clean, self.params["quality"])


class InpaintOperator(Operator):
    """Pixels hidden by a binary mask m (1 = known): A(x) = m ⊙ x, y = m ⊙ x*."""

    name = "inpaint"
    mask: Tensor

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        seed: int = 0,
        *,
        kind: str,
        ratio: float | None = None,
        p: float | None = None,
    ) -> None:
        super().__init__(image_shape, seed)
        _, h, w = self.image_shape
        _check("kind", kind, kind in ("center", "bernoulli"), "'center' or 'bernoulli'")
        if kind == "center":
            _check("p", p, p is None, "unset for kind='center' (it is the Bernoulli drop rate)")
            ok = _is_real(ratio) and 0 < ratio < 1  # type: ignore[operator]
            ratio = float(_check("ratio", ratio, ok, "a hole/image area in (0, 1)"))
            mask = center_mask(h, w, ratio)
            self.params = {"kind": kind, "ratio": ratio}
        else:
            _check("ratio", ratio, ratio is None, "unset for kind='bernoulli' (use p)")
            p = 0.5 if p is None else p
            p = float(_check("p", p, _is_real(p) and 0 < p < 1, "a drop probability in (0, 1)"))
            mask = bernoulli_mask(h, w, p, torch.Generator().manual_seed(seed))
            self.params = {"kind": kind, "p": p}
        self.register_buffer("mask", mask)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return self.mask * x


class SuperResOperator(Operator):
    """y = PIL Lanczos downsampling by `factor`; A = differentiable Lanczos-2 downsampler."""

    name = "superres"
    kernel: Tensor

    def __init__(self, image_shape: tuple[int, int, int], seed: int = 0, *, factor: int) -> None:
        super().__init__(image_shape, seed)
        _, h, w = self.image_shape
        _check(
            "factor",
            factor,
            _is_int(factor) and factor >= 2 and h % factor == 0 and w % factor == 0,
            f"an integer ≥ 2 dividing the image size {h}×{w}",
        )
        k1 = lanczos_kernel(factor)
        self.register_buffer("kernel", torch.outer(k1, k1)[None, None])  # (1, 1, taps, taps)
        self.params = {"factor": factor}

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return lanczos_downsample(x, self.kernel, self.params["factor"])

    def _observe(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        return pil_lanczos_resize(clean, self.params["factor"])


# ---------------------------------------------------------------- data term and factory


def data_term(op: Operator, output: Tensor, y: Tensor) -> Tensor:
    """Mean squared residual of A(output) against y.

    For inpainting y = m ⊙ x*, so this is ‖m ⊙ (f − y)‖² / numel, Ulyanov's masked loss.
    """
    return (op.A(output) - y).square().mean()


_TASKS: dict[str, Callable[..., Operator]] = {
    "clean": Operator,
    "enhance": Operator,  # enhancement fits the clean image (SPEC §5); its name stays "clean"
    "denoise": DenoiseOperator,
    "lowfreq_noise": LowFreqNoiseOperator,
    "jpeg": JpegOperator,
    "inpaint": InpaintOperator,
    "superres": SuperResOperator,
}


@dataclass(frozen=True)
class TaskParam:
    """One degradation parameter as people set it: a manifest requires every one (no hidden
    default enters a fit key); `dip fit` offers it as ``--NAME`` and falls back on `default`."""

    name: str
    type: Any  # what a manifest accepts: float, int or a Literal of the allowed values
    default: Any  # the value `dip fit` uses when the option is not given; None: none
    help: str


_SIGMA = TaskParam("sigma", float, 25.0, "noise std on the 0-255 scale")
# The parameters of every task, in the order they are listed; the operators' keyword arguments.
TASK_PARAMS: dict[str, tuple[TaskParam, ...]] = {
    "clean": (),
    "enhance": (),
    "denoise": (_SIGMA,),
    "lowfreq_noise": (_SIGMA, TaskParam("cutoff", float, 0.1, "low-pass cutoff as a fraction of Nyquist")),
    "jpeg": (TaskParam("quality", int, 10, "JPEG quality 1-95"),),
    "inpaint": (
        TaskParam("kind", Literal["center", "bernoulli"], "center", "inpainting mask kind"),
        TaskParam("ratio", float, 0.25, "hole-to-image area ratio (kind center)"),
        TaskParam("p", float, 0.5, "fraction of pixels dropped (kind bernoulli)"),
    ),
    "superres": (TaskParam("factor", int, 4, "super-resolution factor"),),
}
INPAINT_AMOUNT = {"center": "ratio", "bernoulli": "p"}  # the parameter each inpainting mask kind takes


def needed_params(task: str, given: dict[str, Any]) -> list[str]:
    """The parameters a task takes with these settings: all of its own, except that an inpainting
    mask takes the amount of its kind only (a centre hole's ratio, a Bernoulli mask's p)."""
    if task == "inpaint":
        return ["kind", INPAINT_AMOUNT.get(given.get("kind", ""), "ratio")]
    return [p.name for p in TASK_PARAMS[task]]


def build_operator(task: str, image_shape: tuple[int, int, int], seed: int = 0, **params: Any) -> Operator:
    """Operator for `task` on (C, H, W) images; every name and value is checked here."""
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(_TASKS))}")
    shape = tuple(image_shape)
    _check(
        "image_shape",
        image_shape,
        len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape) and shape[0] in (1, 3),
        "(C, H, W) with C = 1 or 3",
    )
    signature = inspect.signature(_TASKS[task]).parameters
    allowed = {n: p for n, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for name in params:
        if name not in allowed:
            valid = ", ".join(allowed) or "none"
            raise ValueError(f"task {task!r} has no parameter {name!r}; valid parameters: {valid}")
    for name, p in allowed.items():
        if p.default is inspect.Parameter.empty and name not in params:
            raise ValueError(f"task {task!r} requires parameter {name!r}")
    return _TASKS[task](shape, seed, **params)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check(name: str, value: Any, ok: bool, expected: str) -> Any:
    """Raise a ValueError naming the parameter and its value unless `ok`; else pass it on."""
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: expected {expected}")
    return value
