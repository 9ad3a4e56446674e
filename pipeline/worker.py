"""One fit spec from image to stored results: the body of every sweep worker.

Plain functions, no Ray, so the same code runs in a Ray actor, in a test, or in a debugger.
A fit's own failure (unreadable image, bad parameter, NaN loss) is recorded in storage and
returned as a "failed" record; it is never retried. Anything else (a dead worker, a node
gone) is Ray's to retry, and storage makes a repeated completion harmless. A worker may run
several specs at once (``resources.pack``): their networks are fitted together by
`dipmodel.fit.fit_many`, and each is stored exactly as it would be alone.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dipmodel.classical import restore
from dipmodel.fit import FitJob, FitResult, fit_many
from dipmodel.layers import exact_response, measured_response, paper_response
from dipmodel.metrics import psnr, to_grey
from dipmodel.networks import NetConfig
from pipeline.images import ImageError, decode, read_bytes, read_limited
from pipeline.locations import is_remote, local_path
from pipeline.manifest import FitSpec
from pipeline.record import Summary
from pipeline.single import (
    Problem,
    amplitude_metrics,
    convergence_iterations,
    curve_outcome,
    downsample,
    prepare_problem,
    result_images,
    sine_signal,
)
from pipeline.storage import Store


def load_spec_image(spec: FitSpec, storage_options: dict[str, Any] | None = None) -> torch.Tensor:
    """The clean input of a spec: a (1, L) signal, or an image from a bundled sample, a local path
    or an fsspec URI, downsampled and then reduced to its luma as the spec says."""
    if spec.signal is not None:
        return sine_signal(spec.signal.length, spec.signal.freqs, spec.signal.amplitude_list())
    uri = spec.image_uri
    if is_remote(uri):
        import fsspec

        try:
            with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
                data = read_limited(fh, uri)
        except (OSError, ValueError) as err:
            raise ImageError(f"cannot read image {uri}: {err}") from None
    else:
        data, _ = read_bytes(local_path(uri))
    if not data:
        raise ImageError(f"{uri}: file is empty")
    image = decode(data, uri)
    if spec.downsample:
        image = downsample(image, spec.downsample, spec.image_name)
    return to_grey(image[None])[0] if spec.grey and image.shape[0] == 3 else image


def fit_summary(spec: FitSpec, result: FitResult, problem: Problem) -> Summary:
    """The record of a finished fit: what was run, and how it went (1-D fits: when each frequency
    converged; every fit: the numbers the report and claims need from its curves, `curve_outcome`).
    ``input_psnr`` is the observation's own PSNR against the clean image, the level a fit must
    beat to have removed anything (C&M Fig. 2); None where the two differ in shape
    (super-resolution) or are equal (fitting the clean image)."""
    outcome = curve_outcome(result.metrics)
    if spec.signal is not None:
        outcome |= convergence_iterations(result.metrics, len(spec.signal.freqs))
    seen = float(psnr(problem.y, problem.clean)[0]) if problem.y.shape == problem.clean.shape else math.inf
    return Summary.of(spec, outcome | result.summary() | {"input_psnr": seen if math.isfinite(seen) else None})


def measure_response(spec: FitSpec) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """C8: the summary row and per-frequency table of the model's upsampling layer, measured on
    the spec's impulse against the layer's exact discrete response and C&M's continuous form.
    Nothing is optimised, so the spec's fit settings play no part."""
    net, stride = spec.network, spec.task_params["stride"]
    k, measured = measured_response(net["upsample"], stride, net["up_sigma"], spec.impulse or 64)
    table = {"frequency": k, "measured": measured, "exact": exact_response(net["upsample"], stride, k, net["up_sigma"])}
    paper = paper_response(net["upsample"], stride, k)
    outcome = {"max_error_exact": float((measured - table["exact"]).abs().max())}
    if paper is not None:
        table["paper"] = paper
        outcome["max_rel_error_paper"] = float((measured / paper - 1).abs().max())
    # Storage and MLflow index rows by "iteration": here the frequency index j, k = j / (length·stride).
    index = np.arange(1, len(k) + 1, dtype=np.int64)
    columns = {"iteration": index} | {name: column.numpy() for name, column in table.items()}
    return Summary.of(spec, outcome).row(), columns


@dataclass
class Prepared:
    """A spec made ready to run: its problem, and the fit of its network (None: classical method)."""

    spec: FitSpec
    problem: Problem
    job: FitJob | None

    def stored_spec(self) -> dict[str, Any]:
        """The spec as storage records it (spec.json, failure records): what ran."""
        return ran_spec(self.spec, self.job.net_cfg if self.job is not None else None)


def ran_spec(spec: FitSpec, net_cfg: NetConfig | None) -> dict[str, Any]:
    """The spec's JSON with its network as the fit built it.

    The manifest plans every network with NetConfig's default ``out_channels`` (3) before any
    image is read; `prepare` builds it with the image's channel count (1 for a grey image or a
    1-D signal). The stored spec says what ran; its ``key`` stays the planned spec's, so keys (and
    the fits stored under them) do not change, and `fit_key` of a stored grey-image spec.json is
    not its key: the key is of the spec as planned.
    """
    stored = spec.model_dump(mode="json")
    if net_cfg is not None:
        stored["network"] = stored["network"] | {"out_channels": net_cfg.out_channels}
    return stored


def prepare(spec: FitSpec, device: str, storage_options: dict[str, Any] | None) -> Prepared:
    """Load, crop and degrade a spec's input and set up its fit; raises on any problem of the spec."""
    image = load_spec_image(spec, storage_options)
    # a classical reference has no network: it crops to the multiple its sweep's networks need
    net_cfg = None if spec.method else spec.net_config().for_image(image.shape[0])
    problem = prepare_problem(
        image,
        spec.task,
        dict(spec.task_params),
        net_cfg,
        spec.seed,
        spec.crop,
        spec.image_name,
        spec.side_multiple or 1,
    )
    if net_cfg is None:
        return Prepared(spec, problem, None)
    extra = amplitude_metrics(problem.clean, spec.signal.freqs, device) if spec.signal is not None else {}
    return Prepared(spec, problem, FitJob(net_cfg, problem.op, problem.y, problem.clean, spec.fit_config(), extra))


def store_result(prepared: Prepared, result: FitResult, store: Store) -> dict[str, Any]:
    """Write a finished fit (summary, metrics, trajectory, images) and return its record."""
    spec = prepared.spec
    summary = fit_summary(spec, result, prepared.problem).row()
    trajectory = {"snapshot_iterations": result.snapshot_iterations}
    if result.snapshots is not None:
        trajectory["snapshots"] = result.snapshots
    metrics = dict(result.metrics) | {"iteration": np.asarray(result.metrics["iteration"], dtype=np.int64)}
    store.write_fit(
        spec.key, prepared.stored_spec(), summary, metrics, trajectory, result_images(prepared.problem, result)
    )
    return {"key": spec.key, "status": "done", "summary": summary}


def store_failure(
    spec: FitSpec, err: Exception, store: Store, stored_spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Record a fit's own error in storage (never retried) and return its "failed" record.

    `stored_spec`: the spec as it ran (`Prepared.stored_spec`) when it failed after `prepare`;
    else the spec as planned."""
    reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    store.write_failure(spec.key, stored_spec or spec.model_dump(mode="json"), reason, type(err).__name__, attempts=1)
    return {
        "key": spec.key,
        "status": "failed",
        "reason": reason,
        "traceback": "".join(traceback.format_exception(err, limit=3)),
    }


def execute_fit(
    spec: FitSpec, store: Store, device: str = "cpu", storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one spec unless it is already done, store everything, and return a small record."""
    [record] = execute_fits([spec], store, device, storage_options)
    return record


def execute_fits(
    specs: list[FitSpec], store: Store, device: str = "cpu", storage_options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run the specs not yet done, their networks packed together on the device (`fit_many`),
    store each as it would be stored alone, and return their records in order.

    A spec's own failure (while preparing, restoring or fitting) is stored as its failure and
    the others go on; storage errors propagate, for Ray to retry the whole call.
    """
    records: dict[int, dict[str, Any]] = {}
    packed: dict[int, Prepared] = {}
    for i, spec in enumerate(specs):
        if store.is_done(spec.key):
            records[i] = {"key": spec.key, "status": "done", "skipped": True}
            continue
        try:
            if spec.task == "upsampling_response":
                summary, metrics = measure_response(spec)
            else:
                prepared = prepare(spec, device, storage_options)
                if prepared.job is not None:
                    packed[i] = prepared
                    continue
                problem = prepared.problem
                result = restore(spec.classical_config(), problem.op, problem.y, problem.clean, device=device)
        except Exception as err:  # noqa: BLE001 - any error of the fit itself is recorded, not raised
            records[i] = store_failure(spec, err, store)
            continue
        if spec.task == "upsampling_response":  # storage errors propagate (Ray retries), as for fits
            store.write_fit(spec.key, spec.model_dump(mode="json"), summary, metrics, {}, {})
            records[i] = {"key": spec.key, "status": "done", "summary": summary}
        else:
            records[i] = store_result(prepared, result, store)
    outcomes = fit_many([p.job for p in packed.values() if p.job is not None], device)
    for (i, prepared), outcome in zip(packed.items(), outcomes, strict=True):
        if isinstance(outcome, Exception):
            records[i] = store_failure(prepared.spec, outcome, store, prepared.stored_spec())
        else:
            records[i] = store_result(prepared, outcome, store)
    return [records[i] for i in range(len(specs))]
