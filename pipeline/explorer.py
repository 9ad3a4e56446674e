"""The trajectory explorer: an interactive page over a sweep's fits, written beside the report.

Everything is a static file, so the page works opened from disk (``file://``) or from object
storage through any static file server, with no server of ours and no internet. Browsers do not
let a page opened from disk ``fetch`` its neighbours, but they do run ``<script>`` files: so the
fit table (``explorer/fits.js``) and each fit's data (``explorer/fit-v2/<key>.js``) are scripts
that hand their JSON to the page. A fit's file is loaded only when the fit is shown, which keeps
the page as quick to open for 10,000 fits as for 10. Plots are plotly.js and the table is
DataTables, copied from the plotly and itables Python packages.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from html import escape as html_escape
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image

from dipmodel import metrics as M
from pipeline.record import present, run_name
from pipeline.storage import Store

PAGE = "explorer.html"
FOLDER = "explorer"
FIT_FOLDER = "fit-v2"  # bump when a fit file's content changes: existing files are reused otherwise
EXPLORER_FITS = 2000  # fits whose files a report writes by default (`dip report --explorer-fits`)
MAX_CURVE_POINTS = 2000  # per curve; a 10,000-iteration fit logged at every iteration is thinned
ERROR_SCALE = 0.25  # |output − clean| (mean over channels) shown from 0 to this, in every fit
CURVES = ("psnr_clean", "psnr_target", "fbc_1", "fbc_2", "fbc_3", "fbc_4", "fbc_5", "ratio")

# Columns of the fit table: what a fit is (filter and group by these), then what it measured
# (sort by these). Columns no fit has are left out.
SPEC_COLUMNS = (
    "image", "dataset", "task", "method", "model", "optimizer", "lam", "upsample", "up_sigma", "up_sigmas",
    "width", "depth", "norm", "input", "lr", "iterations", "crop", "downsample", "grey", "seed",
)  # fmt: skip
OUTCOME_COLUMNS = (
    "best_psnr", "best_iteration", "stop_psnr", "stop_iteration", "final_psnr", "posterior_psnr",
    "input_psnr", "fallbacks", "iterations_run", "seconds",
)  # fmt: skip


def _script(callback: str, payload: Any) -> str:
    """A script that hands `payload` (JSON; NaN as null) to the page's `callback`."""
    return f"DIPExplorer.{callback}({json.dumps(payload, allow_nan=False, separators=(',', ':'))});\n"


def _json_value(value: Any) -> Any:
    """A table cell as JSON: numbers as numbers, unset as null, anything else as text."""
    if not present(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4) if math.isfinite(value) else None
    return str(value)


def fit_table(fits: pd.DataFrame, shown: Sequence[str]) -> dict[str, Any]:
    """The table the page filters, groups and sorts: a name and key per fit, the spec columns
    (``param_*`` beside the task) and the outcome columns, each only where some fit has it."""
    params = sorted(c for c in fits.columns if c.startswith("param_"))
    spec = [c for c in SPEC_COLUMNS[:3] + tuple(params) + SPEC_COLUMNS[3:] if c in fits and fits[c].map(present).any()]
    outcome = [c for c in OUTCOME_COLUMNS if c in fits and fits[c].map(present).any()]
    records = fits.to_dict("records")
    rows = [[str(r["key"]), run_name(r, shown)] + [_json_value(r[c]) for c in spec + outcome] for r in records]
    return {"spec": spec, "outcome": outcome, "rows": rows}


def _png(pixels: np.ndarray) -> str:
    """(H, W) or (H, W, 3) uint8 as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pixels(image: np.ndarray) -> np.ndarray:
    """(C, H, W) floats in [0, 1] as uint8 pixels for a PNG (grey stays one channel)."""
    scaled = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5
    hwc = scaled.astype(np.uint8).transpose(1, 2, 0)
    return hwc[..., 0] if hwc.shape[-1] == 1 else hwc


_ERROR_COLOURS = colormaps["magma"]


def error_map(output: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """|output − clean|, mean over channels, coloured from 0 (black) to ERROR_SCALE (light yellow)."""
    error = np.abs(output.astype(np.float32) - clean.astype(np.float32)).mean(axis=0) / ERROR_SCALE
    return (_ERROR_COLOURS(np.clip(error, 0.0, 1.0))[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _thinned(frame: pd.DataFrame) -> pd.DataFrame:
    """At most MAX_CURVE_POINTS rows, evenly spaced, always with the last one."""
    if len(frame) <= MAX_CURVE_POINTS:
        return frame
    rows = np.unique(np.append(np.linspace(0, len(frame) - 1, MAX_CURVE_POINTS).astype(int), len(frame) - 1))
    return frame.iloc[rows]


def _curves(metrics: pd.DataFrame) -> dict[str, list[float | None]]:
    thinned = _thinned(metrics)
    curves = {"iteration": thinned["iteration"].astype(int).tolist()}
    amplitude_errors = [c for c in thinned.columns if c.startswith("se_")]  # a 1-D fit's SE(k) (C&M Fig. 3)
    for column in [*CURVES, *amplitude_errors]:
        if column in thinned:
            values = np.round(thinned[column].to_numpy(dtype=np.float64), 4).tolist()
            curves[column] = [v if math.isfinite(v) else None for v in values]
    return curves


def _marks(row: Mapping[str, Any], metrics: pd.DataFrame) -> dict[str, Any]:
    """Where the oracle, the automatic stop and the backtracking safeguard acted: (iteration,
    clean PSNR) points for the PSNR plot."""

    def point(iteration: str, psnr: str) -> list[float] | None:
        known = present(row.get(iteration)) and present(row.get(psnr))
        return [int(row[iteration]), float(row[psnr])] if known else None

    fallbacks: list[list[float]] = []
    if "fallbacks" in metrics and "psnr_clean" in metrics:
        rose = np.flatnonzero(np.diff(metrics["fallbacks"].to_numpy(dtype=np.float64), prepend=0.0) > 0)
        fallbacks = [[int(metrics["iteration"].iat[i]), _json_value(metrics["psnr_clean"].iat[i])] for i in rose]
    return {"best": point("best_iteration", "best_psnr"), "stop": point("stop_iteration", "stop_psnr"),
            "fallbacks": fallbacks}  # fmt: skip


def fit_data(store: Store, row: Mapping[str, Any], label: str) -> dict[str, Any]:
    """One fit's file: its curves, marks, clean and degraded images, and per snapshot the output,
    its error map and its radial power spectrum (the final output when no snapshot was kept)."""
    from pipeline.report import FitFiles  # the report's reader of a fit's files (it imports this module)

    key, files = str(row["key"]), FitFiles(store)
    metrics = files.metrics(key)
    data: dict[str, Any] = {"key": key, "label": label, "curves": _curves(metrics), "marks": _marks(row, metrics)}
    clean, degraded = files.image(key, "clean"), files.image(key, "degraded")
    data["clean"] = _png(_pixels(clean)) if clean is not None else None
    data["degraded"] = _png(_pixels(degraded)) if degraded is not None else None
    kept = files.snapshots(key)
    if kept is None and (final := files.image(key, "final")) is not None:
        kept = np.array([int(metrics["iteration"].iat[-1])]), final[None]
    iterations, snapshots = kept or (np.zeros(0, np.int64), np.zeros((0, 0, 0, 0)))
    data["snapshots"] = {"iteration": iterations.tolist(), "output": [], "error": [], "power": []}
    if snapshots.ndim == 3:  # a 1-D fit: (T, 1, length) signals, drawn as curves
        data["snapshots"]["signal"] = np.round(snapshots[:, 0].astype(np.float64), 4).tolist()
    if snapshots.ndim != 4 or not len(iterations):
        return data
    outputs = np.asarray(snapshots, dtype=np.float32)
    shots = data["snapshots"]
    shots["output"] = [_png(_pixels(out)) for out in outputs]
    matched = clean is not None and clean.shape == outputs.shape[1:]
    if matched:
        assert clean is not None
        shots["error"] = [_png(error_map(out, clean)) for out in outputs]
        data["clean_power"] = _rounded(M.radial_power_spectrum(torch.from_numpy(clean)[None])[0])
    shots["power"] = [_rounded(p) for p in M.radial_power_spectrum(torch.from_numpy(outputs))]
    data["frequency"] = (np.arange(len(shots["power"][0])) / min(outputs.shape[-2:])).round(5).tolist()
    return data


def _rounded(power: torch.Tensor) -> list[float]:
    """Power values to 4 significant digits (a log-scale plot needs no more)."""
    return [float(f"{v:.4g}") for v in power.tolist()]


def _library_files() -> dict[str, Callable[[], str]]:
    """The page's libraries, from the Python packages that ship them. DataTables comes as an ES
    module, which a page opened from disk cannot load by URL; it is handed over as a string and
    imported from a blob URL, as itables itself does in its offline mode."""

    def package_text(package: str, *path: str) -> str:
        return resources.files(package).joinpath(*path).read_text(encoding="utf-8")

    return {
        "plotly.min.js": lambda: package_text("plotly", "package_data", "plotly.min.js"),
        "datatables.js": lambda: (
            "window.DIP_DATATABLES = " + json.dumps(package_text("itables", "html", "dt_bundle.js")) + ";\n"
        ),
        "datatables.css": lambda: package_text("itables", "html", "dt_bundle.css"),
    }


def exported_keys(keys: Sequence[str], written: set[str], most: int | None) -> list[str]:
    """The fits whose files the explorer holds: every one (`most` None or not fewer than the
    fits), else those written by earlier reports plus fits spread evenly over `keys` up to
    `most`, so that a sample of every part of a large sweep can be opened."""
    if most is None or len(keys) <= most:
        return list(keys)
    have = [key for key in keys if key in written]
    rest = [key for key in keys if key not in written]
    room = max(most - len(have), 0)
    return have + [rest[i * len(rest) // room] for i in range(room)] if room else have


def write_explorer(
    fits: pd.DataFrame, store: Store, root: Path, title: str, shown: Sequence[str], most: int | None = EXPLORER_FITS
) -> tuple[Path, int]:
    """Write explorer.html and its files into the report folder `root`; returns the page's path
    and how many fits' data it holds.

    `fits` is the report's table (`pipeline.report.load_fits`), `shown` the settings that tell
    its fits apart (they name each fit). Every fit is in the table; the files of at most `most`
    fits are written (None: all), about 0.1–1.2 MB and 30 ms each. A fit's file is written once
    and reused by later reports of the same folder: a done fit never changes.
    """
    folder = root / FOLDER
    (folder / FIT_FOLDER).mkdir(parents=True, exist_ok=True)
    (folder / "lib").mkdir(exist_ok=True)
    for name, text in _library_files().items():
        (folder / "lib" / name).write_text(text(), encoding="utf-8")
    page = resources.files("pipeline").joinpath("explorer_page")
    for name in ("explorer.js", "explorer.css"):
        shutil.copyfileobj(page.joinpath(name).open("rb"), (folder / name).open("wb"))
    table = fits[fits["kind"] != "response"]
    keys = [str(key) for key in table["key"]]
    written = {path.stem for path in (folder / FIT_FOLDER).glob("*.js")}
    exported = exported_keys(keys, written, most)
    payload = {"title": title, **fit_table(table, shown)}
    if len(exported) < len(keys):
        payload["exported"] = sorted(exported)
    (folder / "fits.js").write_text(_script("table", payload), encoding="utf-8")
    chosen = set(exported)
    for row in table.to_dict("records"):
        if row["key"] not in chosen:
            continue
        path = folder / FIT_FOLDER / f"{row['key']}.js"
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            temporary.write_text(_script("fit", fit_data(store, row, run_name(row, shown))), encoding="utf-8")
            temporary.replace(path)  # whole or absent: an interrupted report leaves no half file
    html = page.joinpath(PAGE).read_text(encoding="utf-8").replace("{{title}}", html_escape(title))
    (root / PAGE).write_text(html, encoding="utf-8")
    return root / PAGE, len(exported)
