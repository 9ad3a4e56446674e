"""pipeline.jobs without a cluster: job ids as idempotency keys, what may be submitted.
(Submission itself runs against a real multi-node cluster in tests/test_cluster.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as dip
from pipeline.jobs import base_job_id, check_submittable, is_remote, submit
from pipeline.manifest import load_manifest

DOC = {
    "name": "sub",
    "images": [{"sample": "camera", "crop": 32}],
    "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
    "model": {"name": "decoder", "width": 4, "depth": 3},
    "storage": "s3://lab/results/sub",
}


def test_the_job_id_is_the_manifest_content_hash() -> None:
    manifest = load_manifest(yaml.safe_dump(DOC))
    content = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert base_job_id(manifest) == f"dip-sub-{hashlib.sha256(content.encode()).hexdigest()[:8]}"
    assert base_job_id(load_manifest(yaml.safe_dump(DOC))) == base_job_id(manifest)  # stable
    other = load_manifest(yaml.safe_dump(DOC | {"seeds": [1]}))
    assert base_job_id(other) != base_job_id(manifest)


def test_a_sweep_without_explicit_storage_is_not_submitted(tmp_path: Path, capsys) -> None:
    doc = {k: v for k, v in DOC.items() if k != "storage"}
    with pytest.raises(ValueError, match="set storage"):
        check_submittable(load_manifest(yaml.safe_dump(doc)))
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert dip(["submit", str(path), "--address", "http://127.0.0.1:1"]) == 2  # refused before any request
    assert "set storage" in capsys.readouterr().err


def test_where_a_manifest_is_read() -> None:
    assert is_remote("s3://b/m.yaml") and is_remote("gs://b/m.yaml")
    assert not is_remote("m.yaml") and not is_remote("file:///tmp/m.yaml")


def test_a_manifest_outside_the_uploaded_working_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(DOC))
    (tmp_path / "code").mkdir()
    with pytest.raises(ValueError, match="not inside the working directory"):
        submit(load_manifest(path), str(path), "http://127.0.0.1:1", working_dir=str(tmp_path / "code"))
