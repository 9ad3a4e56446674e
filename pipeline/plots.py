"""Figures people look at instead of reading tables: one idea per panel, labelled axes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BAND_LABELS = ["lowest", "low", "medium", "high", "highest"]


def mark_stops(ax: plt.Axes, best_iteration: int | None, stop_iteration: int | None) -> None:
    if best_iteration is not None:
        ax.axvline(best_iteration, color="tab:red", ls=":", lw=1.2, label=f"oracle peak (it {best_iteration})")
    if stop_iteration is not None:
        ax.axvline(stop_iteration, color="tab:green", ls="--", lw=1.2, label=f"auto-stop (it {stop_iteration})")


def fit_curves(
    metrics: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
    best_iteration: int | None = None,
    stop_iteration: int | None = None,
) -> None:
    """PSNR, the FBC band curves and the blur/sharpness ratio of one fit, stacked on one x axis."""
    it = np.asarray(metrics["iteration"])
    bands = sorted(k for k in metrics if k.startswith("fbc_"))
    panels = 1 + bool(bands) + ("ratio" in metrics)
    fig, axes = plt.subplots(panels, 1, figsize=(7, 2.6 * panels), sharex=True, squeeze=False)
    ax = axes[0, 0]
    if "psnr_clean" in metrics:
        ax.plot(it, metrics["psnr_clean"], label="vs clean image")
    ax.plot(it, metrics["psnr_target"], label="vs degraded target", alpha=0.7)
    ax.set_ylabel("PSNR (dB)")
    mark_stops(ax, best_iteration, stop_iteration)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    row = 1
    if bands:
        ax = axes[row, 0]
        for i, key in enumerate(bands):
            label = BAND_LABELS[i] if len(bands) == len(BAND_LABELS) else key
            ax.plot(it, metrics[key], label=label, color=plt.cm.viridis(i / max(len(bands) - 1, 1)))
        ax.set_ylabel("FBC (mean |F out| / |F y|)")
        ax.set_ylim(0, 1.05)
        mark_stops(ax, None, stop_iteration)
        ax.legend(fontsize=8, title="frequency band", title_fontsize=8, ncol=len(bands))
        ax.grid(alpha=0.3)
        row += 1
    if "ratio" in metrics:
        ax = axes[row, 0]
        ax.plot(it, metrics["ratio"], color="tab:purple")
        ax.set_yscale("log")
        ax.set_ylabel("blurriness / sharpness")
        mark_stops(ax, None, stop_iteration)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
