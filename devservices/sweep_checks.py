"""Sweep manifests for the cluster runs and the check of what a sweep left in storage: every fit
done once, none lost, failed or half written (S3 versions count completions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devservices.ray_cluster import FAKE_GPU
from devservices.s3_server import S3Server


def write_manifest(
    path: Path,
    name: str,
    storage: str,
    storage_options: dict[str, Any],
    mlflow_uri: str | None,
    seeds: int,
    iterations: int,
    width: int = 4,
    max_workers: int | None = None,
) -> Path:
    """`seeds` fits of one 32×32 sample image, each holding one `fakegpu`."""
    doc = {
        "name": name,
        "images": [{"sample": "camera", "crop": 32}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": width, "depth": 3},
        "repeats": seeds,
        "fit": {"iterations": iterations, "stop_window": 1, "snapshot_stride": max(iterations, 1)},
        "storage": storage,
        "storage_options": storage_options,
        "mlflow": {"enabled": mlflow_uri is not None, "tracking_uri": mlflow_uri, "experiment": name},
        "resources": {"num_cpus": 0, "custom": {FAKE_GPU: 1}, "max_retries": 3}
        | ({"max_workers": max_workers} if max_workers else {}),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Completeness:
    """Storage after a sweep: fits expected, done, missing, completed more than once, failed."""

    expected: int
    done: int
    missing: int
    duplicated: int
    failed: int
    incomplete_folders: int

    def exact(self) -> bool:
        return (self.done, self.missing, self.duplicated, self.failed, self.incomplete_folders) == (
            self.expected,
            0,
            0,
            0,
            0,
        )


FIT_FILES = {"spec.json", "metrics.parquet", "trajectory.npz", "final.png", "images.json"}  # clean.png: images/


def completeness(s3: S3Server, bucket: str, keys: set[str]) -> Completeness:
    """Count, in a versioned bucket, the fits of ``keys`` done, lost, done twice, failed or left without all files."""
    markers = s3.versions(bucket, "results/done/")
    done = {k.rsplit("/", 1)[1].removesuffix(".json"): n for k, n in markers.items()}
    failed = s3.versions(bucket, "results/failed/")
    files = s3.fs().find(f"{bucket}/results/fits/")
    present: dict[str, set[str]] = {}
    for path in files:
        key, name = path.rsplit("/", 2)[-2:]
        present.setdefault(key, set()).add(name)
    incomplete = sum(1 for key in done if not FIT_FILES <= present.get(key, set()))
    return Completeness(
        len(keys),
        len(set(done) & keys),
        len(keys - set(done)),
        sum(1 for n in done.values() if n > 1),
        len(failed),
        incomplete,
    )
