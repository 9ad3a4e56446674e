"""The papers' qualitative claims as checks over a sweep's stored results, each with a verdict.

A claim is a statement of Chakrabarty & Maji (2019) or Shi et al. (2022) that a figure or table
of theirs stands for ("λ = 2 does not decay", "the low bands converge first"). Each check reads
the summary rows of the fits whose ``experiment`` is the claim's id, where the worker also put
the one-per-fit numbers of a fit's curves (`pipeline.single.curve_outcome`); it reads per-fit
files only for fits stored before rows had those, and for snapshots and clean images (spectra).
It returns the numbers it looked at, the paper's number beside ours where the paper prints one,
and a verdict: *holds* when every part was measured and holds, *does not hold* when a measured
part fails, *not run* when the sweep has no fits (or not every setting) the claim needs.
Thresholds that the papers leave qualitative ("well below", "decays") are named constants here
(those applied to each fit's curves, FBC_LEVEL and PLATEAU_DB, in `pipeline.single`), chosen
once and written beside each verdict, so a reader sees what was asked of the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch

from dipmodel.metrics import power_spectrum_error
from pipeline.paper import PAPER_TABLES, paper_row
from pipeline.record import FBC_CONVERGED_PREFIX, FBC_FINAL_PREFIX, present
from pipeline.single import PLATEAU_DB, band_convergence, plateau_iteration

Status = Literal["holds", "does not hold", "not run"]


class Files(Protocol):
    """A fit's stored files by its key, as `pipeline.report.FitFiles` reads them."""

    def metrics(self, key: str) -> pd.DataFrame: ...

    def snapshots(self, key: str) -> tuple[np.ndarray, np.ndarray] | None: ...

    def image(self, key: str, name: str) -> np.ndarray | None: ...


DECAY_DB = 1.0  # "peaks then decays": best minus final PSNR above this (Shi et al. 2022, Fig. 8)
FLAT_DB = 0.3  # "does not decay": best minus final PSNR below this
UNDERFIT_DB = 0.5  # "λ = 1 under-fits": its peak at least this far below λ = 2's
EARLY_STOP = 0.75  # "fires well before the budget": at most this fraction of the iterations
STOP_GAP_DB = 0.3  # the automatic stop's PSNR within this of the fixed budget's (Shi et al. 2022, §5.2)
ARCH_GAP_DB = 4.0  # C&M Table 1: the Encoder-Decoder with skips beats DIP-Linear by more than this
MATCHED_POWER = 2.0  # C7: a frequency is "matched" while its power is within this factor of the image's
DENOISE_GAIN_DB = 1.0  # C3: "not removed": the peak PSNR at most this above the noisy input's


def stored_band_convergence(fit: Mapping[str, Any]) -> list[float] | None:
    """A summary row's fbc_converged_* columns (`band_convergence`, computed by the worker) by
    band; None for a fit without them (no FBC metrics, or stored before they existed)."""
    columns = sorted((c for c in fit if c.startswith(FBC_CONVERGED_PREFIX)), key=lambda c: int(c.rsplit("_", 1)[1]))
    values = [float(fit[c]) for c in columns if present(fit[c])]
    return values or None


def fit_band_convergence(fit: Mapping[str, Any], files: Files) -> list[float]:
    """A fit's band convergence from its summary row, or from its metrics for a fit stored
    before the row had it."""
    return stored_band_convergence(fit) or [float(it) for it in band_convergence(files.metrics(fit["key"]))]


@dataclass(frozen=True)
class Check:
    """One measured part of a claim: what was asked, our number, the paper's, and whether it holds.
    ``ours`` is None when the sweep lacks the fits this part needs."""

    asked: str
    ours: str | None
    ok: bool
    paper: str | None = None


@dataclass(frozen=True)
class Verdict:
    claim: str  # our experiment id, e.g. "S3"
    source: str  # the paper's figure or table
    statement: str
    checks: tuple[Check, ...]
    fits: int

    @property
    def status(self) -> Status:
        """A failed part decides; otherwise a part not measured leaves the claim not run."""
        if any(c.ours is not None and not c.ok for c in self.checks):
            return "does not hold"
        return "holds" if self.checks and all(c.ours is not None for c in self.checks) else "not run"


def _db(value: float) -> str:
    return f"{value:.2f} dB"


def _groups(fits: pd.DataFrame, column: str) -> dict[object, pd.DataFrame]:
    """The fits per distinct value of `column`; None stands for a missing setting (λ unconstrained)."""
    labels = [None if pd.isna(v) else v for v in fits[column]]
    return {k: fits[[label == k for label in labels]] for k in dict.fromkeys(labels)}


def _mean_by(fits: pd.DataFrame, column: str, value: str) -> dict[object, float]:
    """Mean of `value` per distinct `column`, as `_groups` groups them."""
    return {k: float(group[value].mean()) for k, group in _groups(fits, column).items()}


def _missing(asked: str) -> Check:
    return Check(asked, None, True)


def _per_fit(fits: pd.DataFrame, column: str, files: Files, compute: Callable[[pd.DataFrame], float]) -> list[float]:
    """One number per fit: its summary `column` (the worker's `curve_outcome`), or for a fit
    stored before rows had it, `compute` of its metrics."""
    stored = fits.get(column, pd.Series(math.nan, index=fits.index))
    return [
        float(v) if present(v) else float(compute(files.metrics(k))) for k, v in zip(fits["key"], stored, strict=True)
    ]


def check_s3(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Shi et al. 2022, Fig. 8: the Lipschitz bound λ controls the decay after the peak."""
    decay = _mean_by(fits.assign(decay=fits["best_psnr"] - fits["final_psnr"]), "lam", "decay")
    best, final = _mean_by(fits, "lam", "best_psnr"), _mean_by(fits, "lam", "final_psnr")
    checks = []
    for lam, asked, holds in (
        (None, f"unconstrained: peak − final > {DECAY_DB:g} dB", lambda d: d > DECAY_DB),
        (2.0, f"λ = 2: peak − final < {FLAT_DB:g} dB", lambda d: d < FLAT_DB),
        (3.0, f"λ = 3 decays like the unconstrained net: peak − final > {DECAY_DB:g} dB", lambda d: d > DECAY_DB),
    ):
        checks.append(Check(asked, _db(decay[lam]), holds(decay[lam])) if lam in decay else _missing(asked))
    asked = f"λ = 2 ends ≥ {DECAY_DB:g} dB above unconstrained"
    if {None, 2.0} <= set(final):
        gap = final[2.0] - final[None]
        checks.append(Check(asked, _db(gap), gap >= DECAY_DB))
    else:
        checks.append(_missing(asked))
    asked = f"λ = 1 under-fits: its peak ≥ {UNDERFIT_DB:g} dB below λ = 2's"
    if {1.0, 2.0} <= set(best):
        gap = best[2.0] - best[1.0]
        checks.append(Check(asked, _db(gap), gap >= UNDERFIT_DB))
    else:
        checks.append(_missing(asked))
    asked = "final band-5 FBC: none > λ 3 ≥ λ 2 > λ 1"
    lams = _groups(fits, "lam")
    if {None, 1.0, 2.0, 3.0} <= set(lams):
        fbc = {
            k: float(np.mean(_per_fit(group, f"{FBC_FINAL_PREFIX}5", files, lambda m: m["fbc_5"].iloc[-1])))
            for k, group in lams.items()
        }
        shown = ", ".join(f"{'none' if k is None else f'λ {k:g}'} {fbc[k]:.3f}" for k in (None, 3.0, 2.0, 1.0))
        checks.append(Check(asked, shown, fbc[None] > fbc[3.0] >= fbc[2.0] > fbc[1.0]))
    else:
        checks.append(_missing(asked))
    return checks


def check_s5(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Shi et al. 2022, §5.2 and Table 6: the automatic stop of a λ = 2 net costs almost nothing."""
    controlled = fits[fits["lam"] == 2.0]
    if controlled.empty:
        return [_missing("λ = 2 fits")]
    fired = controlled["stop_iteration"].notna()
    share = float((controlled["stop_iteration"] / controlled["iterations"]).where(fired, 1.0).mean())
    gap = float((controlled["final_psnr"] - controlled["stop_psnr"]).where(fired, math.inf).abs().mean())
    return [
        Check(
            f"the stop fires by {EARLY_STOP:.0%} of the budget (mean)",
            f"{share:.0%} ({int(fired.sum())}/{len(controlled)} fired)",
            share <= EARLY_STOP,
        ),
        Check(
            f"|PSNR at budget − PSNR at the stop| ≤ {STOP_GAP_DB:g} dB",
            _db(gap) if math.isfinite(gap) else "the stop did not fire",
            gap <= STOP_GAP_DB,
            paper="F16 σ 25: 31.04 → 30.98 dB (0.06 dB)",
        ),
    ]


def check_s4(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Shi et al. 2022, Fig. 9: a wider Gaussian upsampling (σ) slows the fit, and σ = 0 (the bed
    of nails) peaks lowest."""
    groups = _groups(fits, "up_sigma")
    asked_speed = f"plateau (within {PLATEAU_DB:g} dB of the peak) later for larger σ: σ 0 ≤ 0.5 ≤ 1"
    asked_peak = "σ = 0 has the lowest peak PSNR"
    if not {0.0, 0.5, 1.0} <= set(groups):
        return [_missing(asked_speed), _missing(asked_peak)]
    plateau = {
        s: float(np.mean(_per_fit(groups[s], "plateau_iteration", files, plateau_iteration))) for s in (0.0, 0.5, 1.0)
    }
    best = {s: float(groups[s]["best_psnr"].mean()) for s in (0.0, 0.5, 1.0)}
    return [
        Check(
            asked_speed,
            ", ".join(f"σ {s:g}: {plateau[s]:.0f}" for s in plateau),
            plateau[0.0] <= plateau[0.5] <= plateau[1.0],
        ),
        Check(
            asked_peak,
            ", ".join(f"σ {s:g}: {best[s]:.2f} dB" for s in best),
            best[0.0] < min(best[0.5], best[1.0]),
        ),
    ]


def check_band_order(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Shi et al. 2022, Fig. 3 (S1): low FBC bands converge before the high ones, and the PSNR
    peak comes once the lowest band is matched."""
    images = fits[fits["kind"] == "image"]
    if images.empty:
        return [_missing("image fits")]
    bands = np.array([fit_band_convergence(fit, files) for fit in images.to_dict("records")])
    first, last = float(bands[:, 0].mean()), float(bands[:, -1].mean())
    peak_after = float(np.mean(images["best_iteration"].to_numpy() >= bands[:, 0]))
    return [
        Check("band 1 converges before band 5 (mean iteration)", f"{first:.0f} vs {last:.0f}", first < last),
        Check("the PSNR peak comes after band 1 converged (share of fits)", f"{peak_after:.0%}", peak_after == 1.0),
    ]


def check_s2(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Shi et al. 2022, Fig. 4: the bias is not the Encoder-Decoder's alone; the ConvNet (no
    upsampling) matches the high band sooner than the Decoder and peaks lower."""
    models = _groups(fits, "model")
    asked = (
        "band 1 converges before band 5 in both nets",
        "ConvNet's band 5 converges before the Decoder's",
        "ConvNet's peak PSNR below the Decoder's",
    )
    if not {"decoder", "convnet"} <= set(models):
        return [_missing(a) for a in asked]
    bands = {
        m: np.mean([fit_band_convergence(fit, files) for fit in models[m].to_dict("records")], axis=0)
        for m in ("decoder", "convnet")
    }
    best = {m: float(models[m]["best_psnr"].mean()) for m in ("decoder", "convnet")}
    return [
        Check(
            asked[0],
            ", ".join(f"{m}: {b[0]:.0f} vs {b[-1]:.0f}" for m, b in bands.items()),
            all(b[0] < b[-1] for b in bands.values()),
        ),
        Check(
            asked[1],
            f"{bands['convnet'][-1]:.0f} vs {bands['decoder'][-1]:.0f}",
            bands["convnet"][-1] < bands["decoder"][-1],
        ),
        Check(asked[2], f"{best['convnet']:.2f} vs {best['decoder']:.2f} dB", best["convnet"] < best["decoder"]),
    ]


def check_c6(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Chakrabarty & Maji 2019, Table 1: the convolutional prior beats a fully connected one."""
    best = _mean_by(fits, "model", "best_psnr")
    asked = f"Encoder-Decoder with skips − DIP-Linear best PSNR > {ARCH_GAP_DB:g} dB"
    if not {"encoder_decoder_skip", "dip_linear"} <= set(best):
        return [_missing(asked)]
    gap = best["encoder_decoder_skip"] - best["dip_linear"]
    return [Check(asked, _db(gap), gap > ARCH_GAP_DB)]


def check_c3(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Chakrabarty & Maji 2019, Fig. 2: noise of low frequency is fitted as early as the image,
    so the trajectory never gets much cleaner than the noisy input it fits."""
    asked = f"peak PSNR − noisy input's PSNR ≤ {DENOISE_GAIN_DB:g} dB on every image"
    measured = fits.dropna(subset=["input_psnr"])
    if measured.empty:
        return [_missing(asked)]
    gain = measured["best_psnr"] - measured["input_psnr"]
    shown = ", ".join(f"{image} {g:+.2f} dB" for image, g in zip(measured["image"], gain, strict=True))
    return [Check(asked, shown, bool((gain <= DENOISE_GAIN_DB).all()))]


def spectrum_errors(files: Files, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(snapshot iterations (T,), |log power ratio| of output to clean image per radial frequency
    (T, R)) along a fit's trajectory: the rows of C&M's Fig. 4 error image. None for a fit with
    no snapshots or no clean image of their shape."""
    stored, clean = files.snapshots(key), files.image(key, "clean")
    if stored is None or clean is None or stored[1].shape[1:] != clean.shape:
        return None
    iterations, snapshots = stored
    error = power_spectrum_error(torch.from_numpy(snapshots.astype(np.float32)), torch.from_numpy(clean)[None])
    return iterations, error.numpy()


def thirds(error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean error over the lowest third of radial frequencies and over the highest third, per row."""
    third = error.shape[1] // 3
    return error[:, :third].mean(1), error[:, -third:].mean(1)


def check_c9(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Chakrabarty & Maji 2019, Fig. 5: the output's power spectrum fills in from the low
    frequencies to the high ones along the trajectory."""
    asked = (
        "at the first snapshot after the start, the low third of frequencies is closer to the clean "
        "spectrum than the high third (mean |log power ratio|)",
        "the high third's error falls from the first snapshot to the last",
    )
    found = {image: spectrum_errors(files, key) for image, key in zip(fits["image"], fits["key"], strict=True)}
    errors = {image: e for image, e in found.items() if e is not None and len(e[0]) > 2}
    if not errors:
        return [_missing(a) for a in asked]
    split = {image: (it, *thirds(error)) for image, (it, error) in errors.items()}
    early = {image: (low[1], high[1], int(it[1])) for image, (it, low, high) in split.items()}
    late = {image: (high[1], high[-1], int(it[-1])) for image, (it, low, high) in split.items()}
    return [
        Check(
            asked[0],
            ", ".join(f"{image} at {i}: low {lo:.2f} vs high {hi:.2f}" for image, (lo, hi, i) in early.items()),
            all(lo < hi for lo, hi, _ in early.values()),
        ),
        Check(
            asked[1],
            ", ".join(f"{image}: {a:.2f} → {b:.2f} at {i}" for image, (a, b, i) in late.items()),
            all(b < a for a, b, _ in late.values()),
        ),
    ]


def check_c7(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Chakrabarty & Maji 2019, Fig. 4 and §3.2: with a larger upsampling stride (Decoder depth 5,
    stride 32, against depth 2, stride 4) the low-error region of the power spectrum grows more
    slowly, and the output is smoother at the same iteration."""
    asked = (
        f"depth 5 slower: its matched share of frequencies (power within a factor {MATCHED_POWER:g} of "
        "the clean image's), averaged over the snapshots, below depth 2's",
        "depth 5 smoother: at the last snapshot its high third of frequencies further from the "
        "clean spectrum than depth 2's (mean |log power ratio|)",
    )
    depths = _groups(fits, "depth")
    if not {2, 5} <= set(depths):
        return [_missing(a) for a in asked]
    found = {d: [spectrum_errors(files, k) for k in depths[d]["key"]] for d in (2, 5)}
    if not all(e is not None for errors in found.values() for e in errors):
        return [_missing(a) for a in asked]
    errors = {d: [e[1] for e in found[d] if e is not None] for d in (2, 5)}
    matched = {d: float(np.mean([(e < math.log(MATCHED_POWER)).mean() for e in errors[d]])) for d in (2, 5)}
    high = {d: float(np.mean([thirds(e)[1][-1] for e in errors[d]])) for d in (2, 5)}
    final = {d: float(depths[d]["final_psnr"].mean()) for d in (2, 5)}
    return [
        Check(
            asked[0],
            f"{matched[5]:.2f} vs {matched[2]:.2f} (PSNR at the budget {final[5]:.2f} vs {final[2]:.2f} dB)",
            matched[5] < matched[2],
        ),
        Check(asked[1], f"{high[5]:.2f} vs {high[2]:.2f}", high[5] > high[2]),
    ]


def check_s6(fits: pd.DataFrame, files: Files) -> list[Check]:
    """Shi et al. 2022, Table 1: the controlled network with its automatic stop denoises as well
    as the DIP with oracle stopping; the Deep Decoder is the weakest network, CBM3D beats all."""
    rows: dict[str, list[float]] = {}
    for setting in fits.to_dict("records"):
        match = paper_row(setting)
        if match is not None and pd.notna(setting.get(match[1])):
            rows.setdefault(match[0], []).append(float(setting[match[1]]))
    ours = {row: float(np.mean(values)) for row, values in rows.items()}
    table = next(t for t in PAPER_TABLES if t.experiment == "S6")
    sigmas = sorted(set(fits["param_sigma"].dropna())) if "param_sigma" in fits else []

    def paper(row: str) -> float | None:
        """The paper's mean over the noise levels this sweep ran, None unless it prints them all."""
        values = [v for s in sigmas if (v := table.value(row, s)) is not None]
        return float(np.mean(values)) if values and len(values) == len(sigmas) else None

    def check(asked: str, names: tuple[str, ...], holds: Callable[[list[float]], bool]) -> Check:
        if not set(names) <= set(ours):
            return _missing(asked)
        shown = " vs ".join(f"{n} {ours[n]:.2f}" for n in names)
        printed = [paper(n) for n in names]
        cited = " vs ".join(f"{n} {p:.2f}" for n, p in zip(names, printed, strict=True) if p is not None)
        return Check(asked, shown + " dB", holds([ours[n] for n in names]), cited + " dB" if cited else None)

    networks = ("Deep Decoder", "DIP", "Bayesian DIP", "controlled")
    return [
        check("controlled (auto-stop) ≥ DIP (oracle)", ("controlled", "DIP"), lambda v: v[0] >= v[1]),
        check("the Deep Decoder is the weakest network", networks, lambda v: v[0] < min(v[1:])),
        check("CBM3D beats every network", ("CBM3D", *networks), lambda v: v[0] > max(v[1:])),
    ]


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    statement: str
    check: Callable[[pd.DataFrame, Files], list[Check]]


CLAIMS = (
    Claim(
        "C3",
        "Chakrabarty & Maji 2019, Fig. 2",
        "noise of low frequency is not removed: the PSNR never rises far above the noisy input's",
        check_c3,
    ),
    Claim(
        "C6",
        "Chakrabarty & Maji 2019, Table 1",
        "an Encoder-Decoder with skips denoises far better than DIP-Linear",
        check_c6,
    ),
    Claim(
        "C7",
        "Chakrabarty & Maji 2019, Fig. 4",
        "a deeper Decoder (upsampling stride 32 against 4) fits more slowly and more smoothly",
        check_c7,
    ),
    Claim(
        "C9",
        "Chakrabarty & Maji 2019, Fig. 5",
        "the output's power spectrum fills in from low to high frequencies",
        check_c9,
    ),
    Claim(
        "S1",
        "Shi et al. 2022, Fig. 3",
        "low frequency bands converge before high ones; the PSNR peaks once the lowest are matched",
        check_band_order,
    ),
    Claim(
        "S2",
        "Shi et al. 2022, Fig. 4",
        "the ConvNet also learns low bands first, matches band 5 sooner than the Decoder and peaks lower",
        check_s2,
    ),
    Claim(
        "S3",
        "Shi et al. 2022, Fig. 8",
        "unconstrained and λ = 3 peak then decay; λ = 2 does not decay and ends higher; λ = 1 under-fits",
        check_s3,
    ),
    Claim(
        "S4",
        "Shi et al. 2022, Fig. 9",
        "larger Gaussian upsampling σ reaches its plateau later; σ = 0 peaks lowest",
        check_s4,
    ),
    Claim(
        "S5",
        "Shi et al. 2022, §5.2",
        "the automatic stop fires well before the budget at almost the fixed-budget PSNR (λ = 2)",
        check_s5,
    ),
    Claim(
        "S6",
        "Shi et al. 2022, Table 1",
        "the controlled net with its auto-stop matches the DIP's oracle; Deep Decoder weakest, CBM3D best",
        check_s6,
    ),
)


def verdicts(fits: pd.DataFrame, files: Files) -> list[Verdict]:
    """Every claim's verdict over a sweep's summary rows (fits of other experiments are ignored)."""
    out = []
    for claim in CLAIMS:
        mine = fits[(fits["experiment"] == claim.claim) & (fits["kind"] != "response")]
        checks = claim.check(mine, files) if len(mine) else []
        out.append(Verdict(claim.claim, claim.source, claim.statement, tuple(checks), len(mine)))
    return out


def verdict_lines(found: list[Verdict]) -> list[str]:
    """A Markdown table of the verdicts of the claims this sweep ran, and each one's numbers."""
    ran = [v for v in found if v.fits]
    if not ran:
        return []
    lines = ["| claim | paper | statement | verdict | fits |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {v.claim} | {v.source} | {v.statement} | **{v.status}** | {v.fits} |" for v in ran]
    for v in ran:
        lines += ["", f"{v.claim} ({v.status}):", ""]
        for c in v.checks:
            mark = "not measured" if c.ours is None else ("holds" if c.ok else "does not hold")
            paper = f"; paper: {c.paper}" if c.paper else ""
            lines.append(f"- {c.asked}: {c.ours if c.ours is not None else '—'} ({mark}{paper})")
    return lines
