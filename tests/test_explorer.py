"""The trajectory explorer (pipeline/explorer.py): the data it writes, checked against the stored
fits, and the page itself in a real headless Chromium (Debian's `chromium`, installed by
scripts/setup), opened from disk and from an S3-compatible server. Screenshots stay in the
test's temp folder."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from PIL import Image

from pipeline import explorer
from pipeline.cli import main as dip
from pipeline.storage import Store
from tests.test_sweep import tiny_manifest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def read_script(path: Path) -> dict[str, Any]:
    """The JSON a page script hands over: `DIPExplorer.name({...});`."""
    text = path.read_text()
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


def png_pixels(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


# --- the data ----------------------------------------------------------------------------------


def test_error_map_runs_from_black_at_zero_to_the_top_colour_at_the_scale() -> None:
    clean = np.zeros((3, 2, 2), np.float32)
    output = clean.copy()
    output[:, 0, 1] = explorer.ERROR_SCALE / 2  # half the scale
    output[:, 1, 0] = 1.0  # beyond the scale: clipped to its top
    output[0, 1, 1] = explorer.ERROR_SCALE * 3  # one channel of three: the mean is the scale
    colours = explorer.error_map(output, clean)
    magma = colormaps["magma"]
    expected = {(0, 0): 0.0, (0, 1): 0.5, (1, 0): 1.0, (1, 1): 1.0}
    for (y, x), level in expected.items():
        assert np.abs(colours[y, x].astype(int) - np.round(np.array(magma(level)[:3]) * 255)).max() <= 1


def test_long_curves_are_thinned_evenly_keeping_both_ends() -> None:
    frame = pd.DataFrame({"iteration": np.arange(10_001), "psnr_clean": np.linspace(10, 30, 10_001)})
    thinned = explorer._thinned(frame)
    assert len(thinned) <= explorer.MAX_CURVE_POINTS + 1
    assert thinned["iteration"].iat[0] == 0 and thinned["iteration"].iat[-1] == 10_000
    steps = np.diff(thinned["iteration"].to_numpy())
    assert steps.min() > 0 and steps.max() - steps.min() <= 1  # evenly spaced
    short = frame.iloc[:50]
    assert explorer._thinned(short).equals(short)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> tuple[Path, Store]:
    """A 4-fit sweep (snapshots at 0, 10, 20) and its report, through the CLI."""
    tmp = tmp_path_factory.mktemp("explorer")
    manifest = tiny_manifest(tmp, str(tmp / "results"), name="explore")
    assert dip(["sweep", "run", str(manifest)]) == 0
    assert dip(["report", str(manifest), "--out", str(tmp / "report")]) == 0
    return tmp / "report", Store(str(tmp / "results"))


def test_report_links_the_explorer_and_writes_every_fit_once(tiny_report: tuple[Path, Store]) -> None:
    report, store = tiny_report
    assert "[trajectory explorer](explorer.html)" in (report / "index.md").read_text()
    table = read_script(report / "explorer" / "fits.js")
    done = set(store.done_keys())
    assert {row[0] for row in table["rows"]} == done
    assert {"image", "task", "param_sigma", "lam", "seed"} <= set(table["spec"])
    assert {"best_psnr", "best_iteration", "final_psnr"} <= set(table["outcome"])
    assert "key" not in table["spec"] + table["outcome"]
    assert {p.stem for p in (report / "explorer" / explorer.FIT_FOLDER).glob("*.js")} == done
    for name in ("plotly.min.js", "datatables.js", "datatables.css"):  # shipped with the page, no CDN
        assert (report / "explorer" / "lib" / name).stat().st_size > 50_000
    assert "http" not in (report / "explorer.html").read_text().replace("http://www.w3.org", "")


def test_a_fit_file_holds_the_stored_trajectory(tiny_report: tuple[Path, Store]) -> None:
    report, store = tiny_report
    key = sorted(store.done_keys())[0]
    data = read_script(report / "explorer" / explorer.FIT_FOLDER / f"{key}.js")
    trajectory = store.read_trajectory(key)
    metrics = store.read_metrics(key).to_pandas()
    summary = store.summary(key)

    shots = data["snapshots"]
    assert shots["iteration"] == trajectory["snapshot_iterations"].tolist() == [0, 10, 20]
    assert len(shots["output"]) == len(shots["error"]) == len(shots["power"]) == 3
    # the last output, decoded from its PNG, is the stored snapshot rounded to 8 bits
    snapshot = trajectory["snapshots"][-1].astype(np.float32)
    expected = np.round(np.clip(snapshot, 0, 1) * 255).astype(int)
    pixels = png_pixels(shots["output"][-1]).astype(int)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    assert pixels.shape == expected.shape and np.abs(pixels - expected).max() <= 1
    # curves are the stored metrics (fewer than the thinning limit: all of them)
    assert data["curves"]["iteration"] == metrics["iteration"].tolist()
    assert np.allclose(data["curves"]["psnr_clean"], metrics["psnr_clean"], atol=1e-3)
    # the oracle mark is the summary's best iteration and PSNR
    assert data["marks"]["best"] == [summary["best_iteration"], pytest.approx(summary["best_psnr"])]
    # the spectrum of a 32-pixel image has bins 0 … 16 at r / 32 cycles per pixel
    assert data["frequency"] == pytest.approx([r / 32 for r in range(17)])
    assert len(data["clean_power"]) == 17 and min(data["clean_power"]) >= 0


def test_a_later_report_reuses_fit_files(tiny_report: tuple[Path, Store], tmp_path: Path) -> None:
    report, store = tiny_report
    copy = tmp_path / "report"
    shutil.copytree(report, copy)
    key = sorted(store.done_keys())[0]
    marked = copy / "explorer" / explorer.FIT_FOLDER / f"{key}.js"
    marked.write_text(marked.read_text() + "// kept\n")
    assert dip(["report", store.uri, "--out", str(copy)]) == 0
    assert marked.read_text().endswith("// kept\n")  # a done fit never changes: its file is not rewritten


def test_exported_keys_are_the_earlier_ones_and_an_even_spread() -> None:
    keys = [f"k{i}" for i in range(10)]
    assert explorer.exported_keys(keys, set(), None) == keys
    assert explorer.exported_keys(keys, set(), 10) == keys
    # k3 written before; 3 more spread over the other 9: their 0th, 3rd and 6th
    assert explorer.exported_keys(keys, {"k3"}, 4) == ["k3", "k0", "k4", "k7"]
    assert explorer.exported_keys(keys, {"k3"}, 0) == ["k3"]  # files already there cost nothing


def test_a_report_can_hold_the_data_of_some_fits(tiny_report: tuple[Path, Store], tmp_path: Path, capsys) -> None:
    report, store = tiny_report
    assert dip(["report", store.uri, "--out", str(tmp_path / "two"), "--explorer-fits", "2"]) == 0
    table = read_script(tmp_path / "two" / "explorer" / "fits.js")
    files = {p.stem for p in (tmp_path / "two" / "explorer" / explorer.FIT_FOLDER).glob("*.js")}
    assert len(table["rows"]) == 4 and set(table["exported"]) == files and len(files) == 2
    assert "the data of 2 of the 4 fits" in (tmp_path / "two" / "index.md").read_text()
    assert "exported" not in read_script(report / "explorer" / "fits.js")  # the default holds every fit's
    with pytest.raises(SystemExit) as exc:
        dip(["report", store.uri, "--out", str(tmp_path / "bad"), "--explorer-fits", "some"])
    assert exc.value.code == 2 and "not a number of fits or 'all'" in capsys.readouterr().err


# --- the page, in Chromium --------------------------------------------------------------------

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency (scripts/setup)")
browser_needed = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing: run scripts/setup as root")


@pytest.fixture(scope="module")
def quickstart_report(tmp_path_factory: pytest.TempPathFactory, ray_cluster) -> Path:
    """The quickstart's 8 fits, at 300 of its 1,500 iterations to keep CI short, and their report."""
    tmp = tmp_path_factory.mktemp("quickstart")
    store = tmp / "results"
    overrides = ["--set", f"storage={store}", "--set", "fit.iterations=300", "--set", "mlflow.enabled=false"]
    assert dip(["sweep", "run", str(ROOT / "manifests" / "quickstart.yaml"), *overrides]) == 0
    assert dip(["report", str(store), "--out", str(tmp / "report")]) == 0
    return tmp / "report"


class Page:
    """A page in headless Chromium that records every console error and uncaught exception."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1500})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.locator(".fit-row img.output").first.wait_for(timeout=30_000)

    def shown(self) -> int:
        return self.page.locator(".fit-row").count()

    def cursor(self) -> float:
        return float(self.page.evaluate("document.getElementById('psnr').layout.shapes[0].x0"))

    def output_image(self, row: int = 0) -> str | None:
        return self.page.locator(".fit-row img.output").nth(row).get_attribute("src")


@pytest.fixture
def chromium() -> Any:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.slow
@browser_needed
def test_explorer_from_disk_slider_and_side_by_side(quickstart_report: Path, chromium: Any, tmp_path: Path) -> None:
    page = Page(chromium)
    page.open((quickstart_report / "explorer.html").as_uri())
    assert page.shown() == 1
    assert page.page.locator("#fits tbody tr").count() == 8  # every fit in the table (one page of 10)
    assert page.page.locator("#iteration").inner_text() == "300"  # the slider starts at the last snapshot

    before_image, before_cursor = page.output_image(), page.cursor()
    page.page.locator("#slider").fill("1")  # the second snapshot: iteration 100
    assert page.page.locator("#iteration").inner_text() == "100"
    assert page.output_image() != before_image
    assert (before_cursor, page.cursor()) == (300, 100)

    page.page.locator("#fits tbody tr").nth(1).click()  # a second fit beside the first
    page.page.wait_for_function("document.querySelectorAll('.fit-row').length === 2")
    traces = page.page.evaluate("document.getElementById('psnr').data.map(t => t.name)")
    assert "#1 PSNR vs clean" in traces and "#2 PSNR vs clean" in traces
    assert page.page.locator(".fit-row img.output").count() == 2
    page.page.screenshot(path=str(tmp_path / "explorer-side-by-side.png"), full_page=True)

    # the address names the fits shown: opened again, it shows the same two
    again = Page(chromium)
    again.open(page.page.url)
    again.page.wait_for_function("document.querySelectorAll('.fit-row').length === 2")
    assert page.errors == [] and again.errors == []
    assert (tmp_path / "explorer-side-by-side.png").stat().st_size > 50_000


@pytest.mark.slow
@browser_needed
def test_a_fit_without_data_says_how_to_get_it(quickstart_report: Path, chromium: Any, tmp_path: Path) -> None:
    """A report holding 3 of the 8 fits' data: the other rows are grey, and choosing one says
    why nothing is shown instead of failing to load its file."""
    out = tmp_path / "three"
    assert dip(["report", str(quickstart_report.parent / "results"), "--out", str(out), "--explorer-fits", "3"]) == 0
    page = Page(chromium)
    page.open((out / "explorer.html").as_uri())
    assert page.page.locator("#fits tbody tr.no-data").count() == 5
    page.page.locator("#fits tbody tr.no-data").first.click()
    page.page.wait_for_function(
        "document.getElementById('status').textContent.includes('holds the data of 3 of the 8')"
    )
    assert "--explorer-fits all" in page.page.locator("#status").inner_text()
    assert page.errors == []


@pytest.mark.slow
@browser_needed
def test_explorer_from_object_storage(quickstart_report: Path, chromium: Any, s3_store_uri: tuple[str, dict]) -> None:
    import s3fs

    uri, options = s3_store_uri
    # uploaded readable by anyone, as a bucket that serves static pages is
    fs = s3fs.S3FileSystem(skip_instance_cache=True, s3_additional_kwargs={"ACL": "public-read"}, **options)
    bucket = uri.removeprefix("s3://").split("/")[0]
    fs.put(str(quickstart_report), f"{bucket}/report", recursive=True)
    page = Page(chromium)
    endpoint = options["client_kwargs"]["endpoint_url"]
    page.open(f"{endpoint}/{bucket}/report/explorer.html")  # moto serves GETs as S3 does
    page.page.locator("#fits tbody tr").nth(2).click()
    page.page.wait_for_function("document.querySelectorAll('.fit-row').length === 2")
    assert page.errors == []
