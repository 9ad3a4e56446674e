"""Tests for dipmodel.metrics: expected values from hand computation, independent NumPy code,
and numbers computed once with the authors' released functions (Shi et al.; see "Authors' numbers").

The NumPy references below follow the definitions as documented in the module (pixel loops,
centred FFT with fftshift) and share no code with it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dipmodel import metrics as M

# ---------------------------------------------------------------- fixtures and references


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def np_shi_grey(img: np.ndarray) -> np.ndarray:
    """(C, H, W) → (H, W): Shi et al.'s grey, clipped; one channel as it is."""
    return img[0] if img.shape[0] == 1 else np.clip(0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2], 0, 1)


def synthetic_image(h: int = 36, w: int = 44) -> np.ndarray:
    """A natural-looking colour image: smooth gradients, a bright square, a dark disc, texture."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.2 + 0.5 * x + 0.2 * np.sin(3 * y)
    square = ((y > 0.2) & (y < 0.5) & (x > 0.3) & (x < 0.6)) * 0.3
    disc = (((y - 0.6) ** 2 + (x - 0.7) ** 2) < 0.02) * -0.2
    texture = 0.03 * np.sin(40 * x) * np.cos(30 * y)
    grey = base + square + disc + texture
    return np.clip(np.stack([grey, 0.9 * grey + 0.05, 1.1 * grey - 0.05]), 0, 1)


def np_gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (C, H, W) with edge padding."""
    radius = int(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    out = sum(taps[i] * out[:, i : i + img.shape[1]] for i in range(len(taps)))
    out = np.pad(out, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return sum(taps[i] * out[:, :, i : i + img.shape[2]] for i in range(len(taps)))


def np_blurriness(img: np.ndarray) -> float:
    """Crete et al. 2007 as documented: 9-pixel box means, pairs (i, i+1) along an axis for
    i = 5 … n−7, in lines 6 … m−6 across it; the larger score of the two axes."""
    f = np_shi_grey(img)
    scores = []
    for g in (f, f.T):  # pairs along axis 0 of g
        n, m = g.shape
        s_f = s_v = 0.0
        for i in range(5, n - 6):
            for j in range(6, m - 5):
                d_f = abs(g[i + 1, j] - g[i, j])
                d_b = abs(g[i - 3 : i + 6, j].mean() - g[i - 4 : i + 5, j].mean())
                s_f += d_f
                s_v += max(0.0, d_f - d_b)
        scores.append((s_f - s_v) / s_f)
    return max(scores)


def np_sharpness(img: np.ndarray, top: int = 1000, decay: float = 0.01) -> float:
    """Bahrami & Kot MLV as documented: interior rows/cols 2 … side−2, zeros outside it, signed
    max(neighbour) − centre; ranks 2 … top of the descending values, weights exp(−decay·rank)."""
    g = np_shi_grey(img)
    h, w = g.shape
    rows, cols = range(2, h - 1), range(2, w - 1)

    def value(i: int, j: int) -> float:
        return g[i, j] if i in rows and j in cols else 0.0

    mlv = [
        max(value(i + di, j + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)) - g[i, j]
        for i in rows
        for j in cols
    ]
    values = np.sort(mlv)[::-1]
    ranks = np.arange(2, min(top + 1, len(values)))
    return float(np.sqrt(np.mean((np.exp(-decay * ranks) * values[ranks]) ** 2)))


# Real test images for the values computed with the authors' code (see "Authors' numbers").
DATA_ROOT = Path(os.environ.get("DIP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
# name: (file under the data root, crop height, crop width); centre crops, two of them non-square
REFERENCE_CROPS = {
    "f16": ("standard9/image_F16_512rgb.png", 128, 128),
    "kodim01": ("standard9/kodim01.png", 96, 128),  # landscape
    "cbsd68_101085": ("cbsd68/101085.png", 128, 96),  # portrait (321 wide, 481 high)
    "barbara": ("classic5/barbara.bmp", 128, 128),  # grey
}


def load_crop(path: Path, h: int, w: int) -> np.ndarray:
    """(C, h, w) float64 in [0, 1]: the centre crop of an 8-bit image, grey files as one channel."""
    with Image.open(path) as im:
        a = np.asarray(im)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)[:3]
    top, left = (a.shape[1] - h) // 2, (a.shape[2] - w) // 2
    return a[:, top : top + h, left : left + w].astype(np.float64) / 255.0


def reference_images(root: Path = DATA_ROOT) -> dict[str, np.ndarray]:
    """The crops, F16 with Gaussian noise σ = 25/255 (numpy default_rng(0), clipped to [0, 1]),
    and three crops blurred by np_gaussian_blur with σ = 2: all rebuilt bit for bit from the files."""
    clean = {name: load_crop(root / file, h, w) for name, (file, h, w) in REFERENCE_CROPS.items()}
    images = dict(clean)
    noise = np.random.default_rng(0).normal(0.0, 25 / 255, clean["f16"].shape)
    images["f16_noisy"] = np.clip(clean["f16"] + noise, 0.0, 1.0)
    for name in ("f16", "kodim01", "cbsd68_101085"):
        images[f"{name}_blurred"] = np_gaussian_blur(clean[name], 2.0)
    return images


def np_centred_radius(h: int, w: int) -> np.ndarray:
    """Distance of each fftshift-ed bin from the centre (H//2, W//2), in index units."""
    y, x = np.mgrid[0:h, 0:w]
    return np.hypot(y - h // 2, x - w // 2)


def np_radial_filter(grey: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep only the centred FFT bins where `keep` is true; exact in the FFT domain."""
    spectrum = np.fft.fftshift(np.fft.fft2(grey)) * keep
    return np.real(np.fft.ifft2(np.fft.ifftshift(spectrum)))


# ---------------------------------------------------------------- grey and PSNR


def test_to_grey_luma_and_passthrough() -> None:
    x = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 0.5, 0.25
    grey = M.to_grey(x)
    assert grey.shape == (2, 1, 4, 5)
    torch.testing.assert_close(grey, torch.full_like(grey, 0.299 + 0.2935 + 0.0285))
    one = torch.rand(2, 1, 4, 5)
    assert M.to_grey(one) is one
    assert M.to_grey(torch.rand(3, 4, 5)).shape == (1, 1, 4, 5)
    with pytest.raises(ValueError):
        M.to_grey(torch.rand(1, 2, 4, 5))


def test_shi_grey_weights_clipping_and_passthrough() -> None:
    x = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 0.5, 0.25
    x[1, :, 0, 0] = torch.tensor([1.2, 1.0, 1.0])  # out of range: the grey is clipped to 1
    grey = M.shi_grey(x)
    assert grey.shape == (2, 1, 4, 5)
    expected = torch.full_like(grey, 0.2989 + 0.2935 + 0.0285)
    expected[1, 0, 0, 0] = 1.0
    torch.testing.assert_close(grey, expected)
    one = torch.rand(2, 1, 4, 5) * 2  # one channel: as it is, not clipped
    assert M.shi_grey(one) is one
    with pytest.raises(ValueError):
        M.shi_grey(torch.rand(1, 2, 4, 5))


def test_psnr_hand_computed(rng: np.random.Generator) -> None:
    x = t64(0.3 + 0.4 * rng.random((3, 3, 8, 9)))
    assert M.psnr(x + 0.1, x) == pytest.approx([20.0] * 3, abs=1e-9)  # MSE 0.01
    y = x.clone()
    y[1] += 0.01  # MSE 1e-4 → 40 dB for image 1 only
    assert M.psnr(y, x)[1].item() == pytest.approx(40.0, abs=1e-9)
    assert torch.isinf(M.psnr(x, x)).all()
    assert M.psnr(x[0] + 0.1, x[0]).shape == (1,)


# ---------------------------------------------------------------- FBC


def test_fbc_identical_and_scaled(rng: np.random.Generator) -> None:
    target = t64(rng.random((3, 3, 32, 32)))
    same = M.fbc(target, target)  # |F| / (|F| + 1e-8): 1 up to 1e-8 / |F|
    assert same.shape == (3, 5)
    torch.testing.assert_close(same, torch.ones(3, 5, dtype=torch.float64), atol=1e-6, rtol=0)
    half = M.fbc(0.5 * target, target)  # the grey is linear in [0, 1]: every ratio is 0.5
    torch.testing.assert_close(half, torch.full((3, 5), 0.5, dtype=torch.float64), atol=1e-6, rtol=0)
    assert M.fbc(target[0], target[0]).shape == (1, 5)
    assert M.fbc(target, target, bands=4).shape == (3, 4)


@pytest.mark.parametrize("size", [(32, 32), (33, 33), (24, 40), (40, 24), (31, 45)])
@pytest.mark.parametrize("n_pass", [1, 2, 3, 4])
def test_fbc_low_pass_copy(rng: np.random.Generator, size: tuple[int, int], n_pass: int) -> None:
    """Keeping the target's FFT bins at d ≤ r_n = int(W/2)·n/5 fills rings 1 … n and empties the rest.

    The edges are inclusive and the unit is half the width: for W = 40 (unit 20) bins lie
    exactly on every edge (d = 4, 8, …), and for H = 40, W = 24 the unit is 12, not 20.
    The test compares d² · 25 with (n · unit)² in integers.
    """
    h, w = size
    target = rng.random((1, h, w))
    d2 = np.rint(np_centred_radius(h, w) ** 2).astype(np.int64)
    output = np_radial_filter(target[0], d2 * 25 <= (n_pass * (w // 2)) ** 2)[None]
    got = M.fbc(t64(output), t64(target))[0]
    expected = torch.tensor([1.0] * n_pass + [0.0] * (5 - n_pass), dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # 1 − 1e-8/|F| in kept bins


@pytest.mark.parametrize("size", [(24, 40), (40, 24)])
def test_fbc_ignores_bins_beyond_half_the_width(rng: np.random.Generator, size: tuple[int, int]) -> None:
    h, w = size
    target = rng.random((1, h, w))
    output = np_radial_filter(target[0], np_centred_radius(h, w) <= w // 2)[None]  # remove every bin beyond
    torch.testing.assert_close(
        M.fbc(t64(output), t64(target)), torch.ones(1, 5, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_fbc_first_ring_holds_the_zero_frequency(rng: np.random.Generator) -> None:
    """Only the DC bin differs (output = target − its mean): ring 1 alone drops below 1."""
    target = rng.random((1, 1, 32, 32))
    got = M.fbc(t64(target - target.mean()), t64(target))[0]
    ring1 = (np_centred_radius(32, 32) <= 16 * 0.2).sum()  # the 37 bins with d ≤ 3.2, DC included
    assert ring1 == 37
    expected = torch.tensor([1 - 1 / ring1, 1, 1, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_fbc_rejects_empty_rings() -> None:
    with pytest.raises(ValueError, match="ring empty"):
        M.fbc(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))


# ---------------------------------------------------------------- blurriness and sharpness


@pytest.mark.parametrize("kind", ["random_grey", "random_colour", "synthetic"])
def test_blur_and_sharpness_match_numpy(rng: np.random.Generator, kind: str) -> None:
    img = {
        "random_grey": lambda: rng.random((1, 36, 44)),
        "random_colour": lambda: rng.random((3, 36, 44)),
        "synthetic": synthetic_image,
    }[kind]()
    x = t64(img)
    assert M.blurriness(x).item() == pytest.approx(np_blurriness(img), rel=1e-5)
    assert M.sharpness(x).item() == pytest.approx(np_sharpness(img), rel=1e-5)  # 1584 px > top
    assert M.sharpness(x, top=50, decay=0.05).item() == pytest.approx(np_sharpness(img, 50, 0.05), rel=1e-5)
    ratio = np_blurriness(img) / np_sharpness(img)
    assert M.blur_sharp_ratio(x).item() == pytest.approx(ratio, rel=1e-5)


def test_sharpness_uses_all_pixels_when_fewer_than_top(rng: np.random.Generator) -> None:
    img = rng.random((1, 10, 12))
    assert M.sharpness(t64(img)).item() == pytest.approx(np_sharpness(img), rel=1e-5)


def test_gaussian_blur_raises_blurriness_and_lowers_sharpness() -> None:
    img = synthetic_image()
    blurred = np_gaussian_blur(img, 1.5)
    x = torch.stack([t64(img), t64(blurred)])
    blur, sharp = M.blurriness(x), M.sharpness(x)
    assert blur[1] > blur[0]
    assert sharp[1] < sharp[0]


def test_constant_image() -> None:
    flat = torch.full((2, 3, 16, 16), 0.4)
    assert torch.equal(M.sharpness(flat), torch.zeros(2))
    assert torch.equal(M.blurriness(flat), torch.ones(2))  # documented: nothing left to blur
    assert torch.isinf(M.blur_sharp_ratio(flat)).all()


# ---------------------------------------------------------------- Authors' numbers

# Computed once, outside this repository, with the functions the authors released with Shi et al.
# 2022 (github.com/shizenglin/Measure-and-Control-Spectral-Bias, commit ed2d371,
# code/utils/measure_utils.py: PerceptualBlurMetric, MLVSharpnessMeasure, get_circular_statastic
# with size=0.2), in float64 on the images of reference_images(): centre crops of the files in
# REFERENCE_CROPS, colour ones passed as H×W×3 arrays and the grey one as an H×W array, as their
# scripts call them. Values: blurriness, sharpness, their ratio.
AUTHORS_BLUR_SHARP_RATIO = {
    "f16": (0.290697661746, 0.0995065235621, 2.92139300359),
    "kodim01": (0.1699999019, 0.10573273927, 1.60782651687),
    "cbsd68_101085": (0.211991028145, 0.122021930803, 1.73731907659),
    "barbara": (0.24197513247, 0.123321217655, 1.96215328612),
    "f16_noisy": (0.208929089751, 0.119421399433, 1.74951131659),
    "f16_blurred": (0.623155998591, 0.0282262023605, 22.0772171415),
    "kodim01_blurred": (0.546597917931, 0.0198873217394, 27.4847425457),
    "cbsd68_101085_blurred": (0.63637210052, 0.0231720740238, 27.4628891599),
}
# (output, target): their 5 FBC bands, lowest first (square, landscape 96×128, portrait 128×96).
AUTHORS_FBC = {
    ("f16_blurred", "f16"): (0.731111817811, 0.308862311024, 0.190536749232, 0.194821923573, 0.226003205539),
    ("f16", "f16_noisy"): (0.948014665217, 0.852519701861, 0.736040121659, 0.565959933042, 0.382640828084),
    ("kodim01_blurred", "kodim01"): (0.657521953999, 0.236425995593, 0.123806281538, 0.114015524598, 0.0958246537656),
    ("cbsd68_101085_blurred", "cbsd68_101085"): (
        0.794716241411,
        0.39784840759,
        0.212517851895,
        0.168939406067,
        0.154705851941,
    ),
}
# float64 agrees to rounding; float32 (as a GPU fit computes them) to about 1e-6.
TOLERANCE = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-5)}  # (relative, FBC absolute)


@pytest.fixture(scope="module")
def authors_images() -> dict[str, np.ndarray]:
    missing = [f for f, _, _ in REFERENCE_CROPS.values() if not (DATA_ROOT / f).is_file()]
    if missing:
        pytest.skip(f"test data not found at {DATA_ROOT} ({missing[0]}); set DIP_DATA_ROOT")
    return reference_images()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blur_sharpness_ratio_equal_the_authors(authors_images: dict, dtype: torch.dtype) -> None:
    rel, _ = TOLERANCE[dtype]
    names = list(AUTHORS_BLUR_SHARP_RATIO)
    for name in names:  # one at a time: the sizes differ
        x = torch.from_numpy(authors_images[name]).to(dtype)
        got = [M.blurriness(x).item(), M.sharpness(x).item(), M.blur_sharp_ratio(x).item()]
        assert got == pytest.approx(AUTHORS_BLUR_SHARP_RATIO[name], rel=rel), name
    square = torch.stack([torch.from_numpy(authors_images[n]).to(dtype) for n in ("f16", "f16_noisy", "f16_blurred")])
    batched = M.blur_sharp_ratio(square).tolist()  # a batch gives each image's own value
    assert batched == pytest.approx(
        [AUTHORS_BLUR_SHARP_RATIO[n][2] for n in ("f16", "f16_noisy", "f16_blurred")], rel=rel
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fbc_equals_the_authors(authors_images: dict, dtype: torch.dtype) -> None:
    _, atol = TOLERANCE[dtype]
    for (out, tgt), expected in AUTHORS_FBC.items():
        got = M.fbc(torch.from_numpy(authors_images[out]).to(dtype), torch.from_numpy(authors_images[tgt]).to(dtype))
        np.testing.assert_allclose(got[0].double().numpy(), expected, atol=atol, rtol=0, err_msg=f"{out} vs {tgt}")


# ---------------------------------------------------------------- automatic stop (Shi Eq. 8)


def direct_delta(r: np.ndarray, t: int, n: int) -> float:
    return abs(float(np.mean(r[t - n : t])) - float(np.mean(r[t - 2 * n : t - n])))


def direct_autostop(r: np.ndarray, n: int, eps: float) -> int | None:
    for t in range(2 * n, len(r)):
        if direct_delta(r, t, n) < eps:
            return t
    return None


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [5, 50])
def test_autostop_matches_direct_loop(seed: int, n: int) -> None:
    g = np.random.default_rng(seed)
    steps = g.normal(0, 0.05, 1500) * np.exp(-np.arange(1500) / 300)
    r = 1.0 + np.cumsum(steps) + 0.01 * g.random(1500)
    expected = direct_autostop(r, n, 0.002)
    assert expected is not None  # the series does settle: the test compares a real stop
    assert M.first_autostop(t64(r), n=n, eps=0.002) == expected
    series = t64(r)
    for t in [2 * n, 2 * n + 7, 777, 1500]:
        got = M.autostop_delta(series, t, n)
        assert got.dim() == 0
        assert got.item() == pytest.approx(direct_delta(r, t, n), rel=1e-12, abs=1e-15)


def test_autostop_hand_built_ramp() -> None:
    """r(t) = 3 + 0.5·min(t, t0): Δr(t) ≥ 0.5/n until the older window is flat, i.e. t − 2n ≥ t0."""
    t0, n = 37, 5
    r = 3 + 0.5 * np.minimum(np.arange(80), t0)
    assert M.first_autostop(t64(r), n=n, eps=0.01) == t0 + 2 * n == 47
    assert direct_autostop(r, n, 0.01) == 47
    assert M.autostop_delta(t64(r), 46, n).item() == pytest.approx(0.5 / n)
    assert M.autostop_delta(t64(r), 47, n).item() == 0.0
    assert M.first_autostop(t64(r[:47]), n=n, eps=0.01) is None  # never flat inside the series
    assert M.first_autostop(t64(r[:10]), n=n) is None  # too short for two windows


def test_autostop_delta_rejects_undefined_t() -> None:
    with pytest.raises(ValueError):
        M.autostop_delta(torch.ones(30), 19, 10)
    with pytest.raises(ValueError):
        M.autostop_delta(torch.ones(30), 31, 10)


# ---------------------------------------------------------------- Chakrabarty & Maji


def test_trajectory_divergence_hand_computed() -> None:
    t1 = torch.zeros(3, 1, 2, 2)
    t2 = torch.stack([torch.full((1, 2, 2), 0.5 * i) for i in range(3)])
    torch.testing.assert_close(M.trajectory_divergence(t1, t2), torch.tensor([0.0, 1.0, 4.0]))


@pytest.mark.parametrize("length", [256, 255])
@pytest.mark.parametrize("k", [1, 5, 50, 127])
def test_amplitude_of_sinusoid(length: int, k: int) -> None:
    t = np.arange(length)
    x = 0.2 + 0.7 * np.sin(2 * np.pi * k * t / length + 0.3)
    amps = M.amplitude_spectrum_1d(t64(x))
    assert amps.shape == (length // 2 + 1,)
    expected = np.zeros(length // 2 + 1)
    expected[0], expected[k] = 0.2, 0.7
    np.testing.assert_allclose(amps.numpy(), expected, atol=1e-12)


def test_amplitude_of_nyquist() -> None:
    x = 0.4 * np.cos(np.pi * np.arange(64))  # ±0.4
    assert M.amplitude_spectrum_1d(t64(x))[32].item() == pytest.approx(0.4, rel=1e-12)


def test_amplitude_error() -> None:
    """C&M's x0 = sin(2πk1 t) + sin(2πk2 t) with k1 = 5, k2 = 50, t on [0, 1)."""
    t = np.arange(512) / 512
    x0 = t64(np.sin(2 * np.pi * 5 * t) + np.sin(2 * np.pi * 50 * t))
    torch.testing.assert_close(M.amplitude_error(x0, x0, [5, 50]), torch.zeros(2, dtype=torch.float64))
    half_low = t64(0.5 * np.sin(2 * np.pi * 5 * t) + np.sin(2 * np.pi * 50 * t))
    batch = torch.stack([x0, half_low])  # (T, L) → (T, K)
    expected = torch.tensor([[0.0, 0.0], [0.25, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(M.amplitude_error(batch, x0, [5, 50]), expected)


def test_first_convergence_hand_built() -> None:
    se = torch.tensor(
        [
            [1.0, 1.0, 1.0],
            [0.005, 1.0, 0.5],
            [0.02, 0.5, 0.5],
            [0.001, 0.01, 0.5],  # δ itself counts as converged
            [0.0, 0.001, 0.5],
        ]
    )
    assert M.first_convergence(se).tolist() == [1, 3, -1]
    assert M.first_convergence(se, stay=True).tolist() == [3, 3, -1]
    assert M.first_convergence(se, delta=0.6).tolist() == [1, 2, 1]
    assert M.first_convergence(se, delta=0.6, stay=True).tolist() == [1, 2, 1]


def test_radial_power_spectrum_cosine() -> None:
    """A cosine at (fy, fx) = (3, 4) puts all non-DC power in radius bin 5."""
    h = w = 32
    y, x = np.mgrid[0:h, 0:w]
    img = 0.5 + 0.25 * np.cos(2 * np.pi * (3 * y + 4 * x) / 32)
    got = M.radial_power_spectrum(t64(img[None]))[0].numpy()
    assert got.shape == (17,)
    counts = np.bincount(np.rint(np_centred_radius(h, w)).astype(int).ravel())
    expected = np.zeros(17)
    expected[0] = 0.5**2 * h * w  # orthonormal FFT: DC = mean · sqrt(HW)
    expected[5] = 2 * 0.25**2 * h * w / 4 / counts[5]  # two bins at ±(3, 4)
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_radial_power_spectrum_parseval(rng: np.random.Generator) -> None:
    """For an image with no power in the dropped corners, Σ_r mean_r · count_r = Σ pixel²."""
    h, w = 24, 40
    radius = np.rint(np_centred_radius(h, w)).astype(int)
    img = np_radial_filter(rng.random((h, w)), radius <= 12)
    got = M.radial_power_spectrum(t64(img[None]))[0].numpy()
    counts = np.bincount(radius.ravel())[:13]
    assert got @ counts == pytest.approx(np.sum(img**2), rel=1e-10)


def test_power_spectrum_error(rng: np.random.Generator) -> None:
    x = t64(rng.random((2, 3, 20, 24)))
    assert torch.equal(M.power_spectrum_error(x, x), torch.zeros(2, 11, dtype=torch.float64))
    grey = M.to_grey(x)
    err = M.power_spectrum_error(0.5 * grey, grey)  # power scales by 1/4 in every bin
    torch.testing.assert_close(err, torch.full_like(err, math.log(4.0)), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- every metric: dtype, shape, no_grad

N, C, H, W = 2, 3, 20, 24
METRICS = {
    "to_grey": (lambda a, b: M.to_grey(a), (N, 1, H, W)),
    "shi_grey": (lambda a, b: M.shi_grey(a), (N, 1, H, W)),
    "psnr": (M.psnr, (N,)),
    "fbc": (M.fbc, (N, 5)),
    "blurriness": (lambda a, b: M.blurriness(a), (N,)),
    "sharpness": (lambda a, b: M.sharpness(a), (N,)),
    "blur_sharp_ratio": (lambda a, b: M.blur_sharp_ratio(a), (N,)),
    "trajectory_divergence": (M.trajectory_divergence, (N,)),
    "radial_power_spectrum": (lambda a, b: M.radial_power_spectrum(a), (N, 11)),
    "power_spectrum_error": (M.power_spectrum_error, (N, 11)),
    "amplitude_spectrum_1d": (lambda a, b: M.amplitude_spectrum_1d(a), (N, C, H, W // 2 + 1)),
    "amplitude_error": (lambda a, b: M.amplitude_error(a, b, [1, 5]), (N, C, H, 2)),
    "autostop_delta": (lambda a, b: M.autostop_delta(a.flatten(), 10, 5), ()),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_dtype_and_shape(name: str, dtype: torch.dtype) -> None:
    fn, shape = METRICS[name]
    g = torch.Generator().manual_seed(1)
    a = torch.rand(N, C, H, W, generator=g, dtype=dtype)
    b = torch.rand(N, C, H, W, generator=g, dtype=dtype)
    with torch.no_grad():
        out = fn(a, b)
    assert out.shape == shape
    assert out.dtype == dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_runs_without_reading_values(name: str) -> None:
    """On the meta device a tensor has no values, so any host read (.item(), a branch on a
    value, a data-dependent shape) would raise: the per-iteration metrics never sync."""
    fn, shape = METRICS[name]
    a = torch.empty(N, C, H, W, device="meta")
    out = fn(a, a)
    assert out.shape == shape
    assert out.device.type == "meta"
