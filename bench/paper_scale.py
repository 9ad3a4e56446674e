"""Run chosen fits of a paper manifest at full scale on one machine, without Ray or MLflow.

For a lent GPU machine, which has PyTorch but not Ray or MLflow: it expands the manifest,
keeps the fits that match every ``--where`` filter, runs them one after another with the
sweep's own worker code, and writes a normal sweep store, so ``dip report`` reads it
afterwards like any sweep (``dip report STORE``)::

    python -m bench.paper_scale manifests/paper/S3-lipschitz-lambda.yaml --store out/s3 \
        --where image_name~F16 --device cuda --budget-s 500

Filters are ``FIELD=VALUE`` (equal; numbers compare as numbers) or ``FIELD~TEXT`` (contains) on the
fit's resolved spec (``dip sweep plan`` shows the fields). Fits already done are skipped,
so a second call after a time-out goes on where the first stopped.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from pipeline.manifest import FitSpec, expand, load_manifest
from pipeline.storage import Store
from pipeline.worker import execute_fit


def same(text: str, value: str) -> bool:
    """Equal as numbers when both are numbers (2 == 2.0), else as text."""
    try:
        return float(text) == float(value)
    except ValueError:
        return text == value


def matches(spec: FitSpec, filters: list[str]) -> bool:
    """True when the spec satisfies every ``FIELD=VALUE`` / ``FIELD~TEXT`` filter."""
    fields: dict[str, Any] = spec.model_dump(mode="json")
    fields |= fields.pop("network") | fields.pop("fit") | fields.pop("task_params")
    for rule in filters:
        op = "~" if "~" in rule else "="
        name, _, value = rule.partition(op)
        if name not in fields:
            raise SystemExit(f"--where {rule}: no field {name!r}; fields: {', '.join(sorted(fields))}")
        text = str(fields[name])
        if (op == "~" and value not in text) or (op == "=" and not same(text, value)):
            return False
    return True


def outcome(record: dict[str, Any]) -> str:
    """One line about a finished fit: its PSNRs, or why it failed."""
    if record["status"] == "failed":
        return f"failed - {record['reason']}"
    s = record.get("summary")
    if not s or s.get("best_psnr") is None:
        return record["status"]
    text = f"best {s['best_psnr']:.2f} dB at {s['best_iteration']}, final {s['final_psnr']:.2f} dB"
    if s.get("stop_iteration") is not None:
        text += f", auto-stop {s['stop_psnr']:.2f} dB at {s['stop_iteration']}"
    return text + f", {s['ms_per_iteration']:.1f} ms/it"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--store", required=True, help="results folder or URI (replaces the manifest's)")
    parser.add_argument("--where", action="append", default=[], help="FIELD=VALUE or FIELD~TEXT")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="start no new fit after this many seconds")
    args = parser.parse_args(argv)

    manifest = load_manifest(args.manifest)
    manifest.storage = args.store
    specs = [spec for spec in expand(manifest) if matches(spec, args.where)]
    store = Store(args.store)
    store.write_sweep(manifest.model_dump(mode="json"))
    print(f"{len(specs)} fits of {manifest.name} selected", flush=True)
    start = time.perf_counter()
    for n, spec in enumerate(specs, 1):
        if time.perf_counter() - start > args.budget_s:
            print(f"time budget spent: {len(specs) - n + 1} fits left for a later call", flush=True)
            break
        t0 = time.perf_counter()
        record = execute_fit(spec, store, device=args.device)
        print(f"[{n}/{len(specs)}] {spec.image_name} {spec.network['name']} lam={spec.network['lam']} "
              f"seed={spec.seed}: {outcome(record)} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
