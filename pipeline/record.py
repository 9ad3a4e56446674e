"""The summary record of a finished fit: one typed row, one table schema, one MLflow flattening.

The worker builds a `Summary` per fit, storage writes its `row()` into the done marker and
`collect` types every column by `column_type`, the report reads the same columns back, and
MLflow gets `flatten_for_mlflow` of the same row. A dataclass rather than a pydantic model:
the values come from a validated `FitSpec` and a `FitResult`, so there is nothing left to
validate, only to name and type once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:  # the record itself is plain data; only `Summary.of` reads a spec
    from pipeline.manifest import FitSpec

Kind = Literal["image", "signal", "response"]
RESPONSE_TASK = "upsampling_response"  # measurements of a layer (pipeline.worker.measure_response), not fits
SIGNAL_PREFIX = "signal:"  # image names of 1-D inputs (SignalSpec.name), only read for markers without `kind`

# What a fit ran, in the order of a row's first columns ("kind" says image, 1-D signal or layer response).
SPEC_COLUMNS: dict[str, pa.DataType] = {
    "key": pa.string(),
    "sweep": pa.string(),
    "experiment": pa.string(),
    "image": pa.string(),
    "kind": pa.string(),
    "dataset": pa.string(),
    "task": pa.string(),
    "seed": pa.int64(),
    "crop": pa.int64(),
    "downsample": pa.int64(),
    "grey": pa.bool_(),
    "method": pa.string(),
    "model": pa.string(),
    "width": pa.int64(),
    "depth": pa.int64(),
    "upsample": pa.string(),
    "up_sigma": pa.float64(),
    "up_sigmas": pa.string(),
    "norm": pa.string(),
    "lam": pa.float64(),
    "input": pa.string(),
    "bound_head": pa.bool_(),
    "detach_sigma": pa.bool_(),
    "iterations": pa.int64(),
    "lr": pa.float64(),
    "optimizer": pa.string(),
    "tv_weight": pa.float64(),
}
# Task parameters, stored as param_<name> (see pipeline.manifest's task table).
PARAM_TYPES: dict[str, pa.DataType] = {
    "sigma": pa.float64(),
    "cutoff": pa.float64(),
    "quality": pa.int64(),
    "kind": pa.string(),
    "ratio": pa.float64(),
    "p": pa.float64(),
    "factor": pa.int64(),
    "stride": pa.int64(),
}
# How a fit went (dipmodel.fit.FitResult.summary), and what a layer-response measurement found.
OUTCOME_COLUMNS: dict[str, pa.DataType] = {
    "iterations_run": pa.int64(),
    "final_psnr": pa.float64(),
    "best_psnr": pa.float64(),
    "best_iteration": pa.int64(),
    "input_psnr": pa.float64(),
    "stop_psnr": pa.float64(),
    "stop_iteration": pa.int64(),
    "posterior_psnr": pa.float64(),
    "posterior_samples": pa.int64(),
    "fallbacks": pa.int64(),
    "seconds": pa.float64(),
    "ms_per_iteration": pa.float64(),
    "max_error_exact": pa.float64(),
    "max_rel_error_paper": pa.float64(),
    "plateau_iteration": pa.int64(),  # fits with a clean image: pipeline.single.plateau_iteration
}
CONVERGED_PREFIX = "converged_k"  # converged_k1 … converged_kK of a 1-D fit: iterations, -1 if never (C&M Fig. 3)
# Of an image fit with FBC metrics, per band: the iteration it reaches its convergence level
# (pipeline.single.band_convergence; Shi et al. 2022, Fig. 3) and its value at the last logged iteration.
FBC_CONVERGED_PREFIX = "fbc_converged_"
FBC_FINAL_PREFIX = "fbc_final_"
# Columns numbered from 1, by prefix, with their type. Markers written before the fbc_* and
# plateau_iteration columns existed lack them and cannot get them from their row (`upgrade`):
# readers compute them from the fit's metrics instead.
NUMBERED: dict[str, pa.DataType] = {
    CONVERGED_PREFIX: pa.int64(),
    FBC_CONVERGED_PREFIX: pa.int64(),
    FBC_FINAL_PREFIX: pa.float64(),
}
# The columns every summary table has, whatever its fits (param_* and the numbered columns come with the fits).
ROW_SCHEMA = pa.schema([*SPEC_COLUMNS.items(), *OUTCOME_COLUMNS.items()])


def _numbered(name: str) -> tuple[str, int] | None:
    """(prefix, number) of a numbered column such as converged_k3; else None."""
    for prefix in NUMBERED:
        if name.startswith(prefix) and name.removeprefix(prefix).isdigit():
            return prefix, int(name.removeprefix(prefix))
    return None


def column_type(name: str) -> pa.DataType:
    """A summary column's type. A column no record defines (a marker from elsewhere) is text, so
    that a table of any markers can be built without guessing."""
    if name.startswith("param_") and name.removeprefix("param_") in PARAM_TYPES:
        return PARAM_TYPES[name.removeprefix("param_")]
    if numbered := _numbered(name):
        return NUMBERED[numbered[0]]
    return SPEC_COLUMNS.get(name) or OUTCOME_COLUMNS.get(name) or pa.string()


def kind_of(task: str | None, image: str | None) -> Kind:
    """What a fit fitted; markers written before rows carried ``kind`` get it from here."""
    if task == RESPONSE_TASK:
        return "response"
    return "signal" if str(image).startswith(SIGNAL_PREFIX) else "image"


def upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A done marker's row with what older markers lack (``kind``), as `Store.collect` reads it.
    Columns computed from a fit's metrics (fbc_*, plateau_iteration) are not added: a row lacks them."""
    return row if "kind" in row else row | {"kind": kind_of(row.get("task"), row.get("image"))}


@dataclass(frozen=True)
class Summary:
    """One finished fit (or layer-response measurement): its spec columns, task parameters and outcome."""

    spec: dict[str, Any]  # SPEC_COLUMNS, every one present (None where a fit has no such setting)
    params: dict[str, Any]  # task parameters by name
    outcome: dict[str, float | int | None]  # OUTCOME_COLUMNS and the numbered columns present for this fit

    def __post_init__(self) -> None:
        """Refuse a column the schema does not type, so no fit writes one that would be read as text."""
        unknown = sorted(set(self.spec) ^ set(SPEC_COLUMNS))
        unknown += [f"param_{p}" for p in self.params if p not in PARAM_TYPES]
        unknown += [name for name in self.outcome if name not in OUTCOME_COLUMNS and column_type(name) == pa.string()]
        if unknown:
            raise ValueError(
                f"summary of fit {self.spec.get('key')}: columns {unknown} missing from or unknown to "
                "pipeline.record's schema; add them there"
            )

    @classmethod
    def of(cls, spec: FitSpec, outcome: Mapping[str, float | int | None]) -> Summary:
        """The record of a spec and its outcome; a per-layer σ goes to ``up_sigmas`` as text
        ("0.1,0.1,0.5", coarsest first), leaving the number column ``up_sigma`` null."""
        net, cfg = spec.network, spec.fit  # both empty of network/loop settings for a classical method
        sigma = net.get("up_sigma")
        per_layer = sigma if isinstance(sigma, (list, tuple)) else None
        kind: Kind = "response" if spec.task == RESPONSE_TASK else "signal" if spec.signal is not None else "image"
        columns = {
            "key": spec.key,
            "sweep": spec.sweep,
            "experiment": spec.experiment,
            "image": spec.image_name,
            "kind": kind,
            "dataset": spec.dataset,
            "task": spec.task,
            "seed": spec.seed,
            "crop": spec.crop,
            "downsample": spec.downsample,
            "grey": spec.grey,
            "method": spec.method,
            "model": net.get("name"),
            "width": net.get("width"),
            "depth": net.get("depth"),
            "upsample": net.get("upsample"),
            "up_sigma": None if per_layer else sigma,
            "up_sigmas": None if per_layer is None else ",".join(f"{s:g}" for s in per_layer),
            "norm": net.get("norm"),
            "lam": net.get("lam"),
            "input": net.get("input"),
            "bound_head": net.get("bound_head"),
            "detach_sigma": net.get("detach_sigma"),
            "iterations": cfg.get("iterations", cfg.get("tv_iterations")),
            "lr": cfg.get("lr"),
            "optimizer": cfg.get("optimizer"),
            "tv_weight": cfg.get("tv_weight"),
        }
        return cls(columns, dict(sorted(spec.task_params.items())), dict(outcome))

    def row(self) -> dict[str, Any]:
        """The flat row of a done marker and of the summary table: spec, param_*, outcome columns."""
        return self.spec | {f"param_{k}": v for k, v in self.params.items()} | self.outcome


def summary_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows of summary columns as one table typed by `column_type`; columns are the union of the
    rows' keys in order of appearance, null where a row lacks one. A value that does not fit its
    column's type is an error naming the column and the fit."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns: dict[str, pa.Array] = {}
    for name in names:
        dtype = column_type(name)
        values = [row.get(name) for row in rows]
        if dtype == pa.string():  # text columns, and columns no record defines, hold text
            values = [None if v is None else str(v) for v in values]
        try:
            columns[name] = pa.array(values, type=dtype)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            bad = next((row.get("key") for row in rows if _misfits(row.get(name), dtype)), "?")
            raise ValueError(f"summary column {name!r} of fit {bad}: not {dtype}: {err}") from None
    return pa.table(columns)


def _misfits(value: Any, dtype: pa.DataType) -> bool:
    try:
        pa.array([value], type=dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return True
    return False


def _column_rank(name: str) -> tuple[int, int, str]:
    """Where a column goes: the record's columns in schema order, then param_*, the numbered
    columns by prefix and number and any other column by name."""
    if name in ROW_SCHEMA.names:
        return (0, ROW_SCHEMA.names.index(name), "")
    if name.startswith("param_"):
        return (1, 0, name)
    if numbered := _numbered(name):
        return (2 + list(NUMBERED).index(numbered[0]), numbered[1], "")
    return (2 + len(NUMBERED), 0, name)


def canonical(summaries: pa.Table) -> pa.Table:
    """A summary table in the one form `collect` gives however it was assembled: rows sorted by
    key, every `ROW_SCHEMA` column, any other column only where some fit has a value, columns in
    a fixed order. A table reusing rows of an earlier one then equals a table read at once (a
    column null in every kept row may or may not have been in those rows' markers; this form
    does not depend on it)."""
    summaries = with_schema(summaries)
    names = [
        name
        for name in summaries.column_names
        if name in ROW_SCHEMA.names or summaries.column(name).null_count < summaries.num_rows
    ]
    return summaries.select(sorted(names, key=_column_rank)).sort_by("key")


def with_schema(summaries: pa.Table) -> pa.Table:
    """A summary table with every `ROW_SCHEMA` column (null where no fit has it), for readers
    such as the report that expect them all."""
    for field in ROW_SCHEMA:
        if field.name not in summaries.column_names:
            summaries = summaries.append_column(field, pa.nulls(summaries.num_rows, field.type))
    return summaries


def flatten_for_mlflow(
    row: dict[str, Any], metric_names: set[str] | frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, float | int | None]]:
    """A summary row as MLflow params (what ran: the spec and param_* columns that are set, the
    method "dip" for a network fit, so that runs filter by it) and metrics (outcome numbers;
    names that the per-iteration metrics also use are left to them). The key is the run's tag."""
    described = {k: v for k, v in upgrade(row).items() if k in SPEC_COLUMNS or k.startswith("param_")}
    params = {k: v for k, v in described.items() if k != "key" and v is not None}
    params["method"] = params.get("method", "dip")
    numbers: dict[str, float | int | None] = {
        k: v
        for k, v in row.items()
        if k not in described and k not in metric_names and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return params, numbers


# --- names: how a fit is told apart in a table row, a column heading and an MLflow run ---------

PARAM_SYMBOLS = {
    "sigma": "σ=",
    "quality": "q=",
    "ratio": "r=",
    "p": "p=",
    "factor": "×",
    "cutoff": "cutoff=",
    "kind": "",
}


def present(value: Any) -> bool:
    """Whether a summary value is set: not None, NaN or pandas' NA (how unset arrives from
    JSON markers and from a typed table alike)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


def fmt(value: Any) -> str:
    """2.0 → "2", 0.25 → "0.25", strings as they are."""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else f"{value:g}"
    return str(value)


def params_label(params: Mapping[str, Any]) -> str:
    """A task-parameter setting as a column heading: {"sigma": 25} → "σ=25", {"factor": 4} → "×4"."""
    return " ".join(f"{PARAM_SYMBOLS.get(k, k + '=')}{fmt(v)}" for k, v in params.items() if present(v))


def setting_name(fit: Mapping[str, Any], shown: Sequence[str]) -> str:
    """A row name such as "decoder λ=2 gaussian σ=0.5" or "decoder unconstrained".

    The method (baselines) and network are always named; λ whenever it varies or is set
    ("unconstrained" when not); upsampling with its σ when either varies; any other varying
    setting as name=value.
    """
    parts = [str(fit[c]) for c in ("method", "model") if present(fit.get(c))]
    if not present(fit.get("model")):  # a classical method: no network settings to name
        return " ".join(parts + [f"{c}={fmt(fit[c])}" for c in shown if c == "tv_weight" and present(fit.get(c))])
    if present(fit.get("optimizer")) and fit["optimizer"] != "adam":
        parts.append(str(fit["optimizer"]))
    if "lam" in shown or present(fit.get("lam")):
        parts.append(f"λ={fmt(fit['lam'])}" if present(fit.get("lam")) else "unconstrained")
    if ({"upsample", "up_sigma", "up_sigmas"} & set(shown)) and present(fit.get("upsample")):
        sigma = fit.get("up_sigmas") if present(fit.get("up_sigmas")) else fit.get("up_sigma")  # per layer, or one
        gaussian = fit["upsample"] == "gaussian" and present(sigma)
        parts.append(f"{fit['upsample']} σ={fmt(sigma)}" if gaussian else str(fit["upsample"]))
    named = ("method", "model", "optimizer", "lam", "upsample", "up_sigma", "up_sigmas")
    parts += [f"{c}={fmt(fit[c])}" for c in shown if c not in named and present(fit.get(c))]
    return " ".join(parts) or "fit"


def run_name(row: Mapping[str, Any], shown: Sequence[str] = ()) -> str:
    """What a fit is, for a person browsing runs: "F16 · denoise σ=25 · decoder λ=2 · seed 0".

    The image by its file stem, the task with its parameters, the method or network with its
    λ and optimiser and the `shown` settings (`setting_name`), the seed. The key stays a tag.
    """
    image = re.split(r"[/:]", str(row.get("image") or "?"))[-1].rsplit(".", 1)[0]
    params = {k.removeprefix("param_"): v for k, v in row.items() if k.startswith("param_")}
    task = " ".join(part for part in (str(row.get("task") or "?"), params_label(params)) if part)
    parts = [image, task, setting_name(row, shown)]
    if present(row.get("seed")):
        parts.append(f"seed {fmt(row['seed'])}")
    return " · ".join(parts)
