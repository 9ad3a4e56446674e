"""The papers' qualitative claims, reproduced on the CPU at small scale.

These are the slowest tests (about a minute each on two cores); they are what shows the code
does science and not only arithmetic. Figures they print are quoted in the issue notes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dipmodel import metrics as M
from dipmodel.fit import FitConfig, fit
from dipmodel.networks import NetConfig
from dipmodel.operators import build_operator
from pipeline.images import center_crop, load_image

DATA_ROOT = Path(os.environ.get("DIP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def c4_convergence(name: str, iterations: int) -> tuple[int, int]:
    """C&M §3.1: fit x0 = sin(2π5t) + sin(2π50t) and return when SE(k1), SE(k2) first reach δ."""
    length = 256
    t = torch.arange(length) / length
    x0 = (torch.sin(2 * torch.pi * 5 * t) + torch.sin(2 * torch.pi * 50 * t))[None, None]
    op = build_operator("clean", (1, 1, length))
    net = NetConfig(name=name, out_channels=1)  # paper size: 10 layers of 256 channels / units
    result = fit(
        net,
        op,
        x0,
        None,
        FitConfig(iterations=iterations, lr=1e-3, auto_stop=False, spectral=False),
        extra_metrics={"se": lambda out: M.amplitude_error(out[0, 0], x0[0, 0], [5, 50])},
    )
    se = torch.from_numpy(np.stack([result.metrics["se_1"], result.metrics["se_2"]], axis=1))
    k1, k2 = (int(i) for i in M.first_convergence(se, delta=0.01))
    return k1, k2


@pytest.mark.slow
def test_c4_conv_layers_fit_the_low_frequency_first() -> None:
    k1, k2 = c4_convergence("dip_conv_1d", 700)
    print(f"\nC4 DIP-Conv-1D: k1=5 converged at iteration {k1}, k2=50 at {k2} (paper: 45 and 151)")
    assert 0 <= k1 < 100, "k1 converges early"
    assert k2 == -1 or k2 > k1 + 200, "k2 converges much later than k1, if at all within the budget"


@pytest.mark.slow
def test_c4_linear_layers_fit_both_frequencies_together() -> None:
    k1, k2 = c4_convergence("dip_linear_1d", 300)
    print(f"\nC4 DIP-Linear-1D: k1=5 converged at iteration {k1}, k2=50 at {k2} (paper: together)")
    assert k1 >= 0 and k2 >= 0, "both frequencies converge"
    assert abs(k1 - k2) <= 10


@pytest.fixture(scope="module")
def noisy_crop() -> tuple[torch.Tensor, object, torch.Tensor]:
    path = DATA_ROOT / "standard9" / "image_F16_512rgb.png"
    if not path.exists():
        pytest.skip(f"test data not found at {path}; set DIP_DATA_ROOT")
    clean = center_crop(load_image(path), 32, 64)[None]
    op = build_operator("denoise", (3, 64, 64), seed=0, sigma=25)
    return clean, op, op.degrade(clean)


def denoise(noisy_crop: tuple, lam: float | None, iterations: int = 1500):
    clean, op, y = noisy_crop
    net = NetConfig(name="decoder", width=32, lam=lam)
    return fit(net, op, y, clean, FitConfig(iterations=iterations, lr=1e-3, metric_stride=10, stop_window=100))


@pytest.fixture(scope="module")
def unconstrained(noisy_crop):
    return denoise(noisy_crop, None)


@pytest.fixture(scope="module")
def constrained(noisy_crop):
    return denoise(noisy_crop, 2.0)


def first_iteration(metrics: dict, column: str, level: float) -> float:
    reached = np.flatnonzero(metrics[column] >= level)
    return float(metrics["iteration"][reached[0]]) if len(reached) else float("inf")


@pytest.mark.slow
def test_spectral_bias_low_band_before_high_band(unconstrained) -> None:
    """Shi Fig. 3: the lowest FBC band is matched long before the highest."""
    low = first_iteration(unconstrained.metrics, "fbc_1", 0.9)
    high = first_iteration(unconstrained.metrics, "fbc_5", 0.5)
    print(f"\nFBC: lowest band reached 0.9 at iteration {low}, highest band reached 0.5 at {high}")
    assert low < high


@pytest.mark.slow
def test_lipschitz_bound_slows_the_decay(unconstrained, constrained) -> None:
    """Shi Fig. 5: without a bound the fit over-fits the noise; with λ = 2 it decays less."""
    drop_free = unconstrained.best_psnr - unconstrained.final_psnr
    drop_lam = constrained.best_psnr - constrained.final_psnr
    print(
        f"\nunconstrained: peak {unconstrained.best_psnr:.2f} dB at {unconstrained.best_iteration}, "
        f"final {unconstrained.final_psnr:.2f} dB (drop {drop_free:.2f}); λ=2: peak {constrained.best_psnr:.2f} dB "
        f"at {constrained.best_iteration}, final {constrained.final_psnr:.2f} dB (drop {drop_lam:.2f})"
    )
    assert drop_free > 1.0, "the unconstrained Decoder over-fits the noise"
    assert drop_lam < drop_free / 2


@pytest.mark.slow
@pytest.mark.xfail(
    reason="known limitation, measured 2026-12-04 on two CPU cores: with one thread this fit collapses at "
    "iteration 1,260 (PSNR 31.8 → 16.2 dB); backtracking restores the parameters but keeps Adam's moments, as "
    "the authors' loops do, so it collapses twice more and ends at 26.8 dB against a 32.0 dB oracle; with two "
    "threads the same fit ends at 31.2 against 31.6 dB. Whether a λ = 2 fit keeps its peak depends here on "
    "float rounding, so the safeguard does not guarantee it",
    strict=False,
)
def test_the_lambda_2_camera_fit_ends_near_its_oracle(tmp_path: Path) -> None:
    """The quickstart fit that once collapsed to a constant output at iteration ≈ 1,255
    (`dip fit skimage:camera --crop 64 --task denoise --sigma 15 --lam 2 --width 32 --depth 5
    --iters 1500`): its final output should be within 1 dB of its oracle peak, as the papers'
    λ = 2 Decoder's is (Shi §4.2: no decay at λ = 2)."""
    import json

    from pipeline.cli import main

    torch.set_num_threads(1)
    assert (
        main(
            [
                "fit",
                "skimage:camera",
                "--crop",
                "64",
                "--task",
                "denoise",
                "--sigma",
                "15",
                "--lam",
                "2",
                "--width",
                "32",
                "--depth",
                "5",
                "--iters",
                "1500",
                "--seed",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_psnr"] > 28  # it did fit the image (the noisy input is at 24.6 dB)
    assert summary["best_psnr"] - summary["final_psnr"] < 1.0, summary
