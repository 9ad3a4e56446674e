"""Claim checks on hand-made sweeps whose verdicts follow from the papers' statements by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from pipeline.claims import verdict_lines, verdicts
from pipeline.single import band_convergence

NONE = math.nan  # the summary's λ of an unconstrained fit


def s3_fits(lam3_final: float = 28.5, lams: tuple[float, ...] = (NONE, 1.0, 2.0, 3.0)) -> pd.DataFrame:
    """Two images per λ: unconstrained 30 → 28 dB, λ 1 27 → 27, λ 2 29.5 → 29.4, λ 3 30 → lam3_final."""
    peaks = {1.0: (27.0, 27.0), 2.0: (29.5, 29.4), 3.0: (30.0, lam3_final)}
    rows = []
    for lam in lams:
        best, final = (30.0, 28.0) if math.isnan(lam) else peaks[lam]
        for image in ("a", "b"):
            rows.append(
                {"key": f"{lam}-{image}", "experiment": "S3", "kind": "image", "lam": lam}
                | {"best_psnr": best, "final_psnr": final, "best_iteration": 500}
            )
    return pd.DataFrame(rows)


def final_fbc5(key: str) -> pd.DataFrame:
    """Band 5 ends at 0.9 unconstrained, 0.7 / 0.6 / 0.3 for λ 3 / 2 / 1: none > 3 ≥ 2 > 1."""
    lam = key.split("-")[0]
    end = {"nan": 0.9, "3.0": 0.7, "2.0": 0.6, "1.0": 0.3}[lam]
    return pd.DataFrame({"iteration": [0, 100], "fbc_5": [0.0, end]})


@dataclass
class Stored:
    """A sweep's files made by hand: metrics curves by key, snapshot trajectories and clean images."""

    curves: Callable[[str], pd.DataFrame] = final_fbc5
    trajectories: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cleans: dict[str, np.ndarray] = field(default_factory=dict)

    def metrics(self, key: str) -> pd.DataFrame:
        return self.curves(key)

    def snapshots(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.trajectories.get(key)

    def image(self, key: str, name: str) -> np.ndarray | None:
        return self.cleans.get(key) if name == "clean" else None


def verdict_of(fits: pd.DataFrame, claim: str, metrics=final_fbc5, **stored):  # type: ignore[no-untyped-def]
    return next(v for v in verdicts(fits, Stored(metrics, **stored)) if v.claim == claim)


def test_s3_holds_when_every_part_does() -> None:
    v = verdict_of(s3_fits(), "S3")
    assert v.status == "holds", v.checks
    assert v.fits == 8 and all(c.ok for c in v.checks)
    by_part = {c.asked.split(":")[0]: c.ours for c in v.checks}
    assert by_part["unconstrained"] == "2.00 dB"  # 30 − 28
    assert by_part["λ = 2"] == "0.10 dB"  # 29.5 − 29.4


def test_s3_does_not_hold_when_lambda_3_stays_flat() -> None:
    v = verdict_of(s3_fits(lam3_final=29.8), "S3")  # decays 0.2 dB, not > 1
    assert v.status == "does not hold"
    [failed] = [c for c in v.checks if not c.ok]
    assert failed.asked.startswith("λ = 3") and failed.ours == "0.20 dB"


def test_s3_is_not_run_without_every_lambda_and_absent_from_the_table_without_fits() -> None:
    partial = verdict_of(s3_fits(lams=(NONE, 2.0)), "S3")
    assert partial.status == "not run"
    assert sum(c.ours is None for c in partial.checks) == 3  # λ 3 decay, λ 1 peak, the FBC order
    none = verdict_of(s3_fits().assign(experiment="C1"), "S3")
    assert none.status == "not run" and none.fits == 0
    assert not any("| S3 |" in line for line in verdict_lines(verdicts(s3_fits().assign(experiment="C1"), Stored())))


@pytest.mark.parametrize(
    "stop, stop_psnr, expected",
    [
        (900.0, 30.95, "holds"),
        (2900.0, 30.95, "does not hold"),
        (900.0, 30.5, "does not hold"),
        (NONE, NONE, "does not hold"),
    ],
)
def test_s5_asks_an_early_stop_at_the_budgets_psnr(stop: float, stop_psnr: float, expected: str) -> None:
    """900 of 3000 iterations is 30 % ≤ 75 %; 31.00 − 30.95 = 0.05 ≤ 0.3 dB; 2900 is 97 %; 0.5 dB is too far."""
    fits = pd.DataFrame(
        {"key": ["k"], "experiment": ["S5"], "kind": ["image"], "lam": [2.0], "iterations": [3000]}
        | {"stop_iteration": [stop], "stop_psnr": [stop_psnr], "final_psnr": [31.0]}
    )
    assert verdict_of(fits, "S5").status == expected


def test_band_convergence_and_the_band_order_claim() -> None:
    """Band 1 reaches 90 % of its maximum at iteration 10, band 5 at 40; the peak (50) comes after."""
    it = np.arange(0, 60, 10)
    curves = pd.DataFrame({"iteration": it, "fbc_1": [0, 0.95, 1, 1, 1, 1], "fbc_5": [0, 0, 0.1, 0.2, 0.5, 0.5]})
    assert band_convergence(curves) == [10.0, 40.0]
    fits = pd.DataFrame({"key": ["k"], "experiment": ["S1"], "kind": ["image"], "best_iteration": [50]})
    v = verdict_of(fits, "S1", lambda key: curves)
    assert v.status == "holds"
    early_peak = verdict_of(fits.assign(best_iteration=5), "S1", lambda key: curves)
    assert early_peak.status == "does not hold"


def unread(key: str) -> pd.DataFrame:
    raise AssertionError(f"metrics of {key} read")


def test_the_band_order_claim_takes_band_convergence_from_the_summary_row() -> None:
    """fbc_converged_1 = 10 < fbc_converged_5 = 40 and the peak (50) after band 1: holds, with no metrics read."""
    fits = pd.DataFrame(
        {"key": ["k"], "experiment": ["S1"], "kind": ["image"], "best_iteration": [50]}
        | {"fbc_converged_1": [10], "fbc_converged_5": [40]}
    )
    assert verdict_of(fits, "S1", unread).status == "holds"
    assert verdict_of(fits.assign(fbc_converged_1=45), "S1", unread).status == "does not hold"


def test_c6_gap_and_the_markdown_lines() -> None:
    fits = pd.DataFrame(
        {"key": ["a", "b"], "experiment": ["C6"] * 2, "kind": ["image"] * 2}
        | {"model": ["encoder_decoder_skip", "dip_linear"], "best_psnr": [28.0, 23.5]}
    )
    found = verdicts(fits, Stored())
    assert verdict_of(fits, "C6").status == "holds"  # 4.5 dB > 4
    lines = verdict_lines(found)
    assert any(line.startswith("| C6 |") and "**holds**" in line for line in lines)
    assert any("4.50 dB" in line for line in lines)
    assert verdict_of(fits.assign(best_psnr=[26.0, 23.5]), "C6").status == "does not hold"  # 2.5 dB


def test_s4_plateau_order_and_lowest_peak() -> None:
    """σ 0 reaches 30 dB at iteration 10 and peaks at 30.2; σ 0.5 and 1 reach within 0.5 dB of
    their 31 dB peaks at 20 and 30: plateaus 10 ≤ 20 ≤ 30 and σ 0 peaks lowest."""
    curves = {
        0.0: [20.0, 30.0, 30.1, 30.2],
        0.5: [20.0, 25.0, 30.6, 31.0],
        1.0: [20.0, 22.0, 28.0, 31.0],
    }
    fits = pd.DataFrame(
        {"key": [str(s) for s in curves], "experiment": ["S4"] * 3, "kind": ["image"] * 3}
        | {"up_sigma": list(curves), "best_psnr": [max(c) for c in curves.values()]}
    )

    def metrics(key: str) -> pd.DataFrame:
        return pd.DataFrame({"iteration": [0, 10, 20, 30], "psnr_clean": curves[float(key)]})

    v = verdict_of(fits, "S4", metrics)
    assert v.status == "holds" and v.checks[0].ours == "σ 0: 10, σ 0.5: 20, σ 1: 30"
    swapped = fits.assign(up_sigma=[0.0, 1.0, 0.5])  # σ 1 now the fast one
    assert verdict_of(swapped, "S4", lambda key: metrics(key)).status == "does not hold"
    stored = fits.assign(plateau_iteration=[10, 20, 30])  # the worker's summary column: no metrics read
    assert verdict_of(stored, "S4", unread).checks[0].ours == v.checks[0].ours


def test_s3_takes_the_final_band_5_fbc_from_the_summary_row() -> None:
    fits = s3_fits()
    stored = fits.assign(fbc_final_5=[final_fbc5(key)["fbc_5"].iloc[-1] for key in fits["key"]])
    assert [c.ours for c in verdict_of(stored, "S3", unread).checks] == [c.ours for c in verdict_of(fits, "S3").checks]


def test_s2_convnet_matches_band_5_sooner_and_peaks_lower() -> None:
    """Decoder: band 1 at 10, band 5 at 30; ConvNet: band 1 at 10, band 5 at 20 (90 % of each
    band's maximum), peaks 26 vs 28 dB."""
    curves = {
        "decoder": pd.DataFrame({"iteration": [0, 10, 20, 30], "fbc_1": [0, 1, 1, 1], "fbc_5": [0, 0.1, 0.2, 0.5]}),
        "convnet": pd.DataFrame({"iteration": [0, 10, 20, 30], "fbc_1": [0, 1, 1, 1], "fbc_5": [0, 0.1, 0.5, 0.5]}),
    }
    fits = pd.DataFrame(
        {"key": list(curves), "experiment": ["S2"] * 2, "kind": ["image"] * 2}
        | {"model": list(curves), "best_psnr": [28.0, 26.0]}
    )
    v = verdict_of(fits, "S2", lambda key: curves[key])
    assert v.status == "holds" and v.checks[1].ours == "20 vs 30"
    higher = fits.assign(best_psnr=[26.0, 28.0])  # the ConvNet now peaks higher
    assert verdict_of(higher, "S2", lambda key: curves[key]).status == "does not hold"


def test_c3_asks_that_no_fit_gets_a_db_cleaner_than_its_noisy_input() -> None:
    """Peaks 0.5 and 0.8 dB above the inputs hold (≤ 1 dB); 1.5 dB on one image does not."""
    fits = pd.DataFrame(
        {"key": ["a", "b"], "experiment": ["C3"] * 2, "kind": ["image"] * 2, "image": ["barbara", "baboon"]}
        | {"input_psnr": [20.0, 22.0], "best_psnr": [20.5, 22.8]}
    )
    v = verdict_of(fits, "C3")
    assert v.status == "holds" and v.checks[0].ours == "barbara +0.50 dB, baboon +0.80 dB"
    assert verdict_of(fits.assign(best_psnr=[21.5, 22.8]), "C3").status == "does not hold"
    assert verdict_of(fits.assign(input_psnr=[NONE, NONE]), "C3").status == "not run"


SIDE = 32  # radial bins 0 … 16; the thirds compared are radii 0-4 and 12-16


def low_passed(image: np.ndarray, radius: float) -> np.ndarray:
    """`image` with every frequency farther than `radius` (index units) from zero removed: its
    radial power is exact up to that radius and zero beyond."""
    k = np.fft.fftfreq(SIDE) * SIDE
    keep = np.hypot(k[:, None], k[None, :]) <= radius
    return np.fft.ifft2(np.fft.fft2(image) * keep).real.astype(np.float32)


def spectra_files() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A white-noise clean image, the same low-passed to radius 8.4 (bins 0-8 exact, 12-16 empty)
    and high-passed (bins 0-8 empty)."""
    clean = np.random.default_rng(0).uniform(0, 1, (3, SIDE, SIDE)).astype(np.float32)
    low = low_passed(clean, 8.4)
    return clean, low, clean - low


def test_c9_holds_when_the_low_third_is_matched_first_and_the_high_third_fills_in() -> None:
    """Snapshots: blank, low-passed (low third exact, high third empty), the clean image itself;
    the high third's error falls to 0. High-passed first is the opposite order."""
    clean, low, high = spectra_files()
    blank = np.full_like(clean, 0.5)
    fits = pd.DataFrame({"key": ["k"], "experiment": ["C9"], "kind": ["image"], "image": ["noise"]})
    its = np.array([0, 20, 200])
    v = verdict_of(fits, "C9", trajectories={"k": (its, np.stack([blank, low, clean]))}, cleans={"k": clean})
    assert v.status == "holds", v.checks
    assert v.checks[1].ours is not None and v.checks[1].ours.endswith("→ 0.00 at 200")
    swapped = verdict_of(fits, "C9", trajectories={"k": (its, np.stack([blank, high, clean]))}, cleans={"k": clean})
    assert swapped.status == "does not hold"
    assert verdict_of(fits, "C9").status == "not run"  # no snapshots stored


def test_c7_slower_and_smoother_deeper_decoder() -> None:
    """Depth 2: low-passed, then the clean image's spectrum; depth 5 low-passed at both snapshots
    (radii 0-8 of 0-16 matched, the high third empty): its matched share is lower (9/17 against
    (9/17 + 1)/2) and its high third further off at the end. Swapped, both parts fail."""
    clean, low, _ = spectra_files()
    fits = pd.DataFrame(
        {"key": ["d2", "d5"], "experiment": ["C7"] * 2, "kind": ["image"] * 2, "image": ["noise"] * 2}
        | {"depth": [2, 5], "final_psnr": [25.0, 22.0]}
    )
    its = np.array([0, 500])
    cleans = {"d2": clean, "d5": clean}
    v = verdict_of(
        fits, "C7", trajectories={"d2": (its, np.stack([low, clean])), "d5": (its, np.stack([low, low]))}, cleans=cleans
    )
    assert v.status == "holds", v.checks
    assert v.checks[0].ours == f"{9 / 17:.2f} vs {(9 / 17 + 1) / 2:.2f} (PSNR at the budget 22.00 vs 25.00 dB)"
    swapped = {"d2": (its, np.stack([low, low])), "d5": (its, np.stack([low, clean]))}
    v = verdict_of(fits, "C7", trajectories=swapped, cleans=cleans)
    assert v.status == "does not hold" and [c.ok for c in v.checks] == [False, False]


def s6_fits(deep_decoder: float = 26.5) -> pd.DataFrame:
    """One σ = 25 image: CBM3D 30, controlled (λ 2, auto-stop) 28.2, DIP (oracle) 28.0, Bayesian
    DIP (posterior mean) 28.1, Deep Decoder `deep_decoder` (final)."""
    rows = [
        {"method": "bm3d", "final_psnr": 30.0},
        {"model": "decoder", "lam": 2.0, "autostop_psnr": 28.2},
        {"model": "encoder_decoder_skip", "best_psnr": 28.0},
        {"model": "encoder_decoder_skip", "optimizer": "sgld", "posterior_psnr": 28.1},
        {"model": "deep_decoder", "final_psnr": deep_decoder},
    ]
    common = {"experiment": "S6", "kind": "image", "param_sigma": 25.0, "lam": NONE, "method": None}
    return pd.DataFrame([common | {"key": str(i)} | row for i, row in enumerate(rows)])


def test_s6_rows_are_matched_to_the_papers_table_and_ordered() -> None:
    v = verdict_of(s6_fits(), "S6")
    assert v.status == "holds", v.checks
    assert v.checks[0].ours == "controlled 28.20 vs DIP 28.00 dB"
    assert v.checks[0].paper == "controlled 28.15 vs DIP 27.84 dB"  # Shi et al. 2022, Table 1, σ 25
    weak = verdict_of(s6_fits(deep_decoder=28.05), "S6")  # now above the DIP's 28.0
    assert weak.status == "does not hold" and [c.ok for c in weak.checks] == [True, False, True]
