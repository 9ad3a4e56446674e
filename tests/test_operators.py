"""Properties of the forward operators, each checked against an independent derivation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dipmodel.operators import (
    TASK_PARAMS,
    InpaintOperator,
    Operator,
    build_operator,
    data_term,
    lanczos_kernel,
)

SHAPE = (3, 40, 56)  # non-square; divisible by 4 and 8 for super-resolution

CASES: dict[str, tuple[str, dict]] = {
    "clean": ("clean", {}),
    "enhance": ("enhance", {}),
    "denoise": ("denoise", {"sigma": 25}),
    "lowfreq_noise": ("lowfreq_noise", {"sigma": 25, "cutoff": 0.1}),
    "jpeg": ("jpeg", {"quality": 20}),
    "inpaint_center": ("inpaint", {"kind": "center", "ratio": 0.25}),
    "inpaint_bernoulli": ("inpaint", {"kind": "bernoulli", "p": 0.5}),
    "superres_x4": ("superres", {"factor": 4}),
    "superres_x8": ("superres", {"factor": 8}),
}
RANDOM_CASES = {"denoise", "lowfreq_noise", "inpaint_bernoulli"}
EXACT_CASES = {"clean", "enhance", "inpaint_center", "inpaint_bernoulli"}  # y = A(x*) exactly


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def smooth_image(shape: tuple[int, int, int]) -> Tensor:
    """(1, C, H, W) image of a few low-frequency waves, well inside [0, 1]."""
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    waves = [torch.sin(2 * math.pi * (1 + k) * xx) * torch.cos(math.pi * (4 - k) * yy) for k in range(c)]
    planes = [0.5 + 0.2 * wave for wave in waves]
    return torch.stack(planes)[None]


def textured_image(shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """Smooth waves plus pixel-level texture, so codecs and noise have something to change."""
    texture = 0.15 * torch.rand((1, *shape), generator=generator)
    return (smooth_image(shape) + texture - 0.075).clamp(0, 1)


def make(case: str, seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Operator:
    task, params = CASES[case]
    return build_operator(task, shape, seed=seed, **params)


def buffers(op: Operator) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in op.state_dict().items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- every operator


@pytest.mark.parametrize("case", CASES)
def test_degrade_is_reproducible_and_stateless(case: str, generator: torch.Generator) -> None:
    op, x = make(case), textured_image(SHAPE, generator)
    before = buffers(op)
    assert torch.equal(op.degrade(x), op.degrade(x))
    assert torch.equal(op.degrade(x), make(case).degrade(x))  # same seed, fresh operator
    assert same_state(before, buffers(op))


@pytest.mark.parametrize("case", CASES)
def test_seed_changes_only_random_observations(case: str, generator: torch.Generator) -> None:
    x = textured_image(SHAPE, generator)
    differs = not torch.equal(make(case, seed=0).degrade(x), make(case, seed=1).degrade(x))
    assert differs == (case in RANDOM_CASES)


@pytest.mark.parametrize("case", CASES)
def test_forward_model_is_deterministic_stateless_and_shaped(case: str, generator: torch.Generator) -> None:
    op, x = make(case), torch.rand((2, *SHAPE), generator=generator)
    before = buffers(op)
    a = op.A(x)
    assert torch.equal(a, op.A(x))
    assert same_state(before, buffers(op))
    factor = op.params.get("factor", 1)
    expected = (2, SHAPE[0], SHAPE[1] // factor, SHAPE[2] // factor)
    assert a.shape == expected
    assert op.degrade(x).shape == expected


@pytest.mark.parametrize("case", CASES)
def test_forward_model_is_linear_and_adjoint_matches(case: str, generator: torch.Generator) -> None:
    op = make(case)
    x, u = torch.rand((2, 1, *SHAPE), generator=generator, dtype=torch.float64)
    a, b = 0.7, -1.3
    torch.testing.assert_close(op.A(a * x + b * u), a * op.A(x) + b * op.A(u))
    y = torch.rand(op.A(x).shape, generator=generator, dtype=torch.float64)
    torch.testing.assert_close((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum())


@pytest.mark.parametrize("case", CASES)
def test_data_term(case: str, generator: torch.Generator) -> None:
    op, clean = make(case), textured_image(SHAPE, generator)
    y = op.degrade(clean)
    loss = data_term(op, clean, y)
    if case in EXACT_CASES:
        assert loss.item() == 0
    else:
        assert loss.item() > 0
    output = torch.rand(clean.shape, generator=generator).requires_grad_()
    data_term(op, output, y).backward()
    assert output.grad is not None and torch.isfinite(output.grad).all()
    assert output.grad.abs().sum() > 0


@pytest.mark.parametrize("case", CASES)
def test_buffers_follow_to(case: str) -> None:
    op = make(case).to(torch.float64)
    assert all(b.dtype == torch.float64 for b in op.buffers())
    names = dict(op.named_buffers())
    assert ("mask" in names) == case.startswith("inpaint")
    assert ("kernel" in names) == case.startswith("superres")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("case", CASES)
def test_observation_does_not_depend_on_device(case: str, generator: torch.Generator) -> None:
    op, x = make(case), textured_image(SHAPE, generator)
    on_gpu = op.to("cuda").degrade(x.to("cuda")).cpu()
    torch.testing.assert_close(on_gpu, make(case).degrade(x), atol=1e-5, rtol=0)


def test_degrade_rejects_the_wrong_image_shape() -> None:
    with pytest.raises(ValueError, match="expected"):
        make("denoise").degrade(torch.rand(1, 3, 32, 32))


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_denoise_noise_has_the_requested_std(sigma: int) -> None:
    shape = (3, 96, 96)
    x = torch.full((1, *shape), 0.5)  # at σ ≤ 50, 0.5 is > 2.5σ from the clip: check below
    noise = build_operator("denoise", shape, seed=3, sigma=sigma).degrade(x) - x
    std, n = sigma / 255, noise.numel()
    clipped = (noise.abs() >= 0.5 - 1e-7).float().mean().item()
    assert clipped < 0.02
    if sigma <= 25:  # no clipping in effect: the plain Gaussian statistics apply
        assert clipped == 0
        assert abs(noise.std().item() / std - 1) < 0.03
        assert abs(noise.mean().item()) < 4 * std / math.sqrt(n)


def test_denoise_clips_to_the_unit_interval() -> None:
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).repeat(1, 1, 16, 8)
    y = build_operator("denoise", (1, 16, 16), sigma=100).degrade(x)
    assert y.min() >= 0 and y.max() <= 1
    assert (y == 0).any() and (y == 1).any()


def radial_frequency(h: int, w: int) -> Tensor:
    """Radial frequency of each full-FFT bin, in units of Nyquist (0.5 cycle/pixel)."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.fftfreq(w)[None, :]
    return torch.sqrt(fy**2 + fx**2) / 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cutoff", [0.05, 0.1, 0.2])
def test_lowfreq_noise_power_lies_below_twice_the_cutoff(seed: int, cutoff: float) -> None:
    shape, sigma = (3, 64, 64), 15
    x = torch.full((1, *shape), 0.5)
    noise = build_operator("lowfreq_noise", shape, seed, sigma=sigma, cutoff=cutoff).degrade(x) - x
    assert (noise.abs() < 0.5 - 1e-6).all()  # nothing clipped
    assert abs(noise.std(correction=0).item() / (sigma / 255) - 1) < 0.05
    power = torch.fft.fft2(noise).abs().square().sum(dim=(0, 1))
    inside = power[radial_frequency(64, 64) <= 2 * cutoff].sum() / power.sum()
    assert inside > 0.9
    # white noise would put only the band's share of the bins there
    assert (radial_frequency(64, 64) <= 2 * cutoff).float().mean() < 0.15


# ---------------------------------------------------------------- JPEG


def test_jpeg_error_falls_with_quality(generator: torch.Generator) -> None:
    x = textured_image(SHAPE, generator)
    err = {q: (build_operator("jpeg", SHAPE, quality=q).degrade(x) - x).square().mean().item() for q in (10, 90)}
    assert err[10] > err[90] > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_of_a_constant_image_is_near_lossless(channels: int) -> None:
    shape = (channels, 32, 40)
    grey = torch.full((1, *shape), 128 / 255)  # the codec's level shift: exactly representable
    torch.testing.assert_close(build_operator("jpeg", shape, quality=10).degrade(grey), grey)
    colour = torch.tensor([0.2, 0.6, 0.9][:channels]).view(1, channels, 1, 1).expand(1, *shape)
    y = build_operator("jpeg", shape, quality=90).degrade(colour)
    assert (y - colour).abs().max() <= 2 / 255


# ---------------------------------------------------------------- inpainting


def inpaint_mask(shape: tuple[int, int, int], seed: int = 0, **params: object) -> Tensor:
    op = build_operator("inpaint", shape, seed, **params)
    assert isinstance(op, InpaintOperator)
    return op.mask


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 37, 50)])
def test_center_hole_has_the_area_and_is_centred(ratio: float, shape: tuple[int, int, int]) -> None:
    _, h, w = shape
    mask = inpaint_mask(shape, kind="center", ratio=ratio)[0, 0]
    holes = (mask == 0).nonzero()
    rows, cols = holes[:, 0], holes[:, 1]
    height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
    assert height * width == len(holes)  # one solid rectangle
    assert height == width  # a square (it fits: sides < min(H, W) here)
    assert abs(len(holes) - ratio * h * w) <= max(height, width) + 1  # within a row/column
    assert abs(rows.min().item() - (h - 1 - rows.max().item())) <= 1  # equal margins
    assert abs(cols.min().item() - (w - 1 - cols.max().item())) <= 1


def test_center_hole_is_clipped_to_a_thin_image() -> None:
    mask = inpaint_mask((1, 8, 64), kind="center", ratio=0.5)[0, 0]
    side = round(math.sqrt(0.5 * 8 * 64))  # 16 > H = 8: the square is cut to 8 × 16
    assert (mask == 0).any(dim=1).all()  # every row holds hole pixels
    assert ((mask == 0).sum(dim=1) == side).all()


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_bernoulli_mask_drops_the_requested_fraction(p: float) -> None:
    h, w = 64, 80
    mask = inpaint_mask((3, h, w), seed=7, kind="bernoulli", p=p)
    dropped = (mask == 0).float().mean().item()
    assert abs(dropped - p) < 3 * math.sqrt(p * (1 - p) / (h * w))
    assert mask.shape == (1, 1, h, w)  # one mask for all channels


@pytest.mark.parametrize("case", ["inpaint_center", "inpaint_bernoulli"])
def test_inpaint_hides_the_masked_pixels(case: str, generator: torch.Generator) -> None:
    op, x = make(case), torch.rand((2, *SHAPE), generator=generator) + 0.1
    hidden = (inpaint_mask(SHAPE, **CASES[case][1]) == 0).expand_as(x)
    for out in (op.A(x), op.degrade(x)):
        assert (out[hidden] == 0).all()
        assert torch.equal(out[~hidden], x[~hidden])


# ---------------------------------------------------------------- super-resolution


def ulyanov_lanczos2(factor: int) -> list[float]:
    """Ulyanov's get_kernel('lanczos', phase=0.5, kernel_width=4f+1, support=2), one axis."""
    width = 4 * factor + 1
    center = (width + 1) / 2
    values = []
    for i in range(1, width):  # phase 0.5: a (width − 1)-tap kernel
        d = abs(i + 0.5 - center) / factor
        values.append(2 * math.sin(math.pi * d) * math.sin(math.pi * d / 2) / (math.pi * d) ** 2)
    return [v / sum(values) for v in values]


@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8])
def test_lanczos_kernel_shape_and_symmetry(factor: int) -> None:
    k = lanczos_kernel(factor).double()
    taps = 4 * factor if factor % 2 == 0 else 4 * factor - 1
    assert k.shape == (taps,)
    assert abs(k.sum().item() - 1) < 1e-6
    torch.testing.assert_close(k, k.flip(0))
    assert k[taps // 2] == k.max() and k[(taps - 1) // 2] == k.max()
    assert (k[taps // 2 - factor + 1 : taps // 2 + factor] > 0).all()  # main lobe: |d| < 1


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_kernel_matches_ulyanov_for_even_factors(factor: int) -> None:
    expected = torch.tensor(ulyanov_lanczos2(factor), dtype=torch.float32)
    torch.testing.assert_close(lanczos_kernel(factor), expected)


@pytest.mark.parametrize("factor", [3, 4, 8])
def test_downsampler_keeps_constants_and_centres_blocks(factor: int) -> None:
    shape = (1, 48, 48)
    op = build_operator("superres", shape, factor=factor)
    low_shape = (2, 1, 48 // factor, 48 // factor)
    torch.testing.assert_close(op.A(torch.full((2, *shape), 0.37)), torch.full(low_shape, 0.37))
    # a ramp is reproduced exactly away from the border, sampled at each block's centre
    ramp = torch.arange(48, dtype=torch.float64).expand(1, 1, 48, 48)
    low = op.A(ramp)[0, 0, 0]
    block_centres = torch.arange(48 // factor, dtype=torch.float64) * factor + (factor - 1) / 2
    reach = 2 * factor  # the kernel's half-width in high-resolution pixels
    interior = (block_centres >= reach) & (block_centres <= 47 - reach)
    assert interior.any()
    torch.testing.assert_close(low[interior], block_centres[interior])


@pytest.mark.parametrize("factor", [4, 8])
def test_downsampler_is_close_to_pil_lanczos(factor: int) -> None:
    shape = (3, 96, 96)
    op, x = build_operator("superres", shape, factor=factor), smooth_image(shape)
    mse = (op.A(x) - op.degrade(x)).square().mean().item()
    assert 10 * math.log10(1 / mse) > 35


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("task", "params", "named"),
    [
        ("deblur", {}, "deblur"),
        ("clean", {"sigma": 25}, "sigma"),
        ("denoise", {}, "sigma"),
        ("denoise", {"sigma": 0}, "sigma"),
        ("denoise", {"sigma": 25, "sigmaa": 1}, "sigmaa"),
        ("lowfreq_noise", {"cutoff": 0}, "cutoff"),
        ("lowfreq_noise", {"cutoff": 1.5}, "cutoff"),
        ("jpeg", {"quality": 0}, "quality"),
        ("jpeg", {"quality": 96}, "quality"),
        ("jpeg", {"quality": 50.5}, "quality"),
        ("inpaint", {"kind": "random"}, "kind"),
        ("inpaint", {"kind": "center"}, "ratio"),
        ("inpaint", {"kind": "center", "ratio": 1.0}, "ratio"),
        ("inpaint", {"kind": "center", "ratio": 0.1, "p": 0.5}, "p"),
        ("inpaint", {"kind": "bernoulli", "p": 1.0}, "p"),
        ("inpaint", {"kind": "bernoulli", "ratio": 0.1}, "ratio"),
        ("superres", {"factor": 1}, "factor"),
        ("superres", {"factor": 3}, "factor"),  # does not divide 40 × 56
        ("superres", {"factor": True}, "factor"),
    ],
)
def test_bad_parameters_are_named(task: str, params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        build_operator(task, SHAPE, **params)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid tasks: clean, denoise"):
        build_operator("deblur", SHAPE)
    with pytest.raises(ValueError, match="valid parameters: sigma, cutoff"):
        build_operator("lowfreq_noise", SHAPE, sigm=25)


@pytest.mark.parametrize("shape", [(2, 32, 32), (3, 32), (3, 0, 32)])
def test_bad_image_shapes_are_named(shape: tuple) -> None:
    with pytest.raises(ValueError, match="image_shape"):
        build_operator("clean", shape)


def test_params_record_the_resolved_values() -> None:
    assert build_operator("lowfreq_noise", SHAPE).params == {"sigma": 25.0, "cutoff": 0.1}
    op = build_operator("inpaint", SHAPE, seed=5, kind="bernoulli")
    assert (op.name, op.params, op.seed) == ("inpaint", {"kind": "bernoulli", "p": 0.5}, 5)
    assert build_operator("enhance", SHAPE).name == "clean"


@pytest.mark.parametrize("task", list(TASK_PARAMS))
def test_the_task_table_lists_each_operators_parameters_and_valid_defaults(task: str) -> None:
    """The table manifests and `dip fit` are built from names every operator's parameters, and its
    defaults (`dip fit`'s) build the operator."""
    op = build_operator(task, SHAPE, **{p.name: p.default for p in TASK_PARAMS[task] if p.name != "p"})
    assert set(op.params) == {p.name for p in TASK_PARAMS[task]} - {"p"}
    if task == "inpaint":
        assert build_operator(task, SHAPE, kind="bernoulli", p=TASK_PARAMS[task][2].default).params["p"] == 0.5
