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

from dipmodel.fit import FitResult, fit
from dipmodel.metrics import to_grey
from pipeline.images import ImageError, decode, read_bytes, read_limited
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
                data = read_limited(fh, uri)
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


def summary_row(spec: FitSpec, result: FitResult) -> dict[str, Any]:
    """The flat row that describes a finished fit in tables: what was run, and how it went."""
    net = spec.network
    row: dict[str, Any] = {
        "key": spec.key, "sweep": spec.sweep, "experiment": spec.experiment, "image": spec.image_name,
        "dataset": spec.dataset, "task": spec.task, "seed": spec.seed, "crop": spec.crop,
        "downsample": spec.downsample, "grey": spec.grey,
        "model": net["name"], "width": net["width"], "depth": net["depth"], "upsample": net["upsample"],
        "up_sigma": net["up_sigma"], "norm": net["norm"], "lam": net["lam"],
        "iterations": spec.fit["iterations"], "lr": spec.fit["lr"],
    }
    row |= {f"param_{k}": v for k, v in sorted(spec.task_params.items())}
    if spec.signal is not None:
        row |= convergence_iterations(result.metrics, len(spec.signal.freqs))
    return row | result.summary()


def execute_fit(spec: FitSpec, store: Store, device: str = "cpu", storage_options: dict | None = None) -> dict:
    """Run one spec unless it is already done, store everything, and return a small record."""
    if store.is_done(spec.key):
        return {"key": spec.key, "status": "done", "skipped": True}
    try:
        image = load_spec_image(spec, storage_options)
        net_cfg = dataclasses.replace(spec.net_config(), out_channels=image.shape[0])
        problem = prepare_problem(image, spec.task, dict(spec.task_params), net_cfg, spec.seed, spec.crop,
                                  spec.image_name)
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
