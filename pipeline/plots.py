"""Figures people look at instead of reading tables: one idea per panel, labelled axes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

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
    if fallen := fallback_points(metrics, "psnr_target"):
        ax.scatter(
            *zip(*fallen, strict=True), color="tab:red", zorder=3, label="backtracked here", **MARK_STYLES["fallback"]
        )
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


# --- sweep reports: several fits per figure ----------------------------------------------------

# How each kind of point marked on a curve is drawn (one legend entry per kind and panel).
MARK_STYLES: dict[str, dict[str, Any]] = {
    "oracle peak": {"marker": "o", "s": 36, "edgecolors": "black", "linewidths": 0.6},
    "auto-stop": {"marker": "v", "s": 46, "edgecolors": "black", "linewidths": 0.6},
    "converged": {"marker": "s", "s": 30, "edgecolors": "black", "linewidths": 0.6},
    "fallback": {"marker": "X", "s": 60, "edgecolors": "black", "linewidths": 0.6},
}


def fallback_points(metrics: Mapping[str, np.ndarray], column: str) -> list[tuple[float, float]]:
    """(iteration, value of `column`) at each recorded row where the backtracking safeguard
    fired since the row before (its cumulative ``fallbacks`` column went up)."""
    if "fallbacks" not in metrics:
        return []
    count = np.asarray(metrics["fallbacks"], dtype=np.float64)
    iterations, values = np.asarray(metrics["iteration"]), np.asarray(metrics[column])
    rows = np.flatnonzero(np.diff(count, prepend=0.0) > 0)
    return [(float(iterations[i]), float(values[i])) for i in rows]


@dataclass
class Series:
    """One line: a setting's values over a shared x grid, one row per seed (or seed pair).

    The line is the mean over rows (NaN where a row has no value); the shaded band is their
    min–max range, or ± one standard deviation with ``spread="std"``.
    """

    label: str
    x: np.ndarray  # (T,)
    values: np.ndarray  # (S, T)
    marks: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # MARK_STYLES kind -> points
    color: Any = None
    linestyle: str = "-"
    spread: str = "range"  # "range" (min–max) or "std"


@dataclass
class Panel:
    """One axes of a figure: its series, the y label (with units), and scale choices."""

    series: list[Series]
    ylabel: str
    title: str = ""
    log_y: bool = False
    log_x: bool = False
    ylim: tuple[float, float] | None = None
    hlines: dict[str, float] = field(default_factory=dict)  # label -> y, e.g. a threshold
    legend_title: str = ""


def _draw_series(ax: plt.Axes, series: Series, color: Any) -> None:
    values = np.atleast_2d(np.asarray(series.values, dtype=np.float64))
    present = ~np.all(np.isnan(values), axis=0)
    x, values = np.asarray(series.x)[present], values[:, present]
    if not x.size:
        return
    with np.errstate(all="ignore"):
        mean = np.nanmean(values, axis=0)
        if series.spread == "std":
            std = np.nan_to_num(np.nanstd(values, axis=0, ddof=1 if len(values) > 1 else 0))
            low, high = mean - std, mean + std
        else:
            low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    marker = "o" if series.spread == "std" else None
    ax.plot(x, mean, color=color, ls=series.linestyle, marker=marker, ms=4, lw=1.4, label=series.label)
    if len(values) > 1:
        ax.fill_between(x, low, high, color=color, alpha=0.18, lw=0)
    for kind, points in series.marks.items():
        if points:
            px, py = zip(*points, strict=True)
            ax.scatter(px, py, color=color, zorder=3, **MARK_STYLES[kind])


def curves_figure(panels: list[Panel], path: str | Path, title: str, xlabel: str = "iteration") -> None:
    """Panels of mean curves with their spread across seeds, side by side on one x axis."""
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    size = (7.5, 4.5) if len(panels) == 1 else (5.2 * ncols, 3.9 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, sharex=True)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for i, series in enumerate(panel.series):
            _draw_series(ax, series, series.color if series.color is not None else f"C{i % 10}")
        kinds = dict.fromkeys(kind for s in panel.series for kind, points in s.marks.items() if points)
        for kind in kinds:  # one grey legend entry per kind of mark, whatever the colours
            ax.scatter([], [], color="0.6", label=f"{kind} (one per seed)", **MARK_STYLES[kind])
        for label, y in panel.hlines.items():
            ax.axhline(y, color="0.3", ls=":", lw=1, label=label)
        ax.set_yscale("log" if panel.log_y else "linear")
        if panel.log_x:  # ticks at the measured values, written plainly (8, 16, 128), not as powers
            ax.set_xscale("log")
            ax.set_xticks(sorted({float(x) for s in panel.series for x in s.x}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        ax.set_ylabel(panel.ylabel)
        ax.set_xlabel(xlabel)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(alpha=0.3, which="both" if panel.log_y else "major")
        ax.legend(fontsize=7, title=panel.legend_title or None, title_fontsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap_figure(
    maps: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    title: str,
    colorbar: str,
    xlabel: str,
    ylabel: str = "iteration",
    skip_rows: int = 0,
) -> None:
    """Side-by-side images (title, values (Y, X), y coordinates, x coordinates) on one colour scale.

    The scale's top is the 99th percentile after the first `skip_rows` rows, so that one
    outlying row (a fit's random initial output) saturates instead of flattening the rest.
    """
    high = max(
        float(np.nanpercentile(values[skip_rows:] if len(values) > skip_rows else values, 99))
        for _, values, _, _ in maps
    )
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps) + 1.2, 4.2), squeeze=False, sharey=True)
    for ax, (name, values, ys, xs) in zip(axes[0], maps, strict=False):
        image = ax.imshow(
            values,
            aspect="auto",
            origin="lower",
            cmap="magma",
            vmin=0,
            vmax=high,
            extent=(xs[0], xs[-1], ys[0], ys[-1]),
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0, 0].set_ylabel(ylabel)
    fig.colorbar(image, ax=list(axes[0]), label=colorbar, shrink=0.9, extend="max")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def image_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], path: str | Path, title: str) -> None:
    """Rows of (C, H, W) images in [0, 1], each with a caption; a row is labelled on its left."""
    ncols = max(len(images) for _, images in rows)
    cell = 1.9
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(cell * ncols + 1.0, (cell + 0.35) * len(rows) + 0.6), squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.set_visible(False)
                continue
            caption, image = images[c]
            pixels = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
            if pixels.shape[0] == 1:
                ax.imshow(pixels[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(pixels.transpose(1, 2, 0))
            ax.set_title(caption, fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ramp(count: int) -> list[Any]:
    """`count` colours in order, dark to bright: frequency bands low to high, iterations early to late."""
    return [plt.cm.viridis(i / max(count - 1, 1)) for i in range(count)]
