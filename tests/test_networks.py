"""Properties every network must have: shapes, ranges, its fixed input, the multiple it needs,
the Lipschitz bound reaching every convolution, and gradients reaching every parameter.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dipmodel.layers import LipschitzConv, LipschitzNorm, Upsample, gaussian_kernel, spectral_norm_exact
from dipmodel.networks import (
    NETWORK_NAMES,
    DIPNet,
    NetConfig,
    build_network,
    count_parameters,
)

# name -> (small config, out_shape): sizes chosen to run in well under a second each
CASES: dict[str, tuple[dict, tuple[int, ...]]] = {
    "encoder_decoder": ({"width": 8, "depth": 3}, (3, 16, 24)),
    "encoder_decoder_skip": ({"width": 8, "depth": 3}, (3, 24, 16)),
    "decoder": ({"width": 8}, (3, 64, 64)),  # the default 5 upsamplings: multiple 32
    "convnet": ({"width": 8, "depth": 2}, (3, 20, 28)),
    "dip_linear": ({"width": 16, "depth": 2}, (3, 16, 16)),
    "relunet": ({"width": 16, "depth": 3}, (1, 12, 20)),
    "dip_conv_1d": ({"width": 8, "depth": 4, "out_channels": 1}, (1, 64)),
    "dip_linear_1d": ({"width": 16, "depth": 3, "out_channels": 1}, (1, 64)),
    "deep_decoder": ({"width": 8, "depth": 4}, (3, 32, 16)),  # 3 upsamplings: multiple 8
}
CONV_NETS = [n for n in NETWORK_NAMES if n not in ("dip_linear", "dip_linear_1d")]
MULTI_SCALE = ["decoder", "encoder_decoder", "encoder_decoder_skip", "dip_conv_1d", "deep_decoder"]
ONE_D = ["dip_conv_1d", "dip_linear_1d"]


def config(name: str, **overrides: object) -> NetConfig:
    kwargs, shape = CASES[name]
    return NetConfig(name=name, **{"out_channels": shape[0], **kwargs, **overrides})


def build(name: str, seed: int = 0, **overrides: object) -> DIPNet:
    torch.manual_seed(seed)
    return build_network(config(name, **overrides), CASES[name][1])


def test_cases_cover_every_network() -> None:
    assert set(CASES) == set(NETWORK_NAMES)


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_output_shape_and_range(name: str) -> None:
    net = build(name)
    out = net(net.make_input(torch.Generator().manual_seed(0)))
    assert out.shape == (1, *CASES[name][1])
    assert torch.isfinite(out).all()
    if name not in ONE_D:  # images through a sigmoid
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ONE_D)
def test_signal_networks_have_a_linear_output(name: str) -> None:
    """Targets such as sin(2π·5t) + sin(2π·50t) reach ±2: scaling the last layer scales the output."""
    net = build(name)
    net.eval()
    z = net.make_input(torch.Generator().manual_seed(0))
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, LipschitzConv))][-1]
    before = net(z)
    with torch.no_grad():
        last.weight.mul_(50)
        last.bias.mul_(50)
    torch.testing.assert_close(net(z), 50 * before)
    assert net(z).abs().max() > 1  # not squashed into [0, 1]


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_make_input_shape_range_and_determinism(name: str) -> None:
    net = build(name)
    z = net.make_input(torch.Generator().manual_seed(7))
    _, *sides = CASES[name][1]
    expected = {
        "decoder": (1, 32, *(s // 32 for s in sides)),
        "dip_linear": (1, 16),
        "dip_linear_1d": (1, 16),
        "relunet": (1, 2, *sides),
        "deep_decoder": (1, 8, *(s // 8 for s in sides)),  # width channels at H/2^(depth-1)
    }.get(name, (1, 32, *sides))  # the rest: 32-channel noise at full resolution
    assert z.shape == expected
    assert z.min() >= 0
    assert torch.equal(z, net.make_input(torch.Generator().manual_seed(7)))
    if name == "relunet":  # pixel coordinates: x along columns, y along rows, corners 0 and 1
        assert torch.equal(z[0, :, 0, 0], torch.tensor([0.0, 0.0]))
        assert torch.equal(z[0, :, -1, -1], torch.tensor([1.0, 1.0]))
        assert torch.equal(z[0, 0, 0], torch.linspace(0, 1, sides[1]))
    else:  # uniform noise in [0, 0.1], a different draw for a different seed
        assert z.max() <= 0.1
        assert not torch.equal(z, net.make_input(torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_initialisation_is_deterministic_given_the_seed(name: str) -> None:
    a, b = build(name, seed=3), build(name, seed=3)
    z = a.make_input(torch.Generator().manual_seed(0))
    assert torch.equal(a(z), b(z))


@pytest.mark.parametrize("name", MULTI_SCALE)
def test_sides_must_be_a_multiple_of_the_scale_factor(name: str) -> None:
    cfg = config(name)
    net = build(name)
    multiple = net.multiple
    scales = {"dip_conv_1d": cfg.depth // 2, "deep_decoder": cfg.depth - 1}.get(name, cfg.depth)
    assert multiple == 2**scales
    c, *sides = CASES[name][1]
    off_by_one = (c, *(s + 1 for s in sides))
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        build_network(cfg, off_by_one)
    if name != "deep_decoder":  # 1×1 convolutions only: a 1-pixel coarsest scale is fine
        too_small = (c, *(multiple for _ in sides))  # the coarsest scale would be 1 pixel
        with pytest.raises(ValueError, match=f"multiples of {multiple}"):
            build_network(cfg, too_small)


@pytest.mark.parametrize("name", ["convnet", "relunet", "dip_linear", "dip_linear_1d"])
def test_single_scale_networks_take_any_size(name: str) -> None:
    net = build(name)
    assert net.multiple == 1
    c, *sides = CASES[name][1]
    odd = (c, *(s + 1 for s in sides))
    torch.manual_seed(0)
    net = build_network(config(name), odd)
    assert net(net.make_input(torch.Generator().manual_seed(0))).shape == (1, *odd)


def test_default_decoder_has_the_shi_et_al_layout() -> None:
    net = build_network(NetConfig(name="decoder"), (3, 64, 64))
    convs = [m for m in net.modules() if isinstance(m, LipschitzConv)]
    assert net.multiple == 32
    assert len(convs) == 2 + 5 * 2 + 1  # first block, 5 × (up, two convs), 1×1 output
    assert all(c.weight.shape[0] == 128 for c in convs[:-1]) and convs[-1].weight.shape == (3, 128, 1, 1)
    leaky = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 12 and all(m.negative_slope == 0.01 for m in leaky)


@pytest.mark.parametrize("name", CONV_NETS)
@pytest.mark.parametrize("method", ["power", "gram", "svd"])
def test_lambda_reaches_every_convolution(name: str, method: str) -> None:
    """With bound_head=True every convolution, the output projection included, is bounded."""
    lam = 0.7
    net = build(name, lam=lam, norm="lipschitz", sn_method=method, upsample="gaussian", bound_head=True)
    net.train()
    net(net.make_input(torch.Generator().manual_seed(0)))  # one training forward (a power step)
    convs = [m for m in net.modules() if isinstance(m, LipschitzConv)]
    assert convs
    assert not any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())
    for layer in convs:
        assert layer.lam == lam and layer.sn_method == method
        assert float(spectral_norm_exact(layer.effective_weight().detach())) <= lam * (1 + 1e-3)
    if name != "relunet":  # ReLUNet is a plain MLP: no normalisation
        assert any(isinstance(m, LipschitzNorm) for m in net.modules())
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@pytest.mark.parametrize("name", ["dip_linear", "dip_linear_1d"])
def test_lambda_is_refused_by_fully_connected_networks(name: str) -> None:
    with pytest.raises(ValueError, match="has none"):
        config(name, lam=2.0)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan")])
def test_lambda_must_be_positive(lam: float) -> None:
    with pytest.raises(ValueError, match="lam must be positive"):  # not first in a worker's LipschitzConv
        NetConfig(name="decoder", lam=lam)
    assert NetConfig(name="decoder", lam=0.5).lam == 0.5


@pytest.mark.parametrize(
    "lam, norm, expected",
    [(None, "auto", "batch"), (2.0, "auto", "lipschitz"), (2.0, "batch", "batch"), (None, "lipschitz", "lipschitz")],
)
def test_norm_follows_lambda_unless_given(lam: float | None, norm: str, expected: str) -> None:
    """Batch norm divides by the batch std and so undoes a Lipschitz bound: with lam, Lipschitz normalisation."""
    assert NetConfig(name="decoder", lam=lam, norm=norm).norm == expected


def test_a_config_for_a_grey_image_outputs_one_channel() -> None:
    """Manifests plan RGB (3 channels) before reading an image; a grey image's fit needs 1."""
    planned = NetConfig(name="decoder", width=8, depth=2, lam=2.0)
    grey = planned.for_image(1)
    net = build_network(grey, (1, 16, 16))
    assert net(net.make_input(torch.Generator().manual_seed(0))).shape == (1, 1, 16, 16)
    assert planned.out_channels == 3 and grey.lam == 2.0 and grey.norm == "lipschitz"


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_the_config_knows_the_shapes_its_network_can_produce(name: str) -> None:
    """check_out_shape accepts exactly the shapes build_network builds, around the smallest side."""
    shape = CASES[name][1]
    cfg = config(name)
    for side in range(1, 3 * cfg.min_side() + 2):
        out_shape = (shape[0], side) if len(shape) == 2 else (shape[0], side, 2 * cfg.min_side())
        try:
            build_network(cfg, out_shape)
        except ValueError as err:
            with pytest.raises(ValueError, match="needs sides"):
                cfg.check_out_shape(out_shape)
            assert "needs sides" in str(err)
        else:
            cfg.check_out_shape(out_shape)
            assert side % cfg.side_multiple() == 0 and side >= cfg.min_side()


@pytest.mark.parametrize("name", NETWORK_NAMES)
@pytest.mark.parametrize("norm", ["batch", "lipschitz", "none"])
def test_gradients_reach_every_parameter(name: str, norm: str) -> None:
    overrides = {"norm": norm} | ({"lam": 2.0} if name in CONV_NETS and norm == "lipschitz" else {})
    net = build(name, **overrides)
    out = net(net.make_input(torch.Generator().manual_seed(0)))
    target = torch.rand(out.shape, generator=torch.Generator().manual_seed(1))
    (out - target).square().sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, pname


def test_count_parameters() -> None:
    net = build("dip_linear")  # width 16, depth 2, out 3·16·16: (16·16 + 16)·2 + 16·768 + 768
    assert count_parameters(net) == 2 * (16 * 16 + 16) + 16 * 768 + 768


def test_unknown_network_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid names: encoder_decoder, .*dip_linear_1d"):
        NetConfig(name="unet")
    cfg = NetConfig(name="decoder")
    cfg.name = "unet"  # a config edited after validation is caught by the factory too
    with pytest.raises(ValueError, match="valid names"):
        build_network(cfg, (3, 64, 64))


@pytest.mark.parametrize("field,value", [("norm", "group"), ("upsample", "cubic"), ("width", -1)])
def test_bad_config_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field if field == "width" else repr(value)):
        NetConfig(name="decoder", **{field: value})


def test_out_shape_must_match_the_network_kind() -> None:
    with pytest.raises(ValueError, match=r"\(C, L\)"):
        build_network(NetConfig(name="dip_conv_1d", out_channels=1), (1, 64, 64))
    with pytest.raises(ValueError, match="channels"):
        build_network(NetConfig(name="decoder", out_channels=1), (3, 64, 64))


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_default_sizes_are_the_paper_sizes(name: str) -> None:
    """The papers' sizes: 128 channels / 5 scales for the image DIPs, DIP-Linear 5 layers, ReLUNet 10
    layers of 256, the 1-D networks 10 layers of 256; explicit sizes are kept.
    """
    paper = {"relunet": (256, 10), "dip_conv_1d": (256, 10), "dip_linear_1d": (256, 10), "deep_decoder": (64, 6)}
    cfg = NetConfig(name=name)
    assert (cfg.width, cfg.depth) == paper.get(name, (128, 5))
    explicit = NetConfig(name=name, width=24, depth=6)
    assert (explicit.width, explicit.depth) == (24, 6)


def test_deep_decoder_layout() -> None:
    """Heckel & Hand (2019): per block a 1×1 conv, ×2 upsampling (not in the last block), ReLU,
    channel normalisation; then a 1×1 conv to C and a sigmoid."""
    net = build_network(NetConfig(name="deep_decoder", width=8, depth=3), (3, 16, 16))
    kinds = [type(m).__name__ for m in net.body]
    block = ["LipschitzConv", "Upsample", "ReLU", "BatchNorm2d"]
    assert kinds == block * 2 + ["LipschitzConv", "ReLU", "BatchNorm2d", "LipschitzConv", "Sigmoid"]
    assert all(m.weight.shape[2:] == (1, 1) for m in net.body if isinstance(m, LipschitzConv))


@pytest.mark.parametrize("width", [64, 128])
def test_deep_decoder_is_under_parameterised(width: int) -> None:
    """Its parameters are fewer than the pixels of the 512×512 RGB images it fits (6 layers):
    6·k² conv weights + 6·2k norm parameters + 3k + 3 for the output conv."""
    net = build_network(NetConfig(name="deep_decoder", width=width), (3, 512, 512))
    expected = 6 * width * width + 6 * 2 * width + 3 * width + 3
    assert count_parameters(net) == expected
    assert expected < 512 * 512 * 3


def test_config_is_a_plain_dataclass() -> None:
    """The pipeline stores ``asdict(cfg)`` beside every result and rebuilds from it."""
    cfg = config("decoder", lam=2.0)
    assert NetConfig(**dataclasses.asdict(cfg)) == cfg


# --- the authors' released configuration (Shi et al.'s code) as options -------------------------------

NOISE_NETS = [n for n in NETWORK_NAMES if n != "relunet"]


def test_noise_input_is_unchanged() -> None:
    """input="noise" (the default) is 0.1·U[0, 1) drawn from the generator, as before the option."""
    net = build("decoder")
    assert net.cfg.input == "noise"
    expected = 0.1 * torch.rand((1, 32, 2, 2), generator=torch.Generator().manual_seed(7))
    assert torch.equal(net.make_input(torch.Generator().manual_seed(7)), expected)


def test_fourier_input_is_sin_and_cos_of_uniform_phases() -> None:
    """Their get_noise(32, 'fourier', ..., var=1): u ~ U[0, 1) on 16 channels, then
    cat(sin 2πu, cos 2πu): channels 0-15 sin, 16-31 cos of the same u."""
    net = build("decoder", input="fourier")
    z = net.make_input(torch.Generator().manual_seed(3))
    assert z.shape == (1, 32, 2, 2)
    u = torch.rand((1, 16, 2, 2), generator=torch.Generator().manual_seed(3)).double().numpy()
    np.testing.assert_allclose(z[:, :16].double().numpy(), np.sin(2 * np.pi * u), atol=1e-6)
    np.testing.assert_allclose(z[:, 16:].double().numpy(), np.cos(2 * np.pi * u), atol=1e-6)
    assert torch.equal(z, net.make_input(torch.Generator().manual_seed(3)))
    assert not torch.equal(z, net.make_input(torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", NOISE_NETS)
def test_fourier_input_reaches_every_noise_network(name: str) -> None:
    noise, fourier = build(name), build(name, input="fourier")
    z = fourier.make_input(torch.Generator().manual_seed(0))
    assert z.shape == noise.make_input(torch.Generator().manual_seed(0)).shape
    assert z.min() >= -1 and z.max() <= 1 and z.min() < 0  # not the [0, 0.1] noise
    sin, cos = z.chunk(2, dim=1)
    torch.testing.assert_close(sin.square() + cos.square(), torch.ones_like(sin))  # pairs on the unit circle
    phase = torch.atan2(sin, cos).remainder(2 * math.pi) / (2 * math.pi)  # u back, in [0, 1)
    assert phase.std() > 0.15  # spread over the circle (uniform: 0.29), not a constant
    out = fourier(z)
    assert out.shape == (1, *CASES[name][1]) and torch.isfinite(out).all()


def test_fourier_input_phases_are_uniform() -> None:
    """u = atan2(sin, cos)/2π recovers U[0, 1): mean 1/2, variance 1/12 (many draws)."""
    cfg = NetConfig(name="convnet", width=4, depth=1, in_channels=64, input="fourier")
    net = build_network(cfg, (3, 32, 32))
    sin, cos = net.make_input(torch.Generator().manual_seed(0)).double().chunk(2, dim=1)
    u = torch.atan2(sin, cos).remainder(2 * math.pi) / (2 * math.pi)  # 32·32·32 = 32768 phases
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(u.var()) == pytest.approx(1 / 12, abs=0.003)


def test_fourier_input_is_refused_where_it_makes_no_sense() -> None:
    with pytest.raises(ValueError, match="input='fourier' does not apply to relunet"):
        config("relunet", input="fourier")
    with pytest.raises(ValueError, match="even number of input channels.*in_channels=31"):
        NetConfig(name="decoder", in_channels=31, input="fourier")
    with pytest.raises(ValueError, match="even number of input channels.*width=9"):
        NetConfig(name="deep_decoder", width=9, input="fourier")
    with pytest.raises(ValueError, match="NetConfig.input must be one of noise, fourier"):
        NetConfig(name="decoder", input="meshgrid")


def bounded_layers(net: nn.Module) -> tuple[list[LipschitzConv], LipschitzConv]:
    """The convolutions before the output projection, and the projection (the last conv run)."""
    convs = [m for m in net.modules() if isinstance(m, LipschitzConv)]
    return convs[:-1], convs[-1]


@pytest.mark.parametrize("name", CONV_NETS)
def test_head_is_unbounded_unless_bound_head(name: str) -> None:
    """Their Decoder passes ln_lambda=0 to its 1×1 output conv: no SpectralNorm there."""
    lam = 0.5
    for bound_head in (False, True):
        net = build(name, lam=lam, norm="lipschitz", bound_head=bound_head)
        body, head = bounded_layers(net)
        assert head.weight.shape[0] == CASES[name][1][0]  # it is the projection to the output channels
        with torch.no_grad():
            head.weight.mul_(10 * lam / float(spectral_norm_exact(head.weight)))  # σ(head) = 10λ
        if bound_head:
            assert float(spectral_norm_exact(head.effective_weight().detach())) == pytest.approx(lam, rel=1e-4)
        else:
            assert head.lam is None and torch.equal(head.effective_weight(), head.weight)
        assert body and all(m.lam == lam for m in body)
        for m in body:
            assert float(spectral_norm_exact(m.effective_weight().detach())) <= lam * (1 + 1e-4)


def test_decoder_bounds_12_of_its_13_convolutions() -> None:
    """Their decoder: unetConv2 (2 convs) + 5 unetUp × unetConv2 (2 convs) bounded, 1×1 head not."""
    for bound_head, bounded in ((False, 12), (True, 13)):
        net = build_network(NetConfig(name="decoder", lam=2.0, norm="lipschitz", bound_head=bound_head), (3, 64, 64))
        convs = [m for m in net.modules() if isinstance(m, LipschitzConv)]
        assert len(convs) == 13
        assert sum(m.lam is not None for m in convs) == bounded
        assert (convs[-1].lam is None) == (not bound_head) and convs[-1].weight.shape[2:] == (1, 1)


def applied_sigmas(net: DIPNet) -> list[tuple[float, int]]:
    """(σ, input length) of each upsampling layer in the order the forward pass calls them."""
    calls: list[tuple[float, int]] = []
    hooks = [
        m.register_forward_hook(lambda m, x, _: calls.append((m.sigma, x[0].shape[-1])))
        for m in net.modules()
        if isinstance(m, Upsample)
    ]
    net(net.make_input(torch.Generator().manual_seed(0)))
    for hook in hooks:
        hook.remove()
    return calls


@pytest.mark.parametrize("name", MULTI_SCALE)
def test_per_layer_sigma_reaches_each_upsampling_layer_coarsest_first(name: str) -> None:
    layers = {"dip_conv_1d": 2, "deep_decoder": 3}.get(name, config(name).depth)
    sigmas = tuple(0.1 * (i + 1) for i in range(layers))
    net = build(name, upsample="gaussian", up_sigma=list(sigmas))
    assert net.cfg.up_sigma == sigmas  # a list is stored as a tuple
    calls = applied_sigmas(net)
    assert [s for s, _ in calls] == list(sigmas)
    sizes = [n for _, n in calls]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # each one finer than the last
    for m in (m for m in net.modules() if isinstance(m, Upsample)):
        torch.testing.assert_close(m.kernel[0, 0], gaussian_kernel(m.sigma, dims=m.dims))


def test_the_authors_decoder_sigmas() -> None:
    """decoder.py: sigmas = [0.1, 0.1, 0.1, 0.5, 0.5], sigmas[i] for the i-th unetUp (coarsest first)."""
    net = build_network(
        NetConfig(name="decoder", width=8, upsample="gaussian", up_sigma=(0.1, 0.1, 0.1, 0.5, 0.5)), (3, 64, 64)
    )
    assert [s for s, _ in applied_sigmas(net)] == [0.1, 0.1, 0.1, 0.5, 0.5]


@pytest.mark.parametrize("name", MULTI_SCALE)
def test_one_sigma_is_every_layers_sigma(name: str) -> None:
    calls = applied_sigmas(build(name, upsample="gaussian", up_sigma=0.3))
    assert calls and all(s == 0.3 for s, _ in calls)


def test_a_sigma_list_of_the_wrong_length_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"up_sigma gives 4 value\(s\) but decoder \(depth 5\) has 5 upsampling"):
        NetConfig(name="decoder", up_sigma=[0.1, 0.1, 0.5, 0.5])
    with pytest.raises(ValueError, match="up_sigma gives 2 value.* has 3 upsampling"):
        NetConfig(name="deep_decoder", depth=4, up_sigma=(0.5, 0.5))
    with pytest.raises(ValueError, match="convnet .* has 0 upsampling"):
        NetConfig(name="convnet", up_sigma=[0.5])
    with pytest.raises(ValueError, match="up_sigma must be finite and >= 0"):
        NetConfig(name="decoder", up_sigma=[0.1, 0.1, -0.1, 0.5, 0.5])


@pytest.mark.parametrize("field", ["bound_head", "detach_sigma"])
def test_flags_must_be_booleans(field: str) -> None:
    with pytest.raises(ValueError, match=f"NetConfig.{field} must be true or false"):
        NetConfig(name="decoder", **{field: "yes"})


def test_detach_sigma_reaches_every_bounded_convolution() -> None:
    net = build("encoder_decoder", lam=2.0, norm="lipschitz", detach_sigma=True, sn_method="svd")
    convs = [m for m in net.modules() if isinstance(m, LipschitzConv)]
    assert all(m.detach_sigma for m in convs)
    assert not any(m.detach_sigma for m in build("encoder_decoder", lam=2.0).modules() if isinstance(m, LipschitzConv))


def test_the_authors_options_survive_asdict_and_json() -> None:
    """Records store asdict(cfg) as JSON; a per-layer σ comes back as a list and becomes a tuple again."""
    cfg = NetConfig(
        name="decoder",
        lam=2.0,
        norm="lipschitz",
        upsample="gaussian",
        up_sigma=[0.1, 0.1, 0.1, 0.5, 0.5],
        input="fourier",
        bound_head=True,
        detach_sigma=True,
    )
    again = NetConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg and again.up_sigma == (0.1, 0.1, 0.1, 0.5, 0.5)
    defaults = NetConfig(name="decoder")
    assert (defaults.input, defaults.bound_head, defaults.detach_sigma) == ("noise", False, False)
    assert defaults.up_sigma == 0.5
