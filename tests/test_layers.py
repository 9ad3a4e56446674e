"""Properties of the controlled layers, each checked against an independent reference:
the exact spectral norm, closed-form frequency responses, and the definitions in the papers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dipmodel.layers import (
    SN_METHODS,
    LipschitzConv,
    LipschitzNorm,
    Upsample,
    bed_of_nails,
    exact_response,
    gaussian_kernel,
    make_norm,
    measured_response,
    paper_response,
    spectral_norm_exact,
    spectral_norm_gram,
)

# (in, out, kernel, dims, stride): wide, tall, 1×1, 1-D, strided
CONV_SHAPES = [(3, 8, 3, 2, 1), (16, 4, 3, 2, 2), (8, 8, 1, 2, 1), (4, 6, 5, 1, 1), (12, 3, 3, 1, 2)]
LAMBDAS = [0.5, 1.0, 2.0]


def matrix_sigma(weight: Tensor) -> float:
    """Reference: the largest singular value of the (out, in·k…) matrix, by full SVD."""
    return float(torch.linalg.svdvals(weight.detach().double().flatten(1))[0])


def estimate(layer: LipschitzConv) -> float:
    return float(layer.sigma_estimate().detach())


def conv_input(layer: LipschitzConv, in_ch: int, size: int = 12, batch: int = 1) -> Tensor:
    return torch.randn(batch, in_ch, *(size,) * layer.dims)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Many tiny ops: a second intra-op thread only adds sync cost (7× on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(layer: LipschitzConv, in_ch: int, steps: int, lr: float = 1e-3) -> None:
    """Adam on a random regression loss, so the weights keep changing."""
    x = conv_input(layer, in_ch)
    target = torch.randn_like(layer(x)).detach()
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    with one_thread():
        for _ in range(steps):
            loss = (layer(x) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        layer(x)  # a last forward: its power step is the estimate the next update would use


# ---------------------------------------------------------------- Lipschitz convolution


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (4, 64, 3), (32, 32, 1, 1)])
def test_gram_spectral_norm_is_exact(shape: tuple) -> None:
    """σ₁ = √λ_max(W Wᵀ): the Gram route agrees with numpy's SVD on wide, tall and square W."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = float(np.linalg.svd(w.flatten(1).numpy(), compute_uv=False)[0])
    assert float(spectral_norm_gram(w)) == pytest.approx(expected, rel=1e-9)


def test_spectral_norm_exact_matches_svd() -> None:
    w = torch.randn(7, 5, 3, 3)
    assert float(spectral_norm_exact(w)) == pytest.approx(matrix_sigma(w), rel=1e-5)


@pytest.mark.parametrize("method", ["power", "gram", "svd"])
@pytest.mark.parametrize("scale", [1.0, 10.0], ids=["he_init", "scaled_up"])
@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_effective_weight_is_bounded_by_lambda(shape: tuple, lam: float, scale: float, method: str) -> None:
    torch.manual_seed(0)
    in_ch, out_ch, k, dims, stride = shape
    layer = LipschitzConv(in_ch, out_ch, k, stride, dims, lam=lam, sn_method=method)
    with torch.no_grad():
        layer.weight.mul_(scale)  # scaling keeps the singular vectors, so u, v stay valid
    sigma_w, sigma_eff = matrix_sigma(layer.weight), matrix_sigma(layer.effective_weight())
    assert sigma_eff <= lam * (1 + 1e-3)
    if sigma_w > lam:  # the bound is active: the weight is rescaled onto it, not below it
        assert sigma_eff >= lam * (1 - 1e-3)
    else:  # inactive: W is left untouched
        torch.testing.assert_close(layer.effective_weight(), layer.weight, rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [CONV_SHAPES[i] for i in (1, 2, 4)])  # strided 2-D, 1×1, 1-D
def test_power_estimate_tracks_exact_sigma_while_weights_change(shape: tuple) -> None:
    torch.manual_seed(1)
    in_ch, out_ch, k, dims, stride = shape
    layer = LipschitzConv(in_ch, out_ch, k, stride, dims, lam=100.0, sn_method="power")  # bound never active
    w0 = layer.weight.detach().clone()
    train(layer, in_ch, steps=300, lr=1e-2)
    assert float((layer.weight.detach() - w0).norm() / w0.norm()) > 0.3  # the weights moved a lot
    assert estimate(layer) == pytest.approx(matrix_sigma(layer.weight), rel=1e-3)


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: while the bound is active the optimiser flattens the top of the "
    "spectrum and one power step per update lags behind; here the estimate ends 12-14 % low, "
    "so the true norm exceeds λ by as much (the exact gram/svd methods do not, nor does power with "
    "detach_sigma; see the next two tests)",
)
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_power_estimate_tracks_exact_sigma_under_an_active_bound(lam: float) -> None:
    torch.manual_seed(0)
    layer = LipschitzConv(32, 64, 3, lam=lam, sn_method="power")
    train(layer, 32, steps=300)
    assert estimate(layer) == pytest.approx(matrix_sigma(layer.weight), rel=1e-3)


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_power_estimate_tracks_exact_sigma_when_sigma_is_detached(lam: float) -> None:
    """The same training as the xfail above, with σ̂ a constant in backward (detach_sigma): no
    gradient shrinks W along the estimated direction, and one power step per update keeps up."""
    torch.manual_seed(0)
    layer = LipschitzConv(32, 64, 3, lam=lam, sn_method="power", detach_sigma=True)
    train(layer, 32, steps=300)
    assert estimate(layer) == pytest.approx(matrix_sigma(layer.weight), rel=1e-3)
    assert matrix_sigma(layer.effective_weight()) <= lam * (1 + 1e-3)


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_exact_modes_keep_the_bound_under_training(lam: float, method: str) -> None:
    torch.manual_seed(0)
    layer = LipschitzConv(32, 64, 3, lam=lam, sn_method=method)
    train(layer, 32, steps=100)
    assert matrix_sigma(layer.weight) > lam  # the bound is active ...
    assert matrix_sigma(layer.effective_weight()) == pytest.approx(lam, rel=1e-4)  # ... and exact


def test_power_estimate_never_exceeds_the_exact_value() -> None:
    """uᵀWv ≤ σ₁ for unit u, v: the estimate is a lower bound, so it errs on the loose side."""
    torch.manual_seed(2)
    layer = LipschitzConv(8, 16, 3, lam=0.5, sn_method="power")
    x = conv_input(layer, 8)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(50):
        loss = layer(x).square().mean().neg()  # pushes the weights up against the bound
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert estimate(layer) <= matrix_sigma(layer.weight) * (1 + 1e-5)


@pytest.mark.parametrize("method", SN_METHODS)
def test_gradient_flows_through_sigma(method: str) -> None:
    """The gradient of W/(σ̂/λ) equals that of W/(σ_exact(W)/λ) (power: with converged u, v)."""
    torch.manual_seed(3)
    lam = 0.5
    layer = LipschitzConv(6, 10, 3, lam=lam, sn_method=method)  # He init: σ ≈ 2 > λ; u, v start exact
    probe = torch.randn_like(layer.weight)
    (layer.effective_weight() * probe).sum().backward()
    w = layer.weight.detach().clone().requires_grad_()
    (w / (spectral_norm_exact(w) / lam) * probe).sum().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-4, atol=1e-6)


def twin_layers(method: str, lam: float, seed: int = 3) -> tuple[LipschitzConv, LipschitzConv]:
    """Two layers with the same weights, bias and (power) vectors; the first detaches σ."""
    torch.manual_seed(seed)
    detached = LipschitzConv(6, 10, 3, lam=lam, sn_method=method, detach_sigma=True)
    through = LipschitzConv(6, 10, 3, lam=lam, sn_method=method)
    through.load_state_dict(detached.state_dict())
    return detached, through


@pytest.mark.parametrize("method", SN_METHODS)
def test_detached_sigma_is_a_constant_divisor(method: str) -> None:
    """The authors divide by max(1, σ/λ) with σ from ``w.data``: the gradient w.r.t. W is that of
    W / c with c a fixed number. Computed here by hand: c from an SVD in float64, then autograd
    through a plain reflection-padded conv of W / c. Forward values are the same either way."""
    lam = 0.5
    detached, through = twin_layers(method, lam)  # He init: σ ≈ 2 > λ, the bound is active
    for layer in (detached, through):
        layer.eval()  # no power step: u, v stay the exact vectors they start as
    x = torch.randn(1, 6, 9, 9, generator=torch.Generator().manual_seed(0))
    probe = torch.randn(1, 10, 9, 9, generator=torch.Generator().manual_seed(1))
    out_detached, out_through = detached(x), through(x)
    # equal up to rounding: without a graph, eigvalsh ("gram") takes a different LAPACK path
    torch.testing.assert_close(out_detached, out_through, rtol=1e-5, atol=1e-6)
    (out_detached * probe).sum().backward()
    (out_through * probe).sum().backward()

    c = matrix_sigma(detached.weight) / lam  # a Python float: no graph
    assert c > 2
    w = detached.weight.detach().clone().requires_grad_()
    by_hand = F.conv2d(F.pad(x, (1,) * 4, mode="reflect"), w / c, detached.bias.detach())
    (by_hand * probe).sum().backward()
    torch.testing.assert_close(detached.weight.grad, w.grad, rtol=1e-4, atol=1e-6)
    # Through σ there is one more term: ∂(W/(σ(W)/λ)) adds −⟨G, W⟩/(c·σ) · u vᵀ, G = c·(∂L/∂W
    # detached), u, v the top singular vectors: the gradient also shrinks W along them.
    u, sv, vh = torch.linalg.svd(detached.weight.detach().double().flatten(1))
    g = c * w.grad.double().flatten(1)
    extra = -(g * detached.weight.detach().double().flatten(1)).sum() / (c * sv[0]) * torch.outer(u[:, 0], vh[0])
    difference = (through.weight.grad.double() - w.grad.double()).flatten(1)
    assert float(difference.norm()) > 1e-3 * float(w.grad.norm())  # far above rounding
    torch.testing.assert_close(difference, extra, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(detached.bias.grad, through.bias.grad)


@pytest.mark.parametrize("method", SN_METHODS)
def test_detaching_changes_nothing_while_the_bound_is_inactive(method: str) -> None:
    detached, through = twin_layers(method, lam=100.0)  # σ ≈ 2 < λ: W is used as it is
    x = torch.randn(1, 6, 7, 7)
    for layer in (detached, through):
        layer.eval()
        layer(x).square().sum().backward()
    torch.testing.assert_close(detached.weight.grad, through.weight.grad, rtol=0, atol=0)  # the same ops


def test_detached_sigma_trains_with_the_bound_kept() -> None:
    """Adam with a constant divisor: W itself is free to grow, the effective weight stays bounded."""
    torch.manual_seed(0)
    layer = LipschitzConv(3, 8, 3, lam=1.0, sn_method="svd", detach_sigma=True)
    train(layer, 3, steps=30, lr=1e-2)
    assert matrix_sigma(layer.effective_weight()) <= 1.0 * (1 + 1e-5)


def test_eval_mode_leaves_the_power_vectors_alone() -> None:
    layer = LipschitzConv(4, 8, 3, lam=1.0, sn_method="power")
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    u, v = layer.u.clone(), layer.v.clone()
    layer.eval()
    layer(conv_input(layer, 4))
    assert torch.equal(layer.u, u) and torch.equal(layer.v, v)
    layer.train()
    layer(conv_input(layer, 4))
    assert not torch.equal(layer.u, u)


@pytest.mark.parametrize("lam", [None, math.inf])
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_unconstrained_conv_is_a_plain_reflection_padded_conv(shape: tuple, lam: float | None) -> None:
    in_ch, out_ch, k, dims, stride = shape
    layer = LipschitzConv(in_ch, out_ch, k, stride, dims, lam=lam)
    with torch.no_grad():
        layer.bias.normal_()
    x = conv_input(layer, in_ch, size=11, batch=2)
    padded = F.pad(x, (k // 2,) * (2 * dims), mode="reflect")
    conv = F.conv1d if dims == 1 else F.conv2d
    expected = conv(padded, layer.weight, layer.bias, stride=stride)
    torch.testing.assert_close(layer(x), expected)
    assert not hasattr(layer, "u")  # no power iteration is paid for


def test_he_initialisation() -> None:
    """Kaiming normal, fan-in, ReLU gain: std = √(2 / fan_in)."""
    torch.manual_seed(4)
    layer = LipschitzConv(64, 128, 3)
    assert float(layer.weight.detach().std()) == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    assert float(layer.weight.detach().mean()) == pytest.approx(0.0, abs=2e-3)


def test_lipschitz_conv_rejects_non_positive_lambda() -> None:
    with pytest.raises(ValueError, match="lam"):
        LipschitzConv(2, 2, 3, lam=0.0)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 4, 16)], ids=["2d", "1d"])
def test_lipschitz_norm_centres_each_channel_and_does_not_rescale(shape: tuple) -> None:
    torch.manual_seed(5)
    norm = LipschitzNorm(shape[1])
    with torch.no_grad():
        norm.bias.normal_()
    bias = norm.bias.view(1, -1, *(1,) * (len(shape) - 2))
    spatial = tuple(range(2, len(shape)))
    x = 3 * torch.randn(shape) + torch.randn(shape[:2] + (1,) * len(spatial))  # per-channel offsets
    centred = norm(x) - bias
    torch.testing.assert_close(centred.mean(dim=spatial), torch.zeros(shape[:2]), atol=1e-6, rtol=0)
    torch.testing.assert_close(norm(-2.5 * x) - bias, -2.5 * centred)  # no division by the std
    torch.testing.assert_close(norm(x + 7.0), norm(x))  # shift invariant per channel


@pytest.mark.parametrize("dims", [1, 2])
def test_make_norm_kinds(dims: int) -> None:
    batch = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    assert isinstance(make_norm("batch", 4, dims), batch)
    assert isinstance(make_norm("lipschitz", 4, dims), LipschitzNorm)
    assert isinstance(make_norm("none", 4, dims), nn.Identity)
    with pytest.raises(ValueError, match=r"'group'.*batch, lipschitz, none"):
        make_norm("group", 4, dims)


# ---------------------------------------------------------------- Gaussian kernel


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 2.0])
def test_gaussian_kernel_is_normalised_symmetric_and_uses_halved_distances(sigma: float) -> None:
    k = gaussian_kernel(sigma)
    assert k.shape == (5, 5)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.t())
    # one grid step is half a low-resolution pixel: k(0, 1) / k(0, 0) = exp(−(1/2)² / 2σ²)
    assert float(k[2, 3] / k[2, 2]) == pytest.approx(math.exp(-0.25 / (2 * sigma**2)), rel=1e-5)
    # separable: the 2-D kernel is the outer product of the 1-D one
    k1 = gaussian_kernel(sigma, dims=1)
    torch.testing.assert_close(k, torch.outer(k1, k1))


def test_gaussian_kernel_at_sigma_zero_is_a_delta() -> None:
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1
    assert torch.equal(gaussian_kernel(0.0), delta)


# ---------------------------------------------------------------- upsampling


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("kind", ["nearest", "bilinear", "gaussian", "bed_of_nails"])
def test_upsample_shapes(kind: str, dims: int) -> None:
    x = torch.rand(2, 3, *(6,) * dims)
    assert Upsample(kind, 2, dims=dims)(x).shape == (2, 3, *(12,) * dims)


def test_upsample_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"'cubic'.*nearest, bilinear, gaussian, bed_of_nails"):
        Upsample("cubic")


@pytest.mark.parametrize("dims", [1, 2])
def test_bed_of_nails_inserts_zeros(dims: int) -> None:
    x = torch.rand(1, 2, *(5,) * dims) + 1  # strictly positive
    y = bed_of_nails(x, 3)
    nails = (..., *(slice(None, None, 3),) * dims)
    assert torch.equal(y[nails], x)
    assert int((y != 0).sum()) == x.numel()


@pytest.mark.parametrize("dims", [1, 2])
def test_gaussian_upsampling_at_sigma_zero_is_exactly_the_bed_of_nails(dims: int) -> None:
    x = torch.randn(2, 3, *(8,) * dims)
    assert torch.equal(Upsample("gaussian", 2, 0.0, dims)(x), Upsample("bed_of_nails", 2, dims=dims)(x))


def test_gaussian_upsampling_keeps_the_mass_of_each_nail() -> None:
    """Kernel sums to 1, so away from the border a 2×2 block averages to c/4 for input c."""
    out = Upsample("gaussian", 2, 0.5)(torch.full((1, 1, 8, 8), 2.0))
    torch.testing.assert_close(out[..., 4:12, 4:12].mean(), torch.tensor(0.5))


def test_gaussian_upsampling_suppresses_high_frequencies_more_as_sigma_grows() -> None:
    """Mean |FFT| (DC = 1) of the upsampled impulse above the input's Nyquist, 1/4 cycle/px.

    σ stays in the paper's range: with 5 taps a much wider Gaussian is truncated towards a
    box, whose side lobes leak again (σ = 2 leaks more than σ = 1).
    """
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[..., 8, 8] = 1
    f = torch.fft.fftfreq(32).abs()
    high = torch.maximum(f[:, None], f[None, :]) > 0.25
    leaks = []
    for sigma in [0.0, 0.25, 0.5, 1.0]:
        spectrum = torch.fft.fft2(Upsample("gaussian", 2, sigma)(impulse)[0, 0]).abs()
        leaks.append(float((spectrum / spectrum[0, 0])[high].mean()))
    assert leaks[0] == pytest.approx(1.0)  # the bed of nails passes the replica untouched
    assert all(a > b for a, b in itertools.pairwise(leaks)), leaks


def triangle_response(k: Tensor, stride: int) -> Tensor:
    """|DTFT| / DC of linear interpolation's kernel 1 − |t|/L on the output lattice.

    With align_corners=False an input sample lands (L − 1)/2 output samples off the lattice,
    so for even L the taps sit at half-integers t = ±1/2, …, ±(L − 1/2).
    """
    t = torch.arange(2 * stride, dtype=torch.float64) - stride + 0.5
    taps = 1 - t.abs() / stride
    return (taps * torch.exp(-2j * math.pi * k[:, None] * t)).sum(-1).abs() / taps.sum()


@pytest.mark.parametrize("stride", [2, 4])
@pytest.mark.parametrize("kind", ["nearest", "bilinear"])
def test_upsampling_frequency_response_matches_chakrabarty_maji(kind: str, stride: int) -> None:
    """C&M App. E: nearest ≈ sin(πLk)/(πLk), bilinear ≈ sin²(πLk)/(Lπ²k²), here divided by
    their DC value L (so sinc and sinc²); k in cycles per output sample.

    Measured: |DFT| / DC of the 1-D response to a unit impulse, on the low band k ≤ 1/(2L)
    that the input can carry. Against the discrete exact forms (the Dirichlet kernel
    sin(πLk)/(L·sin πk), and the sampled triangle) it agrees to float precision. The
    continuous forms differ from them by aliasing, a relative error of (πk)²/6 to leading
    order for both (πk/sin πk for nearest; Poisson summation over the half-integer lattice
    for bilinear); (πk)²/4 also covers the higher-order terms up to k = 1/4.
    """
    n = 64
    k, measured = measured_response(kind, stride, length=n)
    torch.testing.assert_close(k, torch.arange(1, n // 2 + 1, dtype=torch.float64) / (n * stride))
    sinc = torch.sin(math.pi * stride * k) / (math.pi * stride * k)
    if kind == "nearest":
        discrete = torch.sin(math.pi * stride * k) / (stride * torch.sin(math.pi * k))
        continuous = sinc
    else:
        discrete = triangle_response(k, stride)
        continuous = sinc**2
    torch.testing.assert_close(measured, discrete, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact_response(kind, stride, k), discrete, atol=1e-12, rtol=0)
    torch.testing.assert_close(paper_response(kind, stride, k), continuous, atol=1e-12, rtol=0)
    assert torch.all((measured / continuous - 1).abs() <= (math.pi * k) ** 2 / 4)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0])
def test_gaussian_upsampling_response_is_its_kernels_transform(sigma: float) -> None:
    """Shi Eq. 6 layer: bed of nails then the 5-tap Gaussian, so its response on the band the
    input carries is the DTFT of exp(−(t/2)²/2σ²), t = −2 … 2 (σ in low-res pixels), over its sum;
    σ = 0 is the bed of nails, flat at 1. The paper gives no continuous form for it."""
    k, measured = measured_response("gaussian", 2, sigma)
    t = torch.arange(-2, 3, dtype=torch.float64)
    taps = torch.exp(-((t / 2) ** 2) / (2 * sigma**2)) if sigma else (t == 0).double()
    expected = torch.stack([(taps * torch.cos(2 * math.pi * f * t)).sum() for f in k]).abs() / taps.sum()
    torch.testing.assert_close(measured, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact_response("gaussian", 2, k, sigma), expected, atol=1e-6, rtol=0)
    assert paper_response("gaussian", 2, k) is None
