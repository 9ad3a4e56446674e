"""The fit loop: what it records must agree with what the metrics say about its own outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dipmodel import metrics as M
from dipmodel.fit import FitConfig, FitDivergedError, fit
from dipmodel.networks import NetConfig
from dipmodel.operators import build_operator

SMALL_NET = NetConfig(name="decoder", width=8, depth=3, norm="lipschitz", lam=2.0)


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, object, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    clean = (0.5 + 0.3 * torch.sin(6 * xx) * torch.cos(4 * yy)).expand(3, 32, 32)[None].clone()
    clean += 0.02 * torch.rand(clean.shape, generator=g)
    op = build_operator("denoise", (3, 32, 32), seed=1, sigma=25)
    return clean, op, op.degrade(clean)


def test_records_every_stride_and_the_last_iteration(problem) -> None:
    clean, op, y = problem
    cfg = FitConfig(iterations=23, metric_stride=5, snapshot_stride=10, stop_window=5, sync_every=7)
    r = fit(SMALL_NET, op, y, clean, cfg)
    assert list(r.metrics["iteration"]) == [0, 5, 10, 15, 20, 23]
    assert list(r.snapshot_iterations) == [0, 10, 20, 23]
    assert r.snapshots.shape == (4, 3, 32, 32) and r.snapshots.dtype == np.float16
    assert r.loss.shape == (24,) and np.isfinite(r.loss).all()
    for band in range(1, 6):
        assert f"fbc_{band}" in r.metrics
    assert r.final_iteration == 23


def test_recorded_metrics_match_the_outputs(problem) -> None:
    """The final row and the stored final image must agree with the metric functions."""
    clean, op, y = problem
    r = fit(SMALL_NET, op, y, clean, FitConfig(iterations=30, auto_stop=False))
    final = torch.from_numpy(r.final)[None]
    assert r.metrics["psnr_clean"][-1] == pytest.approx(float(M.psnr(final, clean)[0]), abs=1e-4)
    assert r.metrics["psnr_target"][-1] == pytest.approx(float(M.psnr(final, y)[0]), abs=1e-4)
    assert r.metrics["ratio"][-1] == pytest.approx(float(M.blur_sharp_ratio(final)[0]), rel=1e-4)
    # Oracle: the best row of the PSNR column, and its output really has that PSNR.
    best_row = int(np.argmax(r.metrics["psnr_clean"]))
    assert r.best_iteration == r.metrics["iteration"][best_row]
    assert r.best_psnr == pytest.approx(r.metrics["psnr_clean"][best_row], abs=1e-5)
    assert float(M.psnr(torch.from_numpy(r.best_output)[None], clean)[0]) == pytest.approx(r.best_psnr, abs=1e-4)


def test_on_device_autostop_agrees_with_the_posthoc_rule(problem) -> None:
    clean, op, y = problem
    cfg = FitConfig(iterations=200, stop_window=10, stop_eps=0.05, metric_stride=2)
    r = fit(SMALL_NET, op, y, clean, cfg)
    expected_row = M.first_autostop(torch.from_numpy(r.metrics["ratio"]), n=5, eps=0.05)
    assert expected_row is not None, "the rule should fire on this easy fit"
    assert r.stop_iteration == r.metrics["iteration"][expected_row]
    assert r.stop_psnr == pytest.approx(r.metrics["psnr_clean"][expected_row], abs=1e-4)


def test_halt_at_stop_ends_the_fit_early(problem) -> None:
    clean, op, y = problem
    cfg = FitConfig(iterations=2000, stop_window=10, stop_eps=0.05, halt_at_stop=True, sync_every=20)
    r = fit(SMALL_NET, op, y, clean, cfg)
    assert r.stop_iteration is not None
    assert r.stop_iteration <= r.final_iteration < r.stop_iteration + 20


def test_same_seed_same_fit_other_seed_other_fit(problem) -> None:
    clean, op, y = problem
    a = fit(SMALL_NET, op, y, clean, FitConfig(iterations=10, seed=4))
    b = fit(SMALL_NET, op, y, clean, FitConfig(iterations=10, seed=4))
    c = fit(SMALL_NET, op, y, clean, FitConfig(iterations=10, seed=5))
    np.testing.assert_array_equal(a.final, b.final)
    assert not np.array_equal(a.final, c.final)


def test_nan_loss_names_the_iteration(problem) -> None:
    clean, op, _ = problem
    y = torch.full_like(clean, float("nan"))
    with pytest.raises(FitDivergedError, match="iteration 0"):
        fit(SMALL_NET, op, y, clean, FitConfig(iterations=5))


def test_extra_metrics_become_columns(problem) -> None:
    clean, op, y = problem
    r = fit(SMALL_NET, op, y, clean, FitConfig(iterations=4),
            extra_metrics={"mean": lambda out: out.mean(), "pair": lambda out: torch.stack([out.min(), out.max()])})
    assert {"mean", "pair_1", "pair_2"} <= set(r.metrics)
    assert (r.metrics["pair_1"] <= r.metrics["mean"]).all() and (r.metrics["mean"] <= r.metrics["pair_2"]).all()


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"metric_stride": 3, "stop_window": 10}, {"snapshot_dtype": "int8"}])
def test_bad_config_is_refused_with_the_field_name(bad: dict) -> None:
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field if field != "metric_stride" else "stop_window"):
        FitConfig(**bad)
