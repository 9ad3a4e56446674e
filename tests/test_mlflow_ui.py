"""The MLflow UI a researcher opens, in a real headless Chromium (Debian's `chromium`, installed
by scripts/setup): the link a sweep prints opens on its runs, the fits carry readable names, and
a fit's metric charts render. Screenshots stay in the test's temp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import sweep
from pipeline.manifest import load_manifest
from pipeline.tracking import Tracker
from tests.test_sweep import tiny_manifest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (scripts/setup)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing: run scripts/setup as root")


@pytest.mark.slow
def test_mlflow_ui_lists_fits_by_name_and_draws_their_curves(ray_cluster, tmp_path: Path, mlflow_server: str) -> None:
    import mlflow

    manifest = load_manifest(
        tiny_manifest(
            tmp_path, str(tmp_path / "r"), name="ui-check", mlflow={"tracking_uri": mlflow_server, "experiment": "ui"}
        )
    )
    assert sweep.run_sweep(manifest, progress=False).done == 4
    tracker = Tracker(mlflow_server, "ui")
    fits = mlflow.MlflowClient(mlflow_server).search_runs([tracker.experiment_id], "tags.`dip.kind` = 'fit'")
    names = {run.info.run_name: run.info.run_id for run in fits}
    chosen = "camera · denoise σ=25 · decoder λ=2 · seed 0"
    assert chosen in names

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(tracker.experiment_url())  # the link the sweep prints: the runs table, not GenAI traces
            dot = page.get_by_test_id("experiment-view-table-run-color").first  # the sweep's parent run
            dot.wait_for(timeout=60_000)
            box = dot.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] - 16, box["y"] + box["height"] / 2)  # expand its nested fit runs
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "mlflow-runs.png"))

            run_page = f"{mlflow_server}/#/experiments/{tracker.experiment_id}/runs/{names[chosen]}/model-metrics"
            page.goto(run_page + "?workflowType=machine_learning")
            page.get_by_text("blur", exact=True).first.wait_for(timeout=60_000)  # a per-iteration curve, first in order
            chart = page.locator(".js-plotly-plot").first
            chart.wait_for(timeout=30_000)
            assert chart.locator("path").count() > 0  # the curve is drawn, not only its frame
            page.screenshot(path=str(tmp_path / "mlflow-fit-metrics.png"))
        finally:
            browser.close()
    assert (tmp_path / "mlflow-runs.png").stat().st_size > 10_000
