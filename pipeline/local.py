"""`dip sweep run --local`: the fits of a manifest that match some filters, run one after another
in this process with the sweep's own worker code, into the sweep's store. No Ray and no MLflow
(a machine with PyTorch only can run paper-scale fits); done fits are skipped, so a second call
after a time-out goes on where the first stopped, and `dip report` reads the store as any sweep's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.manifest import FitSpec, Manifest
from pipeline.messages import DipError
from pipeline.storage import Store


class FilterError(DipError, ValueError):
    """A --where filter that names no field of a fit spec, or is not FIELD=VALUE / FIELD~TEXT."""


def _same(text: str, value: str) -> bool:
    """Equal as numbers when both are numbers (2 == 2.0), else as text."""
    try:
        return float(text) == float(value)
    except ValueError:
        return text == value


def matches(spec: FitSpec, rules: list[str]) -> bool:
    """Whether a spec satisfies every ``FIELD=VALUE`` (equal; numbers as numbers) and ``FIELD~TEXT``
    (contains) rule; fields are the spec's own and those of its network, fit and task parameters."""
    fields: dict[str, Any] = spec.model_dump(mode="json")
    fields |= fields.pop("network") | fields.pop("fit") | fields.pop("task_params")
    for rule in rules:
        op = "~" if "~" in rule else "="
        name, found, value = rule.partition(op)
        if not found or name not in fields:
            raise FilterError(f"--where {rule}: no field {name!r}; fields: {', '.join(sorted(fields))}")
        text = str(fields[name])
        if (op == "~" and value not in text) or (op == "=" and not _same(text, value)):
            return False
    return True


def outcome(record: dict[str, Any]) -> str:
    """One line about a finished fit: its PSNRs, or why it failed."""
    if record["status"] == "failed":
        return f"failed - {record['reason']}"
    s = record.get("summary")
    if record.get("skipped"):
        return "already done"
    if not s or s.get("best_psnr") is None:
        return record["status"]
    text = f"best {s['best_psnr']:.2f} dB at {s['best_iteration']}, final {s['final_psnr']:.2f} dB"
    if s.get("stop_iteration") is not None:
        text += f", auto-stop {s['stop_psnr']:.2f} dB at {s['stop_iteration']}"
    return text + f", {s['ms_per_iteration']:.1f} ms/it"


@dataclass
class LocalOutcome:
    """How a local run ended: fits selected, done and failed now, and left for a later call."""

    selected: int
    done: int
    failed: int
    left: int  # not started: the time budget was spent


def run_local(
    manifest: Manifest,
    specs: list[FitSpec],
    where: list[str],
    device: str,
    budget_s: float = float("inf"),
    log: Callable[[str], None] = print,
) -> LocalOutcome:
    """Run the specs matching `where` in order into the manifest's store; start none after `budget_s`."""
    # torch: imported only where fits run (the sweep driver imports this module)
    from pipeline.worker import execute_fit

    chosen = [spec for spec in specs if matches(spec, where)]
    store = Store(manifest.storage_uri, manifest.storage_options)
    store.write_sweep(manifest.model_dump(mode="json"))
    log(f"{len(chosen)} of {len(specs)} fits of {manifest.name} selected → {manifest.storage}")
    start, done, failed = time.perf_counter(), 0, 0
    for n, spec in enumerate(chosen, 1):
        if time.perf_counter() - start > budget_s:
            log(f"time budget spent: {len(chosen) - n + 1} fits left for a later call")
            return LocalOutcome(len(chosen), done, failed, len(chosen) - n + 1)
        t0 = time.perf_counter()
        record = execute_fit(spec, store, device=device, storage_options=manifest.storage_options)
        done, failed = done + (record["status"] == "done"), failed + (record["status"] == "failed")
        log(
            f"[{n}/{len(chosen)}] {spec.image_name} {spec.task} {spec.network.get('name', spec.method)} "
            f"seed={spec.seed} {spec.key}: {outcome(record)} ({time.perf_counter() - t0:.0f} s)"
        )
    return LocalOutcome(len(chosen), done, failed, 0)
