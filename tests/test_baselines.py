"""The baselines of Shi et al.'s tables in the same harness: Deep Decoder, Bayesian DIP (SGLD),
BM3D/CBM3D, bicubic and TV. Each must restore a smoke-scale degraded image better than the
degraded input, and run through the manifest, Ray, storage and report like any fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage import data

from dipmodel import metrics as M
from dipmodel.classical import ClassicalConfig, gradient, gradient_adjoint, restore
from dipmodel.fit import FitConfig, fit
from dipmodel.networks import NetConfig
from dipmodel.operators import build_operator
from pipeline.manifest import ManifestError, expand, fit_key, load_manifest
from pipeline.report import write_report
from pipeline.sweep import open_store, run_sweep

DATA_ROOT = Path(os.environ.get("DIP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A 32×32 RGB crop (astronaut ×4 downsampled, the face region), (1, 3, 32, 32) in [0, 1]."""
    return torch.from_numpy(data.astronaut()[::4, ::4][8:40, 40:72].copy()).permute(2, 0, 1).float()[None] / 255


def observed_psnr(op, y: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR of the degraded input against the truth; an SR observation is shown at full size by
    pixel replication (nearest), which is what a person sees without any method."""
    if y.shape != clean.shape:
        y = torch.nn.functional.interpolate(y, size=clean.shape[-2:], mode="nearest")
    return float(M.psnr(y, clean)[0])


CLASSICAL_CASES = [
    ("bm3d", "denoise", {"sigma": 25}, {}),
    ("bicubic", "superres", {"factor": 4}, {}),
    ("tv", "denoise", {"sigma": 25}, {"tv_weight": 0.1}),
    ("tv", "inpaint", {"kind": "center", "ratio": 0.1}, {"tv_weight": 0.1}),
    ("tv", "superres", {"factor": 4}, {"tv_weight": 0.01}),
    ("tv", "jpeg", {"quality": 10}, {"tv_weight": 0.03}),
]


@pytest.mark.parametrize("method,task,params,settings", CLASSICAL_CASES)
def test_classical_method_improves_on_the_degraded_input(image, method, task, params, settings) -> None:
    op = build_operator(task, (3, 32, 32), seed=0, **params)
    y = op.degrade(image)
    result = restore(ClassicalConfig(method, **settings), op, y, image)
    assert result.final.shape == (3, 32, 32)
    assert (
        result.final_psnr
        == result.best_psnr
        == pytest.approx(float(M.psnr(torch.from_numpy(result.final)[None], image)[0]), abs=1e-4)
    )
    assert result.final_psnr - observed_psnr(op, y, image) > 0
    assert list(result.metrics["iteration"]) == [result.final_iteration]


def test_classical_method_refuses_a_task_it_cannot_restore(image) -> None:
    op = build_operator("jpeg", (3, 32, 32), seed=0, quality=10)
    with pytest.raises(ValueError, match="method bm3d restores denoise only, not jpeg"):
        restore(ClassicalConfig("bm3d"), op, op.degrade(image), image)


def test_tv_gradient_adjoint_is_the_adjoint() -> None:
    """<Dx, p> = <x, Dᵀp> for random x, p: the primal-dual solver relies on it."""
    g = torch.Generator().manual_seed(0)
    x, p = (
        torch.randn(1, 3, 7, 9, generator=g, dtype=torch.float64),
        torch.randn(1, 3, 2, 7, 9, generator=g, dtype=torch.float64),
    )
    assert torch.allclose((gradient(x) * p).sum(), (x * gradient_adjoint(p)).sum())


def denoise_problem(image: torch.Tensor):
    op = build_operator("denoise", (3, 32, 32), seed=0, sigma=25)
    return op, op.degrade(image)


def test_deep_decoder_restores_and_does_not_overfit_its_budget(image) -> None:
    """Under-parameterised, it cannot fit the noise: its final PSNR stays within 0.5 dB of its peak."""
    op, y = denoise_problem(image)
    r = fit(
        NetConfig("deep_decoder", width=16, depth=4),
        op,
        y,
        image,
        FitConfig(iterations=500, lr=0.01, auto_stop=False, spectral=False),
    )
    assert r.final_psnr - observed_psnr(op, y, image) > 0
    assert r.best_psnr - r.final_psnr < 0.5


def test_bayesian_dip_posterior_mean_restores_and_averages_the_samples(image) -> None:
    op, y = denoise_problem(image)
    cfg = FitConfig(
        iterations=500,
        lr=0.01,
        optimizer="sgld",
        burn_in=250,
        auto_stop=False,
        spectral=False,
        snapshot_stride=1,
        snapshot_dtype="float32",
    )
    r = fit(NetConfig("decoder", width=8, depth=3), op, y, image, cfg)
    assert r.posterior_psnr - observed_psnr(op, y, image) > 0
    samples = r.snapshots[r.snapshot_iterations > cfg.burn_in]  # every output after burn-in
    assert r.posterior_samples == len(samples) == 250
    np.testing.assert_allclose(r.posterior_mean, samples.astype(np.float64).mean(axis=0), atol=1e-5)
    np.testing.assert_array_equal(r.final, r.snapshots[-1])  # the last sample


def test_sgld_without_noise_is_the_plain_optimiser_step_for_step(image) -> None:
    op, y = denoise_problem(image)
    net = NetConfig("decoder", width=4, depth=2)
    base = dict(iterations=30, lr=0.01, auto_stop=False, spectral=False, snapshot_stride=1, snapshot_dtype="float32")
    adam = fit(net, op, y, image, FitConfig(**base))
    quiet = fit(net, op, y, image, FitConfig(**base, optimizer="sgld", sgld_temperature=0.0, burn_in=10))
    np.testing.assert_array_equal(adam.loss, quiet.loss)
    np.testing.assert_array_equal(adam.snapshots, quiet.snapshots)
    noisy = fit(net, op, y, image, FitConfig(**base, optimizer="sgld", burn_in=10))  # the test can fail
    assert not np.array_equal(adam.snapshots[1:], noisy.snapshots[1:])
    assert np.array_equal(adam.snapshots[0], noisy.snapshots[0])  # noise enters with the first step


# --- manifests ---------------------------------------------------------------------------------


def manifest_text(**extra) -> str:
    doc = {
        "name": "baselines",
        "data_root": str(DATA_ROOT),
        "images": [{"sample": "astronaut", "crop": 32}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": 4, "depth": 3},
        "fit": {"iterations": 5},
    } | extra
    return yaml.safe_dump(doc)


def test_method_axis_expands_classical_fits_once_with_the_network_crop() -> None:
    m = load_manifest(manifest_text(grid={"method": ["dip", "bm3d", "tv"], "lam": [None, 2]}))
    specs = expand(m)
    assert sorted(str(s.method) for s in specs) == ["None", "None", "bm3d", "tv"]  # λ does not split them
    bm3d = next(s for s in specs if s.method == "bm3d")
    assert bm3d.network == {} and bm3d.fit == {} and bm3d.side_multiple == 8  # decoder depth 3: 2³


def test_method_that_cannot_restore_the_task_is_a_manifest_error() -> None:
    with pytest.raises(
        ManifestError, match=r"grid\.method\[1\]: method bicubic restores superres only; tasks\[0\] is denoise"
    ):
        load_manifest(manifest_text(grid={"method": ["dip", "bicubic"]}))


def test_keys_of_fits_without_the_new_settings_are_unchanged() -> None:
    """SGLD settings at their defaults and no method: the key is that of the content without them."""
    spec = expand(load_manifest(manifest_text()))[0]
    content = spec.model_dump()
    old = dict(
        content, fit={k: v for k, v in content["fit"].items() if k not in ("optimizer", "sgld_temperature", "burn_in")}
    )
    del old["method"], old["side_multiple"]
    assert fit_key(old) == spec.key
    sgld = dict(content, fit=content["fit"] | {"optimizer": "sgld"})
    assert fit_key(sgld) != spec.key


# --- a sweep through Ray, and its report ----------------------------------------------------------


def test_sweep_with_a_method_axis_runs_on_ray_and_reports_the_paper_rows(ray_cluster, tmp_path: Path) -> None:
    path = tmp_path / "s6-tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "s6-tiny",
                "experiment": "S6",
                "data_root": str(DATA_ROOT),
                "storage": str(tmp_path / "store"),
                "mlflow": {"enabled": False},
                "images": [{"dataset": "cbsd68", "files": ["101085.png"], "crop": 32}],
                "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
                "model": {"width": 4},
                "zip": [
                    {
                        "name": ["decoder", "deep_decoder", "decoder"],
                        "depth": [3, 4, 3],
                        "optimizer": ["adam", "adam", "sgld"],
                        "burn_in": [0, 0, 5],
                    }
                ],
                "grid": {"method": ["dip", "bm3d", "tv"]},
                "fit": {"iterations": 10, "stop_window": 5, "tv_iterations": 20},
            }
        )
    )
    manifest = load_manifest(path)
    outcome = run_sweep(manifest, progress=False)
    assert (outcome.done, outcome.failed) == (5, 0)
    index = write_report(path, tmp_path / "report")
    table = next((index.parent / "tables").glob("*paper-shi*.md")).read_text()
    for row in ("DIP ← decoder", "Deep Decoder ← deep_decoder", "Bayesian DIP ← decoder sgld", "CBM3D ← bm3d"):
        assert row in table, table
    markers = {m["method"] or m["model"]: m for m in open_store(manifest).collect(write=False).to_pylist()}
    assert markers["bm3d"]["final_psnr"] > 0 and markers["tv"]["iterations"] == 20
