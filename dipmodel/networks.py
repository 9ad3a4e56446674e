"""The networks of both papers (Chakrabarty & Maji 2019 §2–3; Shi et al. 2022 §3–5).

Each is built from a `NetConfig`, with the fixed input it is fitted from.

Every network is a `DIPNet`: ``net(net.make_input(generator))`` is one output, batch 1.
Images come out as (1, C, H, W) through a sigmoid, in [0, 1]; the 1-D networks return
(1, C, L) with no final nonlinearity, because their targets (e.g. sin(2π·5t) + sin(2π·50t))
lie in [−2, 2].

Conventions:
- ``depth`` counts the hidden layers (or scales, or upsampling steps) of ``width`` units;
  every network ends with one more layer that projects to the output channels.
- Every convolution is a `LipschitzConv` (a plain convolution when ``lam`` is None), so one
  config switches the whole network to Shi et al.'s constrained layers. A conv followed by a
  normalisation has no bias: the mean subtraction would remove it, the norm has its own.
- 3-wide convolutions pad by reflection, so the coarsest resolution must be ≥ 2 pixels:
  sides must be multiples of ``net.multiple`` and, for the multi-scale networks, at least
  twice that (batch norm also needs more than one value per channel); `build_network`
  raises ValueError otherwise.
- Inputs: ``in_channels`` channels of noise for the convolutional networks; a noise vector
  of ``width`` features for the fully connected ones; the (x, y) pixel grid for ReLUNet.
  ``input`` chooses the noise: "noise", uniform in [0, 0.1] (Shi et al. §3.2 and §5), or
  "fourier", the released scripts' input: sin and cos of the same phases 2π·u, u ~ U[0, 1),
  the first half of the channels sin, the second half cos (`fourier_input`). ReLUNet's grid
  is not noise, so it refuses "fourier".
- The final projection to the output channels (the "head") is bounded by λ only with
  ``bound_head=True``; by default it is a plain convolution, as the authors' Decoder
  (code/models/decoder.py) leaves its 1×1 output conv unbounded.
- ``up_sigma`` is one σ for every Gaussian upsampling layer or a tuple with one σ per
  upsampling layer, in the order the forward pass applies them (coarsest first), as the
  authors' Decoder (0.1, 0.1, 0.1, 0.5, 0.5); `upsampling_layers` says how many there are.
- The Deep Decoder (Heckel & Hand 2019) has no 3-wide convolutions: only 1×1 convolutions,
  upsampling and normalisation, so it needs sides that are multiples of 2^(depth−1) only; its
  noise input has ``width`` channels, as theirs (``in_channels`` does not apply).
- The fully connected networks (DIP-Linear, DIP-Linear-1D) have no convolutions and no
  spatial dimensions: ``lam`` raises ValueError for them, ``norm`` does not apply. ReLUNet
  is a plain MLP and takes no normalisation either (``lam`` does apply to it).
- ``lam`` is None (no bound) or positive: 0, a negative value or NaN raise ValueError when the
  config is made, so a manifest that sets one fails validation instead of every fit.
- ``norm`` "auto" (the default) follows ``lam``: Lipschitz normalisation with a bound (batch norm's
  division by the batch std would undo it; Shi et al. 2022, Eq. 5), batch norm without one.
- The config knows the output shapes its network can produce (`NetConfig.side_multiple`,
  `NetConfig.check_out_shape`), so callers crop and check without building a network.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from dipmodel.layers import (
    NORM_KINDS,
    UPSAMPLE_KINDS,
    LipschitzConv,
    Upsample,
    make_norm,
)

# every network, with the (width, depth) the papers train it at, which it gets when NetConfig leaves them at 0
PAPER_SIZES: dict[str, tuple[int, int]] = {
    "encoder_decoder": (128, 5),
    "encoder_decoder_skip": (128, 5),
    "decoder": (128, 5),
    "convnet": (128, 5),
    "dip_linear": (128, 5),  # C&M also use width 2048
    "relunet": (256, 10),
    "dip_conv_1d": (256, 10),
    "dip_linear_1d": (256, 10),  # C&M also use width 4096 and depth 24
    "deep_decoder": (64, 6),  # Heckel & Hand use k = 64 or 128 channels
}
NETWORK_NAMES = tuple(PAPER_SIZES)
FULLY_CONNECTED = ("dip_linear", "dip_linear_1d")
ONE_D = ("dip_conv_1d", "dip_linear_1d")
NOISE_SCALE = 0.1  # input noise is uniform in [0, 0.1] (Shi et al. §5)
INPUT_KINDS = ("noise", "fourier")  # the paper text's uniform noise; the released scripts' Fourier input


@dataclass
class NetConfig:
    """Which network, and its sizes. ``width``/``depth`` left at 0 become the network's paper
    sizes (`PAPER_SIZES`), so ``NetConfig(name=...)`` alone gives the papers' sizes, and
    ``asdict`` records the sizes actually used.
    """

    name: str
    in_channels: int = 32
    out_channels: int = 3
    width: int = 0  # 0: the paper width of this network
    depth: int = 0  # 0: the paper depth
    upsample: str = "bilinear"
    up_sigma: float | tuple[float, ...] = 0.5  # one σ for all Gaussian upsamplings, or one per layer
    norm: str = "auto"  # "auto": "lipschitz" when lam is set, else "batch"
    lam: float | None = None
    sn_method: str = "gram"  # how σ(W) is found: gram (exact, fast), svd (slow), power
    skip_channels: int = 4
    negative_slope: float = 0.01
    input: str = "noise"  # "noise": uniform [0, 0.1]; "fourier": the released scripts' sin/cos input
    bound_head: bool = False  # bound the final projection conv by λ too (the authors' code does not)
    detach_sigma: bool = False  # divide by max(1, σ/λ) held constant in backward (the authors' code)

    def __post_init__(self) -> None:
        if self.name not in NETWORK_NAMES:
            raise ValueError(f"unknown network {self.name!r}; valid names: {', '.join(NETWORK_NAMES)}")
        width, depth = PAPER_SIZES[self.name]
        self.width = self.width or width
        self.depth = self.depth or depth
        if self.norm == "auto":
            self.norm = "batch" if self.lam is None else "lipschitz"
        for field in ("in_channels", "out_channels", "width", "depth", "skip_channels"):
            if getattr(self, field) < 1:
                raise ValueError(f"NetConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"unknown norm kind {self.norm!r}; allowed: {', '.join(NORM_KINDS)}")
        if self.upsample not in UPSAMPLE_KINDS:
            raise ValueError(f"unknown upsample kind {self.upsample!r}; allowed: {', '.join(UPSAMPLE_KINDS)}")
        if self.lam is not None and not self.lam > 0:  # NaN too; inf is allowed: no bound (LipschitzConv)
            raise ValueError(f"lam must be positive (or null for no bound), got {self.lam}")
        if self.name in FULLY_CONNECTED and self.lam is not None:
            raise ValueError(f"lam bounds convolutions; {self.name} has none (use lam=None)")
        if self.name == "dip_conv_1d" and self.depth % 2:
            raise ValueError(f"dip_conv_1d needs an even depth (half down, half up), got {self.depth}")
        for field in ("bound_head", "detach_sigma"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"NetConfig.{field} must be true or false, got {getattr(self, field)!r}")
        self._check_input()
        self._check_up_sigma()

    def _check_input(self) -> None:
        if self.input not in INPUT_KINDS:
            raise ValueError(f"NetConfig.input must be one of {', '.join(INPUT_KINDS)}, got {self.input!r}")
        if self.input == "fourier":
            if self.name == "relunet":
                raise ValueError(
                    "NetConfig.input='fourier' does not apply to relunet: its input is the (x, y) "
                    "pixel grid, not noise (use input='noise')"
                )
            channels, field = input_channels(self)
            if channels % 2:
                raise ValueError(
                    f"NetConfig.input='fourier' needs an even number of input channels (half sin, "
                    f"half cos), got {field}={channels}"
                )

    def _check_up_sigma(self) -> None:
        sigmas = self.up_sigma if isinstance(self.up_sigma, (list, tuple)) else (self.up_sigma,)
        for sigma in sigmas:
            if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
                raise ValueError(f"NetConfig.up_sigma must be a number or a list of numbers, got {sigma!r}")
            if not (math.isfinite(sigma) and sigma >= 0):
                raise ValueError(f"NetConfig.up_sigma must be finite and >= 0, got {sigma!r}")
        if isinstance(self.up_sigma, (list, tuple)):
            self.up_sigma = tuple(float(s) for s in self.up_sigma)  # a tuple: hashable, asdict-able
            layers = upsampling_layers(self)
            if len(self.up_sigma) != layers:
                raise ValueError(
                    f"NetConfig.up_sigma gives {len(self.up_sigma)} value(s) but {self.name} "
                    f"(depth {self.depth}) has {layers} upsampling layers: give one σ per layer "
                    "or a single σ"
                )

    def for_image(self, channels: int) -> NetConfig:
        """This configuration with as many output channels as the fitted image has (1 for grey or
        a 1-D signal, 3 for RGB): a manifest plans networks before any image is read."""
        return replace(self, out_channels=channels)

    def side_multiple(self) -> int:
        """What output sides must be multiples of: 2 per down/upsampling scale (callers crop to it)."""
        if self.name in ("decoder", "encoder_decoder", "encoder_decoder_skip"):
            return 2**self.depth
        if self.name == "dip_conv_1d":
            return 2 ** (self.depth // 2)
        if self.name == "deep_decoder":
            return 2 ** (self.depth - 1)
        return 1

    def min_side(self) -> int:
        """The smallest output side: 3-wide reflection-padded convs need a coarsest side of 2 pixels;
        the Deep Decoder's 1x1 convs need one; the fully connected networks and ReLUNet any."""
        if self.name == "deep_decoder":
            return self.side_multiple()
        if self.name in (*FULLY_CONNECTED, "relunet"):
            return 1
        return 2 * self.side_multiple()

    def check_out_shape(self, out_shape: tuple[int, ...]) -> None:
        """Raise a ValueError naming what is wrong when the network cannot produce `out_shape`:
        (C, H, W) for images, (C, L) for signals, C = out_channels, sides the multiple and minimum."""
        rank = 2 if self.name in ONE_D else 3
        if len(out_shape) != rank:
            kind = "(C, L)" if rank == 2 else "(C, H, W)"
            raise ValueError(f"{self.name} outputs {kind}, got out_shape {out_shape}")
        if out_shape[0] != self.out_channels:
            raise ValueError(f"out_shape has {out_shape[0]} channels but out_channels={self.out_channels}")
        multiple, minimum = self.side_multiple(), self.min_side()
        if any(s % multiple or s < minimum for s in out_shape[1:]):
            raise ValueError(
                f"{self.name} needs sides that are multiples of {multiple} and at least {minimum}, "
                f"got {'x'.join(map(str, out_shape[1:]))}"
            )

    def layer_sigmas(self) -> tuple[float, ...]:
        """The σ of each upsampling layer, in forward order (coarsest first)."""
        if isinstance(self.up_sigma, tuple):
            return self.up_sigma
        return (self.up_sigma,) * upsampling_layers(self)


# ---------------------------------------------------------------- building blocks


def upsampling_layers(cfg: NetConfig) -> int:
    """How many upsampling layers the network has: the length a per-layer ``up_sigma`` needs."""
    if cfg.name in ("decoder", "encoder_decoder", "encoder_decoder_skip"):
        return cfg.depth
    if cfg.name == "dip_conv_1d":
        return cfg.depth // 2
    if cfg.name == "deep_decoder":
        return cfg.depth - 1
    return 0  # convnet, the fully connected networks, relunet


def input_channels(cfg: NetConfig) -> tuple[int, str]:
    """Channels (features) of the network's noise input, and the field that sets them."""
    if cfg.name in ("deep_decoder", *FULLY_CONNECTED):
        return cfg.width, "width"
    return cfg.in_channels, "in_channels"


def conv(
    cfg: NetConfig,
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    dims: int = 2,
    bias: bool = True,
    head: bool = False,
) -> LipschitzConv:
    """A convolution bounded by the config's λ (plain when λ is None, and for the head, the
    final projection to the output channels, unless ``cfg.bound_head``)."""
    lam = cfg.lam if cfg.bound_head or not head else None
    return LipschitzConv(in_ch, out_ch, kernel, stride, dims, lam, cfg.sn_method, bias, cfg.detach_sigma)


def conv_block(
    cfg: NetConfig, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dims: int = 2
) -> nn.Sequential:
    """conv → norm → LeakyReLU, the unit every convolutional DIP is made of."""
    return nn.Sequential(
        conv(cfg, in_ch, out_ch, kernel, stride, dims, bias=cfg.norm == "none"),
        make_norm(cfg.norm, out_ch, dims),
        nn.LeakyReLU(cfg.negative_slope),
    )


def uniform_noise(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """The fixed DIP input: uniform in [0, 0.1]."""
    return NOISE_SCALE * torch.rand(shape, generator=generator)


def fourier_input(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """The released scripts' input: phases φ = 2π·u, u ~ U[0, 1), for half the channels (dim 1);
    channels [0, C/2) are sin φ and [C/2, C) cos φ of the same phases, so channel c and
    c + C/2 lie on the unit circle. Their ``get_noise(32, 'fourier', ..., var=1)``."""
    if shape[1] % 2:
        raise ValueError(f"a Fourier input needs an even number of channels, got {shape[1]}")
    phase = 2 * math.pi * torch.rand((shape[0], shape[1] // 2, *shape[2:]), generator=generator)
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1)


def noise_input(cfg: NetConfig, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """The fixed input of a noise-driven network, of the kind ``cfg.input`` names."""
    if cfg.input == "fourier":
        return fourier_input(shape, generator)
    return uniform_noise(shape, generator)


def mlp(cfg: NetConfig, out_features: int) -> nn.Sequential:
    """depth × (linear width → width, LeakyReLU), then linear to out_features; He initialised."""
    layers: list[nn.Module] = []
    for _ in range(cfg.depth):
        layers += [nn.Linear(cfg.width, cfg.width), nn.LeakyReLU(cfg.negative_slope)]
    layers.append(nn.Linear(cfg.width, out_features))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class DIPNet(nn.Module):
    """A network together with the fixed input it is fitted from (batch 1)."""

    multiple: int  # sides must be multiples of this
    body: nn.Module

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.cfg, self.out_shape = cfg, tuple(out_shape)

    def make_input(self, generator: torch.Generator) -> Tensor:
        """The fixed input this network is fitted from, for its out_shape, batch 1."""
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


# ---------------------------------------------------------------- image networks


class Decoder(DIPNet):
    """Shi et al.'s default Decoder (Shi et al. 2022 §4).

    noise at H/2^depth → 2 convs → depth × (up ×2, 2 convs) → 1×1 conv to C → sigmoid.
    With λ set, the 2 + 2·depth 3×3 convs are bounded; the 1×1 head only with ``bound_head``.
    """

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...], upsampling: bool = True) -> None:
        super().__init__(cfg, out_shape)
        self.multiple = cfg.side_multiple()  # 1 for the ConvNet, which does not upsample
        w = cfg.width
        layers: list[nn.Module] = [conv_block(cfg, cfg.in_channels, w), conv_block(cfg, w, w)]
        sigmas = cfg.layer_sigmas()
        for i in range(cfg.depth):
            if upsampling:
                layers.append(Upsample(cfg.upsample, 2, sigmas[i]))
            layers += [conv_block(cfg, w, w), conv_block(cfg, w, w)]
        layers += [conv(cfg, w, cfg.out_channels, 1, head=True), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def make_input(self, generator: torch.Generator) -> Tensor:
        _, h, w = self.out_shape
        return noise_input(self.cfg, (1, self.cfg.in_channels, h // self.multiple, w // self.multiple), generator)


class ConvNet(Decoder):
    """The Decoder without upsampling: the same conv blocks, noise input at full resolution."""

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, out_shape, upsampling=False)


class DeepDecoder(DIPNet):
    """Heckel & Hand's (2019) under-parameterised Deep Decoder (Heckel & Hand 2019, as Shi et al. 2022 §5 compare it).

    noise (width channels) at H/2^(depth−1) → depth × (1×1 conv, up ×2 except in the last
    block, ReLU, channel normalisation) → 1×1 conv to C → sigmoid. Channel normalisation is
    batch norm over the single image (mean and std per channel over space, learned scale and
    bias), as in their code; the convolutions before it carry no bias. With 1×1 convolutions
    only, no layer mixes neighbouring pixels: all spatial structure comes from the fixed
    upsampling, which is why so few weights (``count_parameters``) cannot fit the noise.
    """

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, out_shape)
        self.multiple = cfg.side_multiple()
        w = cfg.width
        layers: list[nn.Module] = []
        sigmas = cfg.layer_sigmas()
        for i in range(cfg.depth):
            layers.append(conv(cfg, w, w, 1, bias=cfg.norm == "none"))
            if i < cfg.depth - 1:
                layers.append(Upsample(cfg.upsample, 2, sigmas[i]))
            layers += [nn.ReLU(), make_norm(cfg.norm, w, 2)]
        layers += [conv(cfg, w, cfg.out_channels, 1, head=True), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def make_input(self, generator: torch.Generator) -> Tensor:
        _, h, w = self.out_shape
        return noise_input(self.cfg, (1, self.cfg.width, h // self.multiple, w // self.multiple), generator)


class Scale(nn.Module):
    """One scale of the encoder-decoder: down (stride 2), the coarser scales, up, decode.

    With a skip branch, its 1×1 features at this scale are concatenated before decoding.
    """

    def __init__(self, cfg: NetConfig, in_ch: int, inner: nn.Module, skip: bool, sigma: float) -> None:
        super().__init__()
        w = cfg.width
        self.down = nn.Sequential(conv_block(cfg, in_ch, w, 3, stride=2), conv_block(cfg, w, w))
        self.inner = inner
        self.up = Upsample(cfg.upsample, 2, sigma)
        self.skip = conv_block(cfg, in_ch, cfg.skip_channels, 1) if skip else None
        decode_in = w + (cfg.skip_channels if skip else 0)
        self.decode = nn.Sequential(conv_block(cfg, decode_in, w), conv_block(cfg, w, w, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(self.inner(self.down(x)))
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.decode(y)


class EncoderDecoder(DIPNet):
    """Ulyanov et al.'s DIP (Shi Fig. 2): ``depth`` scales, optional skip connections at each."""

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...], skip: bool) -> None:
        super().__init__(cfg, out_shape)
        self.multiple = cfg.side_multiple()
        net: nn.Module = nn.Identity()
        sigmas = cfg.layer_sigmas()  # forward order: the coarsest scale's upsampling runs first
        for level in reversed(range(cfg.depth)):  # build from the coarsest scale outwards
            in_ch = cfg.in_channels if level == 0 else cfg.width
            net = Scale(cfg, in_ch, net, skip, sigmas[cfg.depth - 1 - level])
        self.body = nn.Sequential(net, conv(cfg, cfg.width, cfg.out_channels, 1, head=True), nn.Sigmoid())

    def make_input(self, generator: torch.Generator) -> Tensor:
        return noise_input(self.cfg, (1, self.cfg.in_channels, *self.out_shape[1:]), generator)


class DIPLinear(DIPNet):
    """Chakrabarty & Maji's DIP-Linear-w, for images or (``image=False``) 1-D signals.

    Fully connected layers, so no spatial structure is shared between pixels:
    noise (1, width) → depth × (linear, LeakyReLU) → linear to C·H·W (or C·L). Images go
    through a sigmoid; signals keep the linear output.
    """

    multiple = 1

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...], image: bool = True) -> None:
        super().__init__(cfg, out_shape)
        self.image = image
        self.body = mlp(cfg, math.prod(self.out_shape))

    def make_input(self, generator: torch.Generator) -> Tensor:
        return noise_input(self.cfg, (1, self.cfg.width), generator)

    def forward(self, z: Tensor) -> Tensor:
        out = self.body(z).view(1, *self.out_shape)  # (1, C·H·W) → (1, C, H, W), or (1, C, L)
        return torch.sigmoid(out) if self.image else out


class ReLUNet(DIPNet):
    """An MLP from pixel coordinates (x, y) ∈ [0, 1]² to intensities, evaluated at every pixel.

    Written as 1×1 convolutions over the coordinate grid, which is the per-pixel MLP exactly.
    depth × (width units, ReLU) → C, sigmoid. No normalisation: it is a plain MLP.
    """

    multiple = 1

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, out_shape)
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [conv(cfg, 2 if i == 0 else cfg.width, cfg.width, 1), nn.ReLU()]
        layers += [conv(cfg, cfg.width, cfg.out_channels, 1, head=True), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def make_input(self, generator: torch.Generator) -> Tensor:
        """The (1, 2, H, W) coordinate grid, channel 0 = x (columns), 1 = y; no randomness."""
        _, h, w = self.out_shape
        y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        return torch.stack([x, y])[None]


# ---------------------------------------------------------------- 1-D networks


class DIPConv1D(DIPNet):
    """C&M's DIP-Conv: depth/2 stride-2 conv layers down, depth/2 (up ×2, conv) layers up,
    all of width channels with norm and LeakyReLU, then a 1×1 conv to C; linear output.
    """

    def __init__(self, cfg: NetConfig, out_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, out_shape)
        half = cfg.depth // 2
        self.multiple = cfg.side_multiple()
        w = cfg.width
        layers: list[nn.Module] = []
        for i in range(half):
            layers.append(conv_block(cfg, cfg.in_channels if i == 0 else w, w, 3, stride=2, dims=1))
        for sigma in cfg.layer_sigmas():  # half of them
            layers += [Upsample(cfg.upsample, 2, sigma, dims=1), conv_block(cfg, w, w, dims=1)]
        layers.append(conv(cfg, w, cfg.out_channels, 1, dims=1, head=True))
        self.body = nn.Sequential(*layers)

    def make_input(self, generator: torch.Generator) -> Tensor:
        return noise_input(self.cfg, (1, self.cfg.in_channels, self.out_shape[1]), generator)


# ---------------------------------------------------------------- factory


def build_network(cfg: NetConfig, out_shape: tuple[int, ...]) -> DIPNet:
    """The network ``cfg.name`` producing ``out_shape``: (C, H, W) for images, (C, L) for signals."""
    builders: dict[str, Callable[[], DIPNet]] = {
        "encoder_decoder": lambda: EncoderDecoder(cfg, out_shape, skip=False),
        "encoder_decoder_skip": lambda: EncoderDecoder(cfg, out_shape, skip=True),
        "decoder": lambda: Decoder(cfg, out_shape),
        "convnet": lambda: ConvNet(cfg, out_shape),
        "dip_linear": lambda: DIPLinear(cfg, out_shape),
        "relunet": lambda: ReLUNet(cfg, out_shape),
        "dip_conv_1d": lambda: DIPConv1D(cfg, out_shape),
        "dip_linear_1d": lambda: DIPLinear(cfg, out_shape, image=False),
        "deep_decoder": lambda: DeepDecoder(cfg, out_shape),
    }
    if cfg.name not in builders:
        raise ValueError(f"unknown network {cfg.name!r}; valid names: {', '.join(NETWORK_NAMES)}")
    cfg.check_out_shape(tuple(out_shape))
    return builders[cfg.name]()


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
