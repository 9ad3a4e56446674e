"""The tables and figures of a sweep, read from its storage alone (MLflow is not needed).

`write_report` reads the done markers (one summary row per fit) for the tables, then the
metrics and trajectories of a capped number of figure groups, and writes Markdown and CSV
tables, PNG figures and an ``index.md`` linking all of them. docs/report.md says how to read
each one. Rows of every table are *settings* (what varies between fits of the same task,
parameters and image: network, λ, upsampling, …), named once for the whole report, so the
same row reads the same in every table and figure.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dipmodel import metrics as M
from pipeline import explorer, plots
from pipeline.claims import stored_band_convergence, verdict_lines, verdicts
from pipeline.images import decode
from pipeline.messages import UserError
from pipeline.paper import FIGURE_ITERATIONS, PaperTable, paper_row, tables_for
from pipeline.query import band_crossings
from pipeline.record import params_label, present, setting_name, upgrade, with_schema
from pipeline.single import FBC_LEVEL, SE_CONVERGED, band_convergence
from pipeline.sources import is_manifest, open_store, read_manifest
from pipeline.storage import Store

# What may distinguish the rows of a table, most telling first; a column is used only where it
# varies and is not implied by those before it (see `varying_settings`).
SETTING_COLUMNS = (
    "method",
    "model",
    "optimizer",
    "lam",
    "upsample",
    "up_sigma",
    "up_sigmas",
    "width",
    "depth",
    "norm",
    "input",
    "bound_head",
    "detach_sigma",
    "lr",
    "iterations",
    "tv_weight",
    "crop",
    "downsample",
    "grey",
)
# The three ways to pick one output of a fit, as summary columns; autostop_psnr is derived in `load_fits`.
METRICS = {
    "best_psnr": ("oracle", "oracle PSNR: the best on the trajectory (needs the clean image, as the papers' DIP rows)"),
    "autostop_psnr": (
        "auto-stop",
        ("PSNR where Shi et al.'s automatic stop (Eq. 8) fired, or at the budget where it never fired"),
    ),
    "final_psnr": ("final", "PSNR at the end of the fixed iteration budget (a classical method's one output)"),
    "posterior_psnr": ("posterior mean", "PSNR of the mean of the SGLD samples after burn-in (Bayesian DIP)"),
}
DEFAULT_MAX_GROUPS = 12
REASONS_READ = 100  # failure records read for the summary's reasons, at most
GRID_COLUMNS = 5  # default number of iterations in output grids and spectra
LINESTYLES = ("-", "--", ":", "-.")


# --- reading the sweep --------------------------------------------------------------------------


def _param_columns(fits: pd.DataFrame) -> list[str]:
    return sorted(c for c in fits.columns if c.startswith("param_"))


def varying_settings(fits: pd.DataFrame) -> list[str]:
    """Setting columns that tell apart fits of the same task, task parameters and image.

    Only those name rows. A column that changes only together with a task parameter (a longer
    budget for ×8 than for ×4 super-resolution) would split a table into a diagonal, so it does
    not; nor does one implied by more telling columns (batch norm exactly when λ is unset).
    """
    by_problem = fits.groupby(["task", "image", *_param_columns(fits)], dropna=False)
    shown = [c for c in SETTING_COLUMNS if (by_problem[c].nunique(dropna=False) > 1).any()]

    def combinations(columns: list[str]) -> int:
        return len(fits[columns].astype(str).drop_duplicates()) if columns else 1

    for column in reversed(shown[1:]):
        rest = [c for c in shown if c != column]
        if combinations(rest) == combinations(shown):
            shown = rest
    return shown


def load_fits(store: Store) -> pd.DataFrame:
    """One row per done fit, sorted, with the report's columns added.

    ``setting`` (row name), ``image_set`` (data set; else "signals" or "images"), ``params``
    (task-parameter label), ``one_d`` (a 1-D signal fit) and ``autostop_psnr``: the PSNR of
    the output the automatic rule hands back, which is the final one when the rule never
    fired (NaN for 1-D fits, which have no blur/sharpness signal to stop on).
    """
    table = store.collect(write=False, upgrade=upgrade)  # reads only the markers summary.parquet lacks
    if table.num_rows == 0:
        failed = len(store.failed_keys())
        raise UserError(f"no finished fits in storage {store.uri} ({failed} failed): nothing to report")
    fits = with_schema(table).to_pandas()  # every column, typed, whatever kinds of fits (or older markers) it holds
    fits["one_d"] = fits["kind"] == "signal"
    fired = fits["stop_iteration"].notna()
    fits["autostop_psnr"] = fits["stop_psnr"].where(fired, fits["final_psnr"]).mask(fits["one_d"])
    fits["image_set"] = fits["dataset"].where(
        fits["dataset"].map(present), fits["one_d"].map({True: "signals", False: "images"})
    )
    params = _param_columns(fits)
    fits["params"] = [
        params_label({c.removeprefix("param_"): row[c] for c in params}) for row in fits.to_dict("records")
    ]
    shown = varying_settings(fits)
    fits = fits.sort_values(
        ["task", "image_set", *params, *shown, "image", "seed"], na_position="first", kind="stable", ignore_index=True
    )
    fits["setting"] = [setting_name(row, shown) for row in fits.to_dict("records")]
    return fits


def _ordered(values: pd.Series) -> list[Any]:
    """Distinct values in order of first appearance (the fits are sorted already)."""
    return list(dict.fromkeys(values))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("σ", "sigma").replace("λ", "lam")).strip("-")[:80]


# --- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (NaN for one value) and count of some PSNRs or iterations."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Any) -> Stat | None:
        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        if not v.size:
            return None
        return cls(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size))

    def text(self, digits: int = 2) -> str:
        mean = f"{self.mean:.{digits}f}"
        return mean if math.isnan(self.std) else f"{mean} ± {self.std:.{digits}f}"


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of a frame of strings (no tabulate dependency)."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rows = [line(frame.columns), line(["---"] * len(frame.columns))]
    return "\n".join(rows + [line(r) for r in frame.itertuples(index=False)]) + "\n"


@dataclass
class Output:
    """Where the report is written, and the index that links what is written."""

    root: Path
    sections: dict[str, list[str]] = field(default_factory=dict)

    def link(self, section: str, path: Path, text: str, note: str, csv: Path | None = None) -> None:
        extra = ""
        if csv:  # a table: its CSV and LaTeX forms lie beside the Markdown one
            extra = (
                f" ([CSV]({csv.relative_to(self.root).as_posix()}), "
                f"[LaTeX]({csv.with_suffix('.tex').relative_to(self.root).as_posix()}))"
            )
        self.sections.setdefault(section, []).append(
            f"- [{text}]({path.relative_to(self.root).as_posix()}){extra}: {note}"
        )

    def note(self, section: str, text: str) -> None:
        self.sections.setdefault(section, []).append(text)

    def table(
        self,
        section: str,
        stem: str,
        title: str,
        shown: pd.DataFrame,
        data: pd.DataFrame,
        note: str,
        footnotes: Sequence[str] = (),
    ) -> None:
        """Write a table as Markdown and LaTeX (`shown`, strings) and CSV (`data`, numbers) and link it."""
        md, csv = self.root / "tables" / f"{stem}.md", self.root / "tables" / f"{stem}.csv"
        md.write_text(f"# {title}\n\n{_markdown(shown)}" + "".join(f"\n{line}\n" for line in footnotes))
        data.to_csv(csv, index=False)
        latex = shown.to_latex(index=False, escape=True, caption=title, label=f"tab:{stem}")
        csv.with_suffix(".tex").write_text(latex)
        self.link(section, md, title, note, csv)


def stat_table(
    frame: pd.DataFrame, value: str, rows: str, columns: str, header: str, digits: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]] | None:
    """Mean ± std of `value` per (row, column) label: (Markdown frame, CSV frame, footnotes).

    None when no fit has a value. Counts are printed in a cell only where they differ from
    the most common count, which a footnote gives.
    """
    frame = frame[frame[value].notna()]
    if frame.empty:
        return None
    row_names, col_names = _ordered(frame[rows]), _ordered(frame[columns])
    cells = {key: stat for key, g in frame.groupby([rows, columns], sort=False) if (stat := Stat.of(g[value]))}
    usual = Counter(s.n for s in cells.values()).most_common(1)[0][0]
    shown, data = [], []
    for r in row_names:
        found = [cells.get((r, c)) for c in col_names]
        shown.append(
            [r] + ["—" if s is None else s.text(digits) + (f" (n={s.n})" if s.n != usual else "") for s in found]
        )
        data.append([r] + [x for s in found for x in ((s.mean, s.std, s.n) if s else (None, None, 0))])
    data_columns = [header] + [f"{c} {part}" for c in col_names for part in ("mean", "std", "n")]
    return (
        pd.DataFrame(shown, columns=[header, *col_names]),
        pd.DataFrame(data, columns=data_columns),
        [f"Mean ± sample standard deviation over n = {usual} fits per cell unless a cell says otherwise."],
    )


def _column_labels(group: pd.DataFrame) -> pd.Series:
    """Per fit, the label of its table column: the task parameters that vary in the group (all if none do)."""
    params = [c for c in _param_columns(group) if group[c].notna().any()]
    varying = [c for c in params if group[c].nunique() > 1] or params
    return pd.Series(
        [
            params_label({c.removeprefix("param_"): row[c] for c in varying}) or "no task parameters"
            for row in group.to_dict("records")
        ],
        index=group.index,
    )


def paper_comparison(group: pd.DataFrame, paper: PaperTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's table with ours beside it: each paper row, then each of our settings that reproduces it.

    A setting is compared on the column `paper_row` names for it (oracle PSNR for "DIP",
    auto-stop PSNR for "controlled"; in a table reported at fixed iterations, Shi Tables 4-5,
    the PSNR at the end of the budget, where network fits that halted before it are left out,
    see `budget_notes`); Δ = ours − paper.
    """
    values = pd.to_numeric(group.get(f"param_{paper.param}", pd.Series(np.nan, index=group.index)), errors="coerce")
    columns = sorted({v for cells in paper.rows.values() for v in cells})
    labels = [params_label({paper.param: v}) for v in columns]
    settings = {name: paper_row(rows.iloc[0], paper) for name, rows in group.groupby("setting", sort=False)}
    networks = set(group.loc[group["model"].map(present), "setting"])
    usable = ~_halted_before_budget(group) if paper.budgets else pd.Series(True, index=group.index)
    shown, data = [], []
    for paper_name in paper.rows:
        ours: list[tuple[str | None, str]] = [
            (s, match[1]) for s, match in settings.items() if match and match[0].casefold() == paper_name.casefold()
        ]
        for setting, metric in ours or [(None, "")]:  # a paper row no setting of ours reproduces
            short = "at budget" if paper.budgets and setting in networks else METRICS.get(metric, ("",))[0]
            label = paper_name if setting is None else f"{paper_name} ← {setting} ({short})"
            shown_row: list[str] = [label]
            data_row: list[Any] = [paper_name, setting, metric or None]
            for column in columns:
                published = paper.value(paper_name, column)
                chosen = (group["setting"] == setting) & np.isclose(values, column) & usable
                stat = Stat.of(group.loc[chosen, metric]) if setting is not None else None
                diff = stat.mean - published if stat and published is not None else None
                shown_row += [
                    stat.text() if stat else "—",
                    "—" if published is None else f"{published:.2f}",
                    "—" if diff is None else f"{diff:+.2f}",
                ]
                data_row += [
                    stat.mean if stat else None,
                    stat.std if stat else None,
                    stat.n if stat else 0,
                    published,
                    diff,
                ]
            shown.append(shown_row)
            data.append(data_row)
    shown_columns = ["row"] + [f"{lab} {part}" for lab in labels for part in ("ours", "paper", "Δ")]
    data_columns = ["paper_row", "setting", "compared_on"] + [
        f"{lab} {part}" for lab in labels for part in ("ours mean", "ours std", "ours n", "paper", "diff")
    ]
    return pd.DataFrame(shown, columns=shown_columns), pd.DataFrame(data, columns=data_columns)


def _halted_before_budget(group: pd.DataFrame) -> pd.Series:
    """Network fits that ended before their iteration budget (halt_at_stop): no PSNR at the budget."""
    return group["model"].map(present) & (group["iterations_run"] < group["iterations"])


def budget_notes(group: pd.DataFrame, paper: PaperTable) -> tuple[str, list[str]]:
    """For a paper table reported at fixed iterations: the title's statement of the iterations
    compared (ours per column, the paper's) and the footnotes saying what is compared."""
    if not paper.budgets:
        return "", []
    values = pd.to_numeric(group.get(f"param_{paper.param}", pd.Series(np.nan, index=group.index)), errors="coerce")
    network = group["model"].map(present)
    parts = []
    for column, budget in paper.budgets.items():
        ours = sorted({int(i) for i in group.loc[network & np.isclose(values, column), "iterations"].dropna()})
        if ours:
            text = ", ".join(f"{i:,}" for i in ours)
            parts.append(
                f"{params_label({paper.param: column})}: iteration {text}"
                + (" as the paper" if ours == [budget] else f" (paper {budget:,})")
            )
    paper_budgets = ", ".join(f"{b:,} for {params_label({paper.param: c})}" for c, b in paper.budgets.items())
    notes = [
        f"Every row is compared at a fixed iteration, as the paper reports it ({paper_budgets}, "
        "Shi et al. §5.4 and the captions of Tables 4-5, following Ulyanov et al.): a network's PSNR at the "
        "end of the manifest's iteration budget (final PSNR; Bayesian DIP: its posterior mean then), not the "
        "oracle best or the auto-stop; bicubic and TV on their one output. Where the manifest's budget is not "
        "the paper's (a smoke-scale sweep), ours is at the manifest's budget. The paper's Ulyanov row also "
        "carries the footnote 'obtained with oracle stopping'; we follow the caption."
    ]
    halted = int(_halted_before_budget(group).sum())
    if halted:
        notes.append(
            f"{halted} network fit(s) halted at the automatic stop before their budget (halt_at_stop) "
            "and are left out: they have no PSNR at the budget."
        )
    return (f", PSNR at a fixed iteration ({'; '.join(parts)})" if parts else ""), notes


def _signal_freqs(store: Store, key: str, count: int) -> list[str]:
    """Labels "k=5", "k=50" of a 1-D fit's frequencies, from its spec (k1, k2 if the spec lacks them)."""
    freqs = (store.read_spec(key).get("signal") or {}).get("freqs") or []
    return [f"k={freqs[i]}" if i < len(freqs) else f"k{i + 1}" for i in range(count)]


def _converged_columns(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in frame.columns if re.fullmatch(r"converged_k\d+", c) and frame[c].notna().any()]
    return sorted(columns, key=lambda c: int(c.removeprefix("converged_k")))


def write_tables(fits: pd.DataFrame, store: Store, experiment: str | None, out: Output) -> None:
    """Per task and image set: PSNR tables for the three stopping choices, per image, against the
    paper, and 1-D convergence iterations."""
    section = "Tables"
    for (task, image_set), group in fits.groupby(["task", "image_set"], sort=False):
        group = group.assign(column=_column_labels(group))
        stem, where = _slug(f"{task}-{image_set}"), f"{task} on {image_set}"
        for metric, (short, meaning) in METRICS.items():
            table = stat_table(group, metric, "setting", "column", "setting")
            if table:
                out.table(
                    section,
                    f"{stem}-{short}",
                    f"{where}: {short} PSNR (dB)",
                    *table[:2],
                    f"{meaning}; rows are settings, columns task parameters, mean ± std over seeds"
                    + (" and images" if group["image"].nunique() > 1 else ""),
                    table[2],
                )
        if group["image"].nunique() > 1:
            several = group["column"].nunique() > 1
            rows = group["setting"] + (", " + group["column"] if several else "")
            per_image = pd.concat([group.assign(row=rows), group.assign(row=rows, image="all images")])
            table = stat_table(per_image, "best_psnr", "row", "image", "setting")
            if table:
                out.table(
                    section,
                    f"{stem}-oracle-per-image",
                    f"{where}: oracle PSNR (dB) per image",
                    *table[:2],
                    "the same oracle PSNRs per image (mean ± std over seeds); the last column pools all images",
                    table[2],
                )
        for paper in tables_for(task, image_set if image_set != "images" else None, experiment):
            shown, data = paper_comparison(group, paper)
            at_budget, budget_footnotes = budget_notes(group, paper)
            out.table(
                section,
                f"{stem}-paper-{_slug(paper.source)[:40]}",
                f"{where}: ours vs {paper.source}{at_budget}",
                shown,
                data,
                "the published PSNRs with ours beside them and Δ = ours − paper; which of our "
                "settings reproduces which paper row, and on which PSNR, is pipeline.paper.paper_row",
                [
                    (
                        f"Paper values: {paper.source}. Ours: mean ± std over seeds and images of this sweep "
                        f"({group['image'].nunique()} image(s)); a paper average over a full data set is "
                        "comparable only when the sweep covers it."
                    ),
                    *budget_footnotes,
                ],
            )
        converged = _converged_columns(group)
        if converged:
            labels = _signal_freqs(store, group["key"].iloc[0], len(converged))
            long = pd.concat(
                [
                    group.assign(freq=label, iteration=group[c].where(group[c] >= 0))
                    for c, label in zip(converged, labels, strict=False)
                ]
            )
            table = stat_table(long, "iteration", "setting", "freq", "setting", digits=1)
            never = int((group[converged] < 0).to_numpy().sum())
            if table:
                out.table(
                    section,
                    f"{stem}-convergence",
                    f"{where}: iterations until SE(k) ≤ {SE_CONVERGED}",
                    *table[:2],
                    "1-D fits: first iteration at which each frequency's amplitude error "
                    "reached δ (C&M §3.1), mean ± std over seeds",
                    [*table[2], f"{never} (fit, frequency) pairs never converged and are left out."],
                )


# --- oracle vs automatic stopping ---------------------------------------------------------------


STOP_COLUMNS = {  # per-fit column -> how the summary names it
    "oracle_psnr": "oracle PSNR (dB)",
    "autostop_psnr": "auto-stop PSNR (dB)",
    "final_psnr": "final PSNR (dB)",
    "oracle_iteration": "oracle iteration",
    "stop_iteration": "stop iteration",
    "iterations_saved": "iterations saved",
    "psnr_lost_at_stop": "PSNR lost at auto-stop (dB)",
    "psnr_lost_at_budget": "PSNR lost at budget (dB)",
    "fallbacks": "backtracking fallbacks",
}


def stopping_per_fit(fits: pd.DataFrame) -> pd.DataFrame:
    """For each network fit of an image with a clean reference: oracle, automatic stop and fixed
    budget side by side.

    ``stop_iteration``/``stop_psnr`` are blank where the rule never fired; such a fit ran its
    whole budget, so it saved 0 iterations and its ``autostop_psnr`` is the final PSNR.
    """
    ref = fits[fits["best_psnr"].notna() & ~fits["one_d"] & ~fits["method"].map(present)]  # classical: no stop
    fired = ref["stop_iteration"].notna()
    return pd.DataFrame(
        {
            "key": ref["key"],
            "task": ref["task"],
            "params": ref["params"],
            "image": ref["image"],
            "setting": ref["setting"],
            "seed": ref["seed"],
            "budget": ref["iterations"],
            "iterations_run": ref["iterations_run"],
            "oracle_iteration": ref["best_iteration"],
            "oracle_psnr": ref["best_psnr"],
            "stop_fired": fired,
            "stop_iteration": ref["stop_iteration"],
            "stop_psnr": ref["stop_psnr"],
            "autostop_psnr": ref["autostop_psnr"],
            "final_psnr": ref["final_psnr"],
            "iterations_saved": (ref["iterations"] - ref["stop_iteration"]).where(fired, 0),
            "psnr_lost_at_stop": ref["best_psnr"] - ref["autostop_psnr"],
            "psnr_lost_at_budget": ref["best_psnr"] - ref["final_psnr"],
            "fallbacks": ref["fallbacks"],  # times the safeguard restored the last good parameters
        }
    ).astype(
        {
            c: "Int64"
            for c in (
                "seed",
                "budget",
                "iterations_run",
                "oracle_iteration",
                "stop_iteration",
                "iterations_saved",
                "fallbacks",
            )
        }
    )


def write_stopping(fits: pd.DataFrame, out: Output) -> None:
    """Item 4: what the automatic stop costs and saves against the oracle, per fit and per task."""
    section = "Oracle vs automatic stopping"
    per_fit = stopping_per_fit(fits)
    if per_fit.empty:
        out.note(
            section,
            "No image fit with a clean reference, so nothing to compare the automatic stop with "
            "(1-D signal fits have no automatic stop: no blur/sharpness signal).",
        )
        return
    path = out.root / "tables" / "stopping-per-fit.csv"
    per_fit.to_csv(path, index=False)
    out.link(
        section,
        path,
        "per fit (CSV)",
        "oracle peak, auto-stop and fixed-budget PSNR and iteration of "
        "every fit with a clean reference, iterations saved (budget − stop iteration) and PSNR lost",
    )
    digits = {c: 0 if "iteration" in c else 2 for c in STOP_COLUMNS}
    shown, data = [], []
    for task, by_task in per_fit.groupby("task", sort=False):
        parts = [("all settings", by_task)] if by_task["setting"].nunique() > 1 else []
        for setting, rows in parts + list(by_task.groupby("setting", sort=False)):
            stats = {c: Stat.of(rows[c]) for c in STOP_COLUMNS}
            fired = f"{int(rows['stop_fired'].sum())}/{len(rows)}"
            shown.append([task, setting, fired] + ["—" if s is None else s.text(digits[c]) for c, s in stats.items()])
            data.append(
                [task, setting, len(rows), int(rows["stop_fired"].sum())]
                + [x for s in stats.values() for x in ((s.mean, s.std) if s else (None, None))]
            )
    out.table(
        section,
        "stopping-summary",
        "Oracle vs automatic stopping, per task",
        pd.DataFrame(shown, columns=["task", "setting", "stop fired", *STOP_COLUMNS.values()]),
        pd.DataFrame(
            data,
            columns=["task", "setting", "fits", "stop_fired"]
            + [f"{c} {p}" for c in STOP_COLUMNS for p in ("mean", "std")],
        ),
        "mean ± std per task (and setting) of the per-fit numbers",
        [
            (
                "Mean ± sample standard deviation over fits. Stop iteration: fits whose rule fired only. "
                "Auto-stop PSNR, iterations saved and PSNR lost at auto-stop count a fit whose rule never "
                "fired as run to its budget (final PSNR, 0 iterations saved)."
            )
        ],
    )


def _unstored_band_convergence(store: Store, keys: list[str]) -> dict[str, list[float] | None]:
    """Band convergence of fits stored before summary rows had it: from the query dataset in one
    pass where `dip sweep collect` made one, else fit by fit from their metrics; None for a fit
    without FBC metrics."""
    if not keys:
        return {}
    crossings = band_crossings(store, FBC_LEVEL).set_index("key")
    found: dict[str, list[float] | None] = {}
    for key in keys:
        if key in crossings.index:
            found[key] = list(crossings.loc[key].astype(float))
        else:
            found[key] = [float(it) for it in band_convergence(store.read_metrics(key).to_pandas())] or None
    return found


def write_band_convergence(fits: pd.DataFrame, store: Store, out: Output) -> None:
    """Shi Fig. 3's claim as a table: the low bands converge before the high ones."""
    section = "Spectral bias"
    images = fits[~fits["one_d"]].to_dict("records")
    found = {fit["key"]: stored_band_convergence(fit) for fit in images}  # the summary rows', from the worker
    found |= _unstored_band_convergence(store, [key for key, bands in found.items() if bands is None])
    rows = [[fit["task"], fit["params"], fit["setting"], *its] for fit in images if (its := found[fit["key"]])]
    if not rows:
        return
    bands = [f"band {i + 1}" for i in range(len(rows[0]) - 3)]
    data = pd.DataFrame(rows, columns=["task", "params", "setting", *bands])
    table = data.groupby(["task", "params", "setting"], sort=False)[bands].mean().reset_index()
    shown = table.copy()
    shown[bands] = shown[bands].map(lambda v: f"{v:.0f}")
    out.table(
        section,
        "fbc-band-convergence",
        f"FBC: mean iteration at which each band reaches {FBC_LEVEL:.0%} of its maximum",
        shown,
        table,
        "per task, degradation and setting, mean over images and seeds; band 1 is the lowest frequency",
        [
            "Shi et al. (Fig. 3): low frequencies are learned faster than high ones, so the numbers "
            "should grow from band 1 to band 5."
        ],
    )


# --- figures ------------------------------------------------------------------------------------


class FitFiles:
    """The per-fit files of one figure group; metrics (small) are read once and kept."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._metrics: dict[str, pd.DataFrame] = {}

    def metrics(self, key: str) -> pd.DataFrame:
        if key not in self._metrics:
            self._metrics[key] = self.store.read_metrics(key).to_pandas()
        return self._metrics[key]

    def snapshots(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(iterations (T,), snapshots (T, C, …) as stored, float16 by default), or None for a fit
        that kept none. Not kept: a paper-scale trajectory is hundreds of MB."""
        trajectory = self.store.read_trajectory(key)
        if "snapshots" not in trajectory or not len(trajectory["snapshot_iterations"]):
            return None
        return trajectory["snapshot_iterations"], trajectory["snapshots"]

    def image(self, key: str, name: str) -> np.ndarray | None:
        """A stored PNG (clean, degraded, …) as (C, H, W) float32 in [0, 1], None if the fit has none."""
        if not self.store.has_image(key, name):
            return None
        return decode(self.store.read_image(key, name), f"{key}/{name}.png").numpy()


def _stack(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Curves (x, y) of several seeds on the union of their x: (x (T,), values (S, T)), NaN where missing."""
    x = np.unique(np.concatenate([np.asarray(cx) for cx, _ in curves]))
    values = np.full((len(curves), x.size), np.nan)
    for row, (cx, cy) in zip(values, curves, strict=False):
        row[np.searchsorted(x, cx)] = cy
    return x, values


def _at(frame: pd.DataFrame, column: str, iteration: float) -> float:
    """A metric's value at an iteration (interpolated between logged rows)."""
    return float(np.interp(iteration, frame["iteration"], frame[column]))


def chosen_iterations(available: np.ndarray, wanted: Sequence[int] | None, count: int = GRID_COLUMNS) -> list[int]:
    """The snapshot iterations nearest to `wanted`; by default `count` spread geometrically over
    the trajectory, since a DIP output changes fastest early."""
    targets: Sequence[float] | np.ndarray | None = wanted
    if targets is None:
        positive = available[available > 0]
        targets = np.geomspace(positive.min(), positive.max(), count) if positive.size else available
    return sorted({int(available[np.abs(available - w).argmin()]) for w in targets})


@dataclass
class FigureGroup:
    """The fits of one task, parameter setting and image: one line (or panel) per setting."""

    title: str
    stem: str
    settings: dict[str, pd.DataFrame]  # setting -> its fits, one per seed
    files: FitFiles
    out: Output

    def path(self, kind: str) -> Path:
        return self.out.root / "figures" / f"{self.stem}-{kind}.png"

    def add(self, kind: str, text: str, note: str) -> None:
        self.out.link(f"Figures: {self.title}", self.path(kind), text, note)

    def curves(self, setting: str, column: str) -> tuple[np.ndarray, np.ndarray]:
        return _stack(
            [
                (m["iteration"].to_numpy(), m[column].to_numpy())
                for m in map(self.files.metrics, self.settings[setting]["key"])
            ]
        )

    def has(self, column: str) -> bool:
        return all(column in self.files.metrics(k) for fits in self.settings.values() for k in fits["key"])

    def first_with_snapshots(self) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
        """Per setting, its first fit (lowest seed) that kept snapshots: (setting, key, iterations,
        snapshots as float32), one at a time."""
        for setting, fits in self.settings.items():
            found = next(
                ((key, snaps) for key in fits["key"] if (snaps := self.files.snapshots(key)) is not None), None
            )
            if found:
                key, (iterations, snapshots) = found
                yield setting, key, iterations, snapshots.astype(np.float32)


def psnr_figure(g: FigureGroup) -> None:
    clean = g.has("psnr_clean")
    column = "psnr_clean" if clean else "psnr_target"
    series = []
    for setting, fits in g.settings.items():
        marks = (
            {
                kind: [
                    (it, psnr)
                    for it, psnr in zip(fits[f"{stop}_iteration"], fits[f"{stop}_psnr"], strict=True)
                    if present(it)
                ]
                for kind, stop in (("oracle peak", "best"), ("auto-stop", "stop"))
            }
            if clean
            else {}
        )
        marks["fallback"] = [
            point for key in fits["key"] for point in plots.fallback_points(g.files.metrics(key), column)
        ]
        series.append(
            plots.Series(f"{setting} ({len(fits)} seed{'s' * (len(fits) > 1)})", *g.curves(setting, column), marks)
        )
    ylabel = "PSNR vs clean image (dB)" if clean else "PSNR vs degraded target (dB)"
    plots.curves_figure([plots.Panel(series, ylabel)], g.path("psnr"), f"PSNR over the fit: {g.title}")
    marked = (
        "dots: each seed's oracle peak, triangles: its automatic stop"
        if clean
        else ("no clean reference, so PSNR against the degraded target and no oracle")
    )
    marked += "; crosses: where backtracking restored the last good parameters"
    g.add("psnr", "PSNR vs iteration", f"mean over seeds, shaded min–max; {marked}")


def fbc_figure(g: FigureGroup) -> None:
    bands = sorted(
        (c for c in g.files.metrics(next(iter(g.settings.values()))["key"].iloc[0]) if re.fullmatch(r"fbc_\d+", c)),
        key=lambda c: int(c[4:]),
    )
    colors = plots.ramp(len(bands))
    labels = plots.BAND_LABELS if len(bands) == len(plots.BAND_LABELS) else bands
    panels = [
        plots.Panel(
            [
                plots.Series(label, *g.curves(setting, band), color=color)
                for band, label, color in zip(bands, labels, colors, strict=False)
            ],
            "FBC (mean |F out| / |F y|, clipped to 1)",
            setting,
            ylim=(0, 1.05),
            legend_title="frequency band",
        )
        for setting in g.settings
    ]
    plots.curves_figure(panels, g.path("fbc"), f"Frequency-band correspondence: {g.title}")
    g.add(
        "fbc",
        "FBC bands",
        "the five frequency bands' correspondence (Shi Eq. 1), one panel per setting: "
        "low bands rise first (spectral bias)",
    )


def ratio_figure(g: FigureGroup) -> None:
    series = []
    for setting, fits in g.settings.items():
        stops = [
            (it, _at(g.files.metrics(k), "ratio", it))
            for k, it in zip(fits["key"], fits["stop_iteration"], strict=True)
            if present(it)
        ]
        series.append(plots.Series(setting, *g.curves(setting, "ratio"), {"auto-stop": stops}))
    plots.curves_figure(
        [plots.Panel(series, "blurriness / sharpness (ratio)", log_y=True)],
        g.path("ratio"),
        f"Auto-stop signal: {g.title}",
    )
    g.add(
        "ratio",
        "blur/sharpness ratio",
        "the signal of the automatic stop (Shi Eq. 8): it fires where the "
        "ratio's windowed mean stops changing; log scale",
    )


def divergence_figure(g: FigureGroup) -> None:
    """ε(i) between every pair of seeds of a setting (C&M Fig. 1); none where no setting has two seeds."""
    series = []
    for setting, fits in g.settings.items():
        trajectories = [s for s in map(g.files.snapshots, fits["key"]) if s is not None]
        curves = []
        for (ia, a), (ib, b) in itertools.combinations(trajectories, 2):
            common, pa, pb = np.intersect1d(ia, ib, return_indices=True)
            eps = M.trajectory_divergence(
                torch.from_numpy(a[pa].astype(np.float32)), torch.from_numpy(b[pb].astype(np.float32))
            )
            curves.append((common, eps.numpy()))
        if curves:
            series.append(
                plots.Series(f"{setting} ({len(curves)} seed pair{'s' * (len(curves) > 1)})", *_stack(curves))
            )
    if not series:
        return
    plots.curves_figure(
        [plots.Panel(series, "ε(i) = Σ (T₁(i) − T₂(i))²  (pixels in [0, 1])", log_y=True)],
        g.path("divergence"),
        f"Trajectory divergence between seeds: {g.title}",
    )
    g.add(
        "divergence",
        "ε(i) between seeds",
        "squared distance between the outputs of two fits that differ "
        "only in their seed (C&M Fig. 1), at the snapshot iterations; mean over seed pairs, shaded min–max",
    )


def amplitude_error_figure(g: FigureGroup) -> None:
    """SE(k) of 1-D fits with each seed's convergence iteration marked (C&M Fig. 3)."""
    first = next(iter(g.settings.values()))
    columns = sorted(
        (c for c in g.files.metrics(first["key"].iloc[0]) if re.fullmatch(r"se_\d+", c)), key=lambda c: int(c[3:])
    )
    labels = _signal_freqs(g.files.store, first["key"].iloc[0], len(columns))
    series = []
    for i, (setting, fits) in enumerate(g.settings.items()):
        for j, (column, label) in enumerate(zip(columns, labels, strict=False)):
            converged = f"converged_k{j + 1}"
            marks = [
                (it, _at(g.files.metrics(k), column, it))
                for k, it in zip(fits["key"], fits.get(converged, pd.Series(dtype=float)), strict=True)
                if present(it) and it >= 0
            ]
            series.append(
                plots.Series(
                    f"{setting}, {label}",
                    *g.curves(setting, column),
                    {"converged": marks},
                    color=f"C{i % 10}",
                    linestyle=LINESTYLES[j % len(LINESTYLES)],
                )
            )
    plots.curves_figure(
        [plots.Panel(series, "SE(k) = (Ã_k − A_k)²", log_y=True, hlines={f"δ = {SE_CONVERGED}": SE_CONVERGED})],
        g.path("amplitude-error"),
        f"Amplitude error per frequency: {g.title}",
    )
    g.add(
        "amplitude-error",
        "SE(k) per frequency",
        "squared amplitude error of each frequency of the 1-D "
        "signal (C&M Fig. 3); squares: the iteration each seed first reached δ",
    )


def spectrum_figures(g: FigureGroup, wanted: Sequence[int] | None) -> None:
    """From each setting's first trajectory and the clean image: power-spectrum error over
    iterations (C&M Fig. 4), radial power spectra at chosen iterations (C&M Fig. 5), output grids."""
    maps, panels, rows = [], [], []
    for setting, key, iterations, snapshots in g.first_with_snapshots():
        clean = g.files.image(key, "clean")
        if clean is None or snapshots.ndim != 4 or clean.shape != snapshots.shape[1:] or len(iterations) < 2:
            continue
        side = min(clean.shape[1:])
        error = M.power_spectrum_error(torch.from_numpy(snapshots), torch.from_numpy(clean)[None]).numpy()
        freqs = np.arange(error.shape[1]) / side
        maps.append((setting, error, iterations, freqs))
        chosen = chosen_iterations(iterations, wanted)
        index = [int(np.flatnonzero(iterations == it)[0]) for it in chosen]
        power = M.radial_power_spectrum(torch.from_numpy(snapshots[index])).numpy()
        panels.append(
            plots.Panel(
                [
                    plots.Series(
                        "clean image",
                        freqs,
                        M.radial_power_spectrum(torch.from_numpy(clean)[None]).numpy(),
                        color="black",
                    )
                ]
                + [
                    plots.Series(f"iteration {it}", freqs, p[None], color=c)
                    for it, p, c in zip(chosen, power, plots.ramp(len(chosen)), strict=True)
                ],
                "radial mean power |F|²",
                setting,
                log_y=True,
            )
        )
        degraded = g.files.image(key, "degraded")
        inputs = [("clean", clean)] + ([("degraded", degraded)] if degraded is not None else [])
        rows.append(
            (setting, inputs + [(f"iteration {it}", snapshots[i]) for it, i in zip(chosen, index, strict=False)])
        )
    if not maps:
        return
    plots.heatmap_figure(
        maps,
        g.path("spectrum-error"),
        f"Power-spectrum error over the fit: {g.title}",
        "|log P(output) − log P(clean)|",
        "radial frequency (cycles / pixel)",
        skip_rows=1,
    )
    g.add(
        "spectrum-error",
        "power-spectrum error",
        "per iteration (y) and radial frequency (x), how far the "
        "output's power is from the clean image's (C&M Fig. 4): dark = matched; first seed of each setting; "
        "the colour scale ignores the random initial output, which saturates",
    )
    plots.curves_figure(
        panels,
        g.path("spectra"),
        f"Radial power spectra along the fit: {g.title}",
        xlabel="radial frequency (cycles / pixel)",
    )
    g.add(
        "spectra",
        "power spectra at chosen iterations",
        "the output's radially averaged power at a few "
        "snapshot iterations against the clean image's (C&M Fig. 5); first seed of each setting",
    )
    plots.image_grid(rows, g.path("outputs"), f"Outputs along the fit: {g.title}")
    g.add(
        "outputs",
        "outputs at chosen iterations",
        "clean and degraded images, then the output at the "
        "snapshot iterations nearest to the chosen ones; one row per setting (first seed)",
    )


def capacity_figures(fits: pd.DataFrame, store: Store, out: Output) -> None:
    """1-D convergence iteration against network width and depth, mean ± std over seeds (C&M App. B)."""
    converged = _converged_columns(fits)
    if not converged:
        return
    one_d = fits[fits[converged[0]].notna()]
    labels = _signal_freqs(store, one_d["key"].iloc[0], len(converged))
    shown = varying_settings(one_d)
    for axis in ("width", "depth"):
        xs = sorted(one_d[axis].dropna().unique())
        if len(xs) < 2:
            continue
        names = [setting_name(row, [c for c in shown if c != axis]) for row in one_d.to_dict("records")]
        series = []
        for i, (name, fits_of) in enumerate(one_d.assign(line=names).groupby("line", sort=False)):
            for j, (column, label) in enumerate(zip(converged, labels, strict=False)):
                per_x = [fits_of.loc[fits_of[axis] == x, column] for x in xs]
                seeds = max(len(v) for v in per_x)
                values = np.full((seeds, len(xs)), np.nan)
                for col, v in enumerate(per_x):
                    values[: len(v), col] = v.where(v >= 0).to_numpy()
                series.append(
                    plots.Series(
                        f"{name}, {label}",
                        np.asarray(xs, dtype=float),
                        values,
                        color=f"C{i % 10}",
                        linestyle=LINESTYLES[j % len(LINESTYLES)],
                        spread="std",
                    )
                )
        path = out.root / "figures" / f"capacity-{axis}.png"
        plots.curves_figure(
            [plots.Panel(series, f"iterations until SE(k) ≤ {SE_CONVERGED}", log_x=axis == "width")],
            path,
            f"Convergence iteration against network {axis} (1-D)",
            xlabel=f"network {axis}",
        )
        out.link(
            "Figures: 1-D capacity",
            path,
            f"convergence vs {axis}",
            "mean ± std over seeds of the first "
            f"iteration at which each frequency converged, against network {axis} (C&M App. B Fig. 6); "
            "fits that never converged are left out",
        )


def write_figures(
    fits: pd.DataFrame, store: Store, experiment: str | None, wanted: Sequence[int] | None, max_groups: int, out: Output
) -> None:
    """Group-level figures for the first `max_groups` (task, parameters, image) groups, never one per fit."""
    curves = fits[~fits["method"].map(present)]  # a classical method has one output, no trajectory
    groups = list(curves.groupby(["task", "params", "image"], sort=False))
    out.note(
        "Figures",
        f"Figures are drawn for {min(len(groups), max_groups)} of {len(groups)} groups "
        "(task × task parameters × image, in table order), one figure per group and kind with one line "
        "or panel per setting; `write_report(..., max_groups=N)` draws more.",
    )
    wanted = wanted if wanted is not None else FIGURE_ITERATIONS.get(experiment or "")
    for n, ((task, params, image), group) in enumerate(groups[:max_groups], start=1):
        title = f"{task} {params}".strip() + f", {image}"
        g = FigureGroup(
            title,
            f"g{n:02d}-{_slug(f'{task}-{params}-{image}')}",
            {s: f for s, f in group.groupby("setting", sort=False)},
            FitFiles(store),
            out,
        )
        psnr_figure(g)
        if g.has("fbc_1"):
            fbc_figure(g)
        if g.has("ratio"):
            ratio_figure(g)
        divergence_figure(g)
        if g.has("se_1"):
            amplitude_error_figure(g)
        spectrum_figures(g, wanted)
    capacity_figures(fits, store, out)


# --- C8: the upsampling layers' frequency response ---------------------------------------------

RESPONSE_LINES = {"measured": ("-", "measured"), "exact": (":", "exact filter"), "paper": ("--", "C&M form")}


def write_responses(fits: pd.DataFrame, store: Store, out: Output) -> None:
    """C&M App. E (C8): each layer's measured response beside its exact discrete filter and the
    paper's continuous form, as one figure per stride and a table of the deviations."""
    section = "Upsampling-layer frequency response (C&M App. E)"
    rows, panels = [], []
    for stride, by_stride in fits.groupby("param_stride", sort=True):
        series = []
        for i, fit in enumerate(by_stride.itertuples(index=False)):
            m = store.read_metrics(fit.key).to_pandas()
            for column, (style, what) in RESPONSE_LINES.items():
                if column in m:
                    series.append(
                        plots.Series(
                            f"{fit.upsample}: {what}",
                            m["frequency"].to_numpy(),
                            m[column].to_numpy()[None],
                            color=f"C{i}",
                            linestyle=style,
                        )
                    )
            edge = m.iloc[-1]  # k = 1/(2·stride), the highest frequency the input carries
            rows.append(
                [
                    int(stride),
                    fit.upsample,
                    fit.max_error_exact,
                    getattr(fit, "max_rel_error_paper", math.nan),
                    edge["measured"],
                    edge.get("paper", math.nan),
                ]
            )
        panels.append(plots.Panel(series, "|H(k)| / H(0)", f"stride {int(stride)}", ylim=(0, 1.05)))
    path = out.root / "figures" / "upsampling-response.png"
    plots.curves_figure(
        panels,
        path,
        "Upsampling layers' frequency response: measured (impulse through the layer), "
        "exact discrete filter, C&M App. E's sinc (nearest) / sinc² (bilinear)",
        xlabel="k (cycles per output sample)",
    )
    out.link(
        section,
        path,
        "frequency response per layer and stride",
        "measured |DFT| / DC of the response to "
        "a unit impulse on the band the low-resolution input carries, against the layer's exact filter and "
        "C&M's sinc (nearest) and sinc² (bilinear)",
    )
    data = pd.DataFrame(
        rows,
        columns=[
            "stride",
            "layer",
            "max |measured − exact|",
            "max |measured / paper − 1|",
            "measured at k = 1/(2·stride)",
            "paper at k = 1/(2·stride)",
        ],
    )
    shown = data.astype(object).map(
        lambda v: (
            "—"
            if isinstance(v, float) and math.isnan(v)
            else f"{v:.2e}"
            if isinstance(v, float) and v < 1e-3
            else f"{v:.3f}"
            if isinstance(v, float)
            else v
        )
    )
    out.table(
        section,
        "upsampling-response",
        "Upsampling layers: measured vs exact vs the paper's form",
        shown,
        data,
        "per layer and stride: deviations from the exact filter and from the paper's form, and "
        "the response at the band edge",
        [
            "Expected: measured = exact to float precision; the paper's continuous forms differ by "
            "aliasing, a relative (πk)²/6 at low k, so more at stride 2 than at stride 4; bilinear "
            "attenuates the band edge more than nearest (C&M: it is the smoother prior)."
        ],
    )


# --- the report ---------------------------------------------------------------------------------


def _summary_lines(store: Store, fits: pd.DataFrame, name: str | None, experiment: str | None) -> list[str]:
    failed = store.failed_keys() - set(fits["key"])
    reasons, read = store.failure_reasons(failed, REASONS_READ)
    seeds = sorted(fits["seed"].dropna().astype(int).unique().tolist())
    shown = str(seeds) if len(seeds) <= 10 else f"{seeds[0]}–{seeds[-1]} ({len(seeds)} seeds)"
    counts = (
        f"{fits['task'].nunique()} task(s), {fits['image'].nunique()} image(s), "
        f"{fits['setting'].nunique()} setting(s), seeds {shown}"
    )
    lines = [
        f"# Report: {name or 'sweep'}" + (f" (experiment {experiment})" if experiment else ""),
        "",
        f"Storage `{store.uri}`.",
        "",
        f"- fits done: {len(fits)} ({counts})",
        f"- fits failed: {len(failed)}" + (f" (reasons from {read} of their records)" if read < len(failed) else ""),
    ]
    lines += [f"  - {count} × {reason}" for reason, count in reasons.most_common(5)]
    no_clean = int((fits["best_psnr"].isna() & (fits["kind"] != "response")).sum())
    if no_clean:
        lines.append(
            f"- {no_clean} done fit(s) have no clean reference: they are left out of the PSNR tables and "
            "of the stopping analysis, and their figures show PSNR against the degraded target"
        )
    return lines


def write_report(
    source: str | Path,
    out_dir: str | Path,
    iterations: Sequence[int] | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    explorer_fits: int | None = explorer.EXPLORER_FITS,
) -> Path:
    """Write the report of a sweep (a manifest path or URI, or a storage path or URI) into `out_dir`.

    `iterations`: where grids of outputs and power spectra look (nearest snapshots); default
    the paper's choice for the experiment (C3, C9), else a few spread over the trajectory.
    `max_groups` caps the figure groups, `explorer_fits` the fits whose data the explorer holds
    (None: all). Returns the path of ``index.md``; raises ValueError when the storage holds no
    finished fit.
    """
    manifest = read_manifest(source) if is_manifest(source) else None
    store = open_store(manifest or source)
    fits = load_fits(store)
    stored = {column: next(iter(fits[column].dropna()), None) for column in ("sweep", "experiment")}
    name = manifest.name if manifest else stored["sweep"]
    experiment = manifest.experiment if manifest and manifest.experiment else stored["experiment"]
    out = Output(Path(out_dir))
    for folder in ("tables", "figures"):
        (out.root / folder).mkdir(parents=True, exist_ok=True)
    measured = fits["kind"] == "response"
    if measured.any():
        write_responses(fits[measured], store, out)
    if not measured.all():
        restored = fits[~measured]
        write_tables(restored, store, experiment, out)
        write_stopping(restored, out)
        write_band_convergence(restored, store, out)
        write_figures(restored, store, experiment, iterations, max_groups, out)
    lines = _summary_lines(store, fits, name, experiment)
    if not measured.all():
        restored = fits[~measured]
        page, held = explorer.write_explorer(
            restored, store, out.root, name or "sweep", varying_settings(fits), explorer_fits
        )
        some = (
            f" (the data of {held:,} of the {len(restored):,} fits, spread over them; "
            "`dip report --explorer-fits all` writes every fit's)"
        )
        lines.append(
            f"- [trajectory explorer]({page.name}): every fit in a table to filter, group and sort; a fit's "
            "outputs, error maps, curves and power spectra along its trajectory on one slider, up to four side by side"
            + (some if held < len(restored) else "")
        )
    claims = verdict_lines(verdicts(fits, FitFiles(store)))
    if claims:
        lines += ["", "## The papers' claims", "", *claims]
    for section, entries in out.sections.items():
        lines += ["", f"## {section}", "", *entries]
    index = out.root / "index.md"
    index.write_text("\n".join(lines) + "\n")
    return index
