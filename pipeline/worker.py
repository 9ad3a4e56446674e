"""One fit spec from image to stored results: the body of every sweep worker.

Plain functions, no Ray, so the same code runs in a Ray actor, in a test, or in a debugger.
A fit's own failure (unreadable image, bad parameter, NaN loss) is recorded in storage and
returned as a "failed" record; it is never retried. Anything else (a dead worker, a node
gone) is Ray's to retry, and storage makes a repeated completion harmless.
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

import numpy as np
import torch

from dipmodel.classical import restore
from dipmodel.fit import FitResult, fit
from dipmodel.layers import exact_response, measured_response, paper_response
from dipmodel.metrics import to_grey
from pipeline.images import ImageError, decode, read_bytes
from pipeline.manifest import FitSpec
from pipeline.single import (
    amplitude_metrics,
    convergence_iterations,
    downsample,
    prepare_problem,
    result_images,
    sine_signal,
)
from pipeline.storage import Store


def load_spec_image(spec: FitSpec, storage_options: dict | None = None) -> torch.Tensor:
    """The clean input of a spec: a (1, L) signal, or an image from a bundled sample, a local path
    or an fsspec URI, downsampled and then reduced to its luma as the spec says."""
    if spec.signal is not None:
        return sine_signal(spec.signal.length, spec.signal.freqs, spec.signal.amplitude_list())
    uri = spec.image_uri
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        try:
            with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
                data = fh.read()
        except (OSError, ValueError) as err:
            raise ImageError(f"cannot read image {uri}: {err}") from None
    else:
        data, _ = read_bytes(uri.removeprefix("file://"))
    if not data:
        raise ImageError(f"{uri}: file is empty")
    image = decode(data, uri)
    if spec.downsample:
        image = downsample(image, spec.downsample, spec.image_name)
    return to_grey(image[None])[0] if spec.grey and image.shape[0] == 3 else image


def spec_row(spec: FitSpec) -> dict[str, Any]:
    """The flat description of what a spec runs, the first columns of its row in tables."""
    net, cfg = spec.network, spec.fit  # both empty of network/loop settings for a classical method
    row: dict[str, Any] = {
        "key": spec.key, "sweep": spec.sweep, "experiment": spec.experiment, "image": spec.image_name,
        "dataset": spec.dataset, "task": spec.task, "seed": spec.seed, "crop": spec.crop,
        "downsample": spec.downsample, "grey": spec.grey, "method": spec.method,
        "model": net.get("name"), "width": net.get("width"), "depth": net.get("depth"),
        "upsample": net.get("upsample"), "up_sigma": net.get("up_sigma"), "norm": net.get("norm"),
        "lam": net.get("lam"), "iterations": cfg.get("iterations", cfg.get("tv_iterations")), "lr": cfg.get("lr"),
        "optimizer": cfg.get("optimizer"), "tv_weight": cfg.get("tv_weight"),
    }
    return row | {f"param_{k}": v for k, v in sorted(spec.task_params.items())}


def summary_row(spec: FitSpec, result: FitResult) -> dict[str, Any]:
    """The flat row that describes a finished fit in tables: what was run, and how it went."""
    row = spec_row(spec)
    if spec.signal is not None:
        row |= convergence_iterations(result.metrics, len(spec.signal.freqs))
    return row | result.summary()


def measure_response(spec: FitSpec) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """C8: the summary row and per-frequency table of the model's upsampling layer, measured on
    the spec's impulse against the layer's exact discrete response and C&M's continuous form.
    Nothing is optimised, so the spec's fit settings play no part."""
    net, stride = spec.network, spec.task_params["stride"]
    k, measured = measured_response(net["upsample"], stride, net["up_sigma"], spec.impulse or 64)
    table = {"frequency": k, "measured": measured, "exact": exact_response(net["upsample"], stride, k, net["up_sigma"])}
    paper = paper_response(net["upsample"], stride, k)
    row = spec_row(spec) | {"max_error_exact": float((measured - table["exact"]).abs().max())}
    if paper is not None:
        table["paper"] = paper
        row["max_rel_error_paper"] = float((measured / paper - 1).abs().max())
    # Storage and MLflow index rows by "iteration": here the frequency index j, k = j / (length·stride).
    index = np.arange(1, len(k) + 1, dtype=np.int64)
    return row, {"iteration": index} | {name: column.numpy() for name, column in table.items()}


def execute_fit(spec: FitSpec, store: Store, device: str = "cpu", storage_options: dict | None = None) -> dict:
    """Run one spec unless it is already done, store everything, and return a small record."""
    if store.is_done(spec.key):
        return {"key": spec.key, "status": "done", "skipped": True}
    try:
        if spec.task == "upsampling_response":
            summary, metrics = measure_response(spec)
            store.write_fit(spec.key, spec.model_dump(mode="json"), summary, metrics, {}, {})
            return {"key": spec.key, "status": "done", "summary": summary}
        image = load_spec_image(spec, storage_options)
        # a classical reference has no network: it crops to the multiple its sweep's networks need
        net_cfg = None if spec.method else dataclasses.replace(spec.net_config(), out_channels=image.shape[0])
        problem = prepare_problem(image, spec.task, dict(spec.task_params), net_cfg, spec.seed, spec.crop,
                                  spec.image_name, spec.side_multiple or 1)
        if net_cfg is None:
            result = restore(spec.classical_config(), problem.op, problem.y, problem.clean, device=device)
        else:
            extra = amplitude_metrics(problem.clean, spec.signal.freqs, device) if spec.signal is not None else {}
            result = fit(net_cfg, problem.op, problem.y, problem.clean, spec.fit_config(),
                         extra_metrics=extra, device=device)
    except Exception as err:  # noqa: BLE001 - any error of the fit itself is recorded, not raised
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        store.write_failure(spec.key, spec.model_dump(mode="json"), reason, type(err).__name__, attempts=1)
        return {"key": spec.key, "status": "failed", "reason": reason,
                "traceback": traceback.format_exc(limit=3)}
    summary = summary_row(spec, result)
    trajectory = {"snapshot_iterations": result.snapshot_iterations}
    if result.snapshots is not None:
        trajectory["snapshots"] = result.snapshots
    metrics = dict(result.metrics) | {"iteration": np.asarray(result.metrics["iteration"], dtype=np.int64)}
    store.write_fit(spec.key, spec.model_dump(mode="json"), summary, metrics, trajectory,
                    result_images(problem, result))
    return {"key": spec.key, "status": "done", "summary": summary}
