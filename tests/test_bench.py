"""The benchmark suite's modes, run for a few iterations on tiny problems."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from bench import suite

DATA_ROOT = Path(os.environ.get("DIP_DATA_ROOT", "/work/shared/datasets"))

MANIFEST = """\
name: bench-modes-tiny
experiment: bench
images:
  - dataset: standard9
    files: [image_F16_512rgb.png]
    crop: 32
tasks:
  - task: denoise
    params: {sigma: 25}
model:
  name: decoder
  width: 8
  depth: 3
  upsample: bilinear
zip:                         # the SGLD fit's burn-in outlasts both the warm-up and the timed fit
  - lam: [null, 2]
    optimizer: [sgld, adam]
    burn_in: [50, 0]
seeds: [0]
fit:
  iterations: 100
  metric_stride: 10
  auto_stop: true
  stop_window: 50
resources: {num_gpus: 0}
"""


@pytest.mark.skipif(not (DATA_ROOT / "standard9").is_dir(), reason="shared data sets not on this machine")
def test_manifest_modes_give_a_row_per_fit_and_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--manifests: one fit per distinct network (λ = none with SGLD and 2 with Adam here), each in
    the four modes."""
    monkeypatch.chdir(tmp_path)  # a manifest's default storage is under the working directory
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(MANIFEST)
    out = tmp_path / "modes.json"
    args = ["--device", "cpu", "--threads", "1", "--manifests", str(folder), "--iters", "5", "--json", str(out)]
    assert suite.main(args) == 0
    result = json.loads(out.read_text())
    rows = result["modes"]
    modes = [m.name for m in suite.MODES]
    assert len(rows) == 2 * len(modes) == 8
    assert sorted({r["lam"] for r in rows}, key=str) == [2.0, None]
    assert {r["optimizer"] for r in rows} == {"sgld", "adam"}
    for fit in {r["fit"] for r in rows}:
        assert sorted(r["variant"] for r in rows if r["fit"] == fit) == sorted(modes)
    for r in rows:
        assert r["iterations"] == 5 and r["ms_per_it"] > 0
        if r["variant"] == "fp32":
            assert r["max_abs_dpsnr_db"] == 0.0 and r["final_dpsnr_db"] == 0.0 and r["speedup"] == 1.0
    assert [s["variant"] for s in result["mode_summary"]] == modes
    assert result["fastest_within_0_1_db"] in modes


def test_paper_cost_counts_flops_that_scale_with_pixels_and_sums_them_over_fits(tmp_path: Path) -> None:
    """A conv net's FLOPs per iteration grow with its pixels: doubling the side multiplies them by 4
    exactly (every layer's output has 4× the positions). A manifest's total is its fits' iterations
    times their FLOPs per iteration (two fits of 100 iterations here)."""
    from bench.paper_cost import iteration_flops, manifest_cost
    from dipmodel.fit import FitConfig, FitJob
    from dipmodel.networks import NetConfig
    from dipmodel.operators import build_operator

    flops = {}
    for side in (32, 64):
        op = build_operator("denoise", (3, side, side), seed=0, sigma=25)
        clean = torch.rand(1, 3, side, side)
        job = FitJob(
            NetConfig(name="decoder", width=8, depth=3), op, op.degrade(clean), clean, FitConfig(iterations=10)
        )
        flops[side] = iteration_flops(job)
    assert flops[32] > 0 and flops[64] == 4 * flops[32]

    manifest = tmp_path / "cost.yaml"
    manifest.write_text(MANIFEST)
    if (DATA_ROOT / "standard9").is_dir():
        cost = manifest_cost(manifest)
        assert (cost.network_fits, cost.classical_fits, cost.iterations) == (2, 0, 200)
        low, high = cost.gflop_per_it
        assert 0 < low <= high and low * 1e9 * 200 <= cost.flops <= high * 1e9 * 200


def test_s3_scale_times_every_step_on_a_small_store(s3_store_uri: tuple[str, dict]) -> None:
    """bench.s3_scale end to end on 1,030 fits plus 5 bundled and 5 loose (its own assertions
    check the counts)."""
    from bench import s3_scale
    from pipeline.storage import Store

    seconds = s3_scale.measure(Store(*s3_store_uri), 1030, 5)
    assert list(seconds) == [
        "write 1030 fits in bundles",
        "driver's bundle of 1000",
        "plan",
        "status",
        "first collect",
        "full collect",
        "collect after 5 new fits, bundled",
        "collect after 5 new loose markers",
        "unchanged collect (report)",
    ]


@pytest.mark.skipif(not (DATA_ROOT / "standard9").is_dir(), reason="shared data sets not on this machine")
def test_snapshot_stride_costs_fall_with_the_stride() -> None:
    """bench.snapshots on a 32² crop of a real image: the strides keep 101, 41, 21, 11, 5 and 0
    snapshots; the file shrinks with the stride and float32 costs more than float16 (the bench
    itself checks its sum against a written file)."""
    from bench import snapshots

    clean = snapshots.load(DATA_ROOT / "standard9" / "image_Peppers512rgb.png")[:, 200:232, 200:232]
    assert [len(snapshots.snapshot_iterations(s)) for s in snapshots.STRIDES] == [101, 41, 21, 11, 5, 0]
    costs = snapshots.stride_costs(clean)
    for dtype in snapshots.DTYPES:
        sizes = [costs[dtype][str(stride)] for stride in snapshots.STRIDES]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 300
    assert costs["float32"]["500"] > 1.5 * costs["float16"]["500"]


def test_shared_images_counts_one_clean_and_one_degraded_image_per_seed() -> None:
    """2 λ × 3 seeds: before, six fits each kept both PNGs; after, one clean image, three degraded
    ones and six images.json."""
    from bench import shared_images
    from pipeline.images import decode, encode_png, read_bytes
    from pipeline.single import prepare_problem

    path = DATA_ROOT / "cbsd68" / "101085.png"
    before, after = shared_images.input_bytes(path, lams=2, seeds=3, sigma=25.0)
    image = decode(read_bytes(path)[0], path.name)
    problems = [prepare_problem(image, "denoise", {"sigma": 25.0}, None, seed, None, path.name) for seed in range(3)]
    clean = len(encode_png(problems[0].clean[0].numpy()))
    degraded = [len(encode_png(p.y[0].numpy())) for p in problems]
    assert before == 2 * (3 * clean + sum(degraded))
    index = len(json.dumps({"clean": "0" * 64, "degraded": "0" * 64}, indent=1))  # one images.json
    assert after == clean + sum(degraded) + 6 * index


def test_scale_runs_its_parts_and_prints_their_figures(tmp_path: Path) -> None:
    """bench.scale on a small store: the S3 and query parts run in their own processes and print
    each figure (the parts' own assertions check the counts); a part that fails fails the run."""
    import subprocess
    import sys

    skip = [arg for part in ("resume", "mlflow", "snapshots", "images") for arg in ("--skip", part)]
    command = [sys.executable, "-m", "bench.scale", "--fits", "1030", "--new", "5", "--iterations", "40"]
    done = subprocess.run([*command, *skip, "--dir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for figure in ("plan:", "full collect:", "collect after 5 new fits, bundled:", "mean band-5 curve", "dip report:"):
        assert figure in done.stdout
    assert "=== resume" not in done.stdout
    failing = subprocess.run(
        [*command, *skip, "--skip", "query", "--new", "-1"], capture_output=True, text=True, timeout=900
    )
    assert failing.returncode != 0 and "failed: s3" in failing.stderr
