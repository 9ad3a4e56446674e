"""`dip reproduce`: a folder of manifests run, reported and judged, then resumed with nothing to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as dip


def write(folder: Path, name: str, experiment: str, lams: list[float | None]) -> None:
    """A seconds-long sweep of two samples × `lams`, with the experiment id that selects its claim."""
    doc = {
        "name": name,
        "experiment": experiment,
        "images": [{"sample": ["camera", "astronaut"], "crop": 32}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": 8, "depth": 3},
        "grid": {"lam": lams},
        "seeds": [0],
        "fit": {"iterations": 30, "snapshot_stride": 10, "stop_window": 10},
        "storage": str(folder.parent / "results" / name),
        "mlflow": {"enabled": False},
        "resources": {"num_cpus": 1},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))


def test_reproduce_runs_reports_and_judges_each_manifest_then_resumes(
    ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    write(folder, "lambda", "S3", [None, 2])  # S3 without λ 1 and 3: some parts cannot be measured
    write(folder, "stop", "S5", [2])
    out = tmp_path / "out"
    assert dip(["reproduce", str(folder), "--out", str(out)]) == 0
    first = capsys.readouterr().err
    assert f"set {folder}: 2 manifests, 6 fits, 0 stored, 6 to run" in first
    assert f"set {folder}: 2/2 manifests, 6/6 fits stored" in first
    assert "[1/2] lambda.yaml" in first and "[2/2] stop.yaml" in first and "4 run now" in first
    index = (out / "index.md").read_text()
    verdict_rows = [line for line in index.splitlines() if line.startswith(("| S3 |", "| S5 |"))]
    assert len(verdict_rows) == 2
    assert "**holds**" not in verdict_rows[0]  # with parts unmeasured, S3 cannot hold
    assert "- λ = 3 decays like the unconstrained net: peak − final > 1 dB: — (not measured)" in index
    assert any(s in verdict_rows[1] for s in ("**holds**", "**does not hold**"))  # both S5 parts measured
    assert "| `lambda.yaml` | 4 | 0 |" in index and "| `stop.yaml` | 2 | 0 |" in index
    assert (out / "lambda" / "index.md").exists() and "](lambda/index.md)" in index

    assert dip(["reproduce", str(folder), "--out", str(out)]) == 0
    again = capsys.readouterr().err
    assert f"set {folder}: 2 manifests, 6 fits, 6 stored, 0 to run" in again
    assert again.count("0 run now") == 2  # storage held every fit: nothing ran twice


def test_reproduce_names_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dip(["reproduce", str(tmp_path)]) == 2
    assert f"{tmp_path}: no manifests" in capsys.readouterr().err
