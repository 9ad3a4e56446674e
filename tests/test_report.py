"""`write_report`: tables checked against the done markers read directly, links, figures, the paper's numbers."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.images import encode_png
from pipeline.manifest import load_manifest
from pipeline.paper import PAPER_TABLES, paper_row, tables_for
from pipeline.report import write_report
from pipeline.storage import Store
from pipeline.sweep import expand_specs, open_store
from pipeline.worker import execute_fit

DATA_ROOT = Path(os.environ.get("DIP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
FIGURE_KINDS = ("psnr", "fbc", "ratio", "divergence", "spectrum-error", "spectra", "outputs")


def run_manifest(folder: Path, name: str, doc: dict[str, Any]) -> Path:
    """Write a manifest and run its fits in this process (no Ray); returns the manifest path."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "storage": str(folder / name), "mlflow": {"enabled": False}, **doc}))
    manifest = load_manifest(path)
    store = open_store(manifest)
    for spec in expand_specs(manifest):
        assert execute_fit(spec, store)["status"] == "done"
    return path


@pytest.fixture(scope="module")
def denoise(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """2 seeds × λ ∈ {none, 2} on one CBSD68 image at σ = 25, as experiment S6 (so Shi Table 1 applies).

    stop_eps is huge so that the automatic stop fires, at the first iteration it may (2 windows).
    Returns (manifest, storage root, report index).
    """
    folder = tmp_path_factory.mktemp("report")
    manifest = run_manifest(
        folder,
        "tiny-s6",
        {
            "experiment": "S6",
            "data_root": str(DATA_ROOT),
            "images": [{"dataset": "cbsd68", "files": ["101085.png"], "crop": 32}],
            "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
            "model": {"name": "decoder", "width": 8, "depth": 3},
            "grid": {"lam": [None, 2]},
            "seeds": [0, 1],
            "fit": {"iterations": 40, "lr": 0.01, "snapshot_stride": 5, "stop_window": 5, "stop_eps": 1e30},
        },
    )
    return manifest, folder / "tiny-s6", write_report(manifest, folder / "out")


def markers(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((root / "done").glob("*.json"))]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def links(index: Path) -> list[Path]:
    return [index.parent / target for target in re.findall(r"\]\(([^)]+)\)", index.read_text())]


def autostop(marker: dict[str, Any]) -> float:
    """The auto-stop PSNR as the report defines it: at the stop, or at the budget if it never fired."""
    return marker["final_psnr"] if marker["stop_iteration"] is None else marker["stop_psnr"]


def test_index_links_resolve_and_figures_are_readable_images(denoise: tuple[Path, Path, Path]) -> None:
    _, _, index = denoise
    text = index.read_text()
    assert "fits done: 4" in text and "fits failed: 0" in text and "experiment S6" in text
    targets = links(index)
    assert targets and all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    figures = [t for t in targets if t.suffix == ".png"]
    assert {kind for kind in FIGURE_KINDS if any(f.stem.endswith(f"-{kind}") for f in figures)} == set(FIGURE_KINDS)
    for figure in figures:
        with Image.open(figure) as image:
            image.verify()
        with Image.open(figure) as image:
            assert image.width >= 500 and image.height >= 300, (figure.name, image.size)


def test_main_table_cells_are_mean_and_std_over_seeds_from_the_markers(denoise: tuple[Path, Path, Path]) -> None:
    _, root, index = denoise
    by_lam: dict[Any, list[float]] = {}
    for marker in markers(root):
        by_lam.setdefault(marker["lam"], []).append(marker["best_psnr"])
    assert sorted(len(v) for v in by_lam.values()) == [2, 2]
    rows = {row["setting"]: row for row in read_csv(index.parent / "tables" / "denoise-cbsd68-oracle.csv")}
    assert set(rows) == {"decoder unconstrained", "decoder λ=2"}
    markdown = (index.parent / "tables" / "denoise-cbsd68-oracle.md").read_text()
    for name, lam in (("decoder unconstrained", None), ("decoder λ=2", 2.0)):
        mean, std = statistics.mean(by_lam[lam]), statistics.stdev(by_lam[lam])
        assert float(rows[name]["σ=25 mean"]) == pytest.approx(mean, abs=1e-9)
        assert float(rows[name]["σ=25 std"]) == pytest.approx(std, abs=1e-9)
        assert int(rows[name]["σ=25 n"]) == 2
        assert f"| {name} | {mean:.2f} ± {std:.2f} |" in markdown
    latex = (index.parent / "tables" / "denoise-cbsd68-oracle.tex").read_text()
    assert latex.count("\\begin{tabular}") == 1 and "\\end{tabular}" in latex
    for name, lam in (("decoder unconstrained", None), ("decoder λ=2", 2.0)):
        mean, std = statistics.mean(by_lam[lam]), statistics.stdev(by_lam[lam])
        assert f"{name} & {mean:.2f} ± {std:.2f}" in latex


def test_paper_values_stand_beside_ours_with_the_difference(denoise: tuple[Path, Path, Path]) -> None:
    _, root, index = denoise
    [path] = (index.parent / "tables").glob("denoise-cbsd68-paper-*.csv")
    rows = {row["paper_row"]: row for row in read_csv(path)}
    fits = markers(root)
    ours = {
        "DIP": statistics.mean(m["best_psnr"] for m in fits if m["lam"] is None),  # oracle
        "controlled": statistics.mean(autostop(m) for m in fits if m["lam"] is not None),  # auto-stop
    }
    for row, paper in (("DIP", 27.84), ("controlled", 28.15)):
        assert float(rows[row]["σ=25 paper"]) == paper
        assert float(rows[row]["σ=25 ours mean"]) == pytest.approx(ours[row], abs=1e-9)
        assert float(rows[row]["σ=25 diff"]) == pytest.approx(ours[row] - paper, abs=1e-9)
    assert rows["controlled"]["compared_on"] == "autostop_psnr" and rows["DIP"]["compared_on"] == "best_psnr"
    assert float(rows["CBM3D"]["σ=50 paper"]) == 27.38 and rows["CBM3D"]["σ=50 ours mean"] == ""


def test_stopping_table_counts_iterations_saved_from_the_markers(denoise: tuple[Path, Path, Path]) -> None:
    _, root, index = denoise
    by_key = {m["key"]: m for m in markers(root)}
    rows = read_csv(index.parent / "tables" / "stopping-per-fit.csv")
    assert {row["key"] for row in rows} == set(by_key)
    assert any(m["stop_iteration"] is not None for m in by_key.values())
    for row in rows:
        marker = by_key[row["key"]]
        stop = marker["stop_iteration"]
        assert int(row["iterations_saved"]) == (marker["iterations"] - stop if stop is not None else 0)
        assert int(row["oracle_iteration"]) == marker["best_iteration"]
        assert int(row["fallbacks"]) == marker["fallbacks"]
        assert float(row["psnr_lost_at_stop"]) == pytest.approx(marker["best_psnr"] - autostop(marker), abs=1e-9)
        assert float(row["psnr_lost_at_budget"]) == pytest.approx(marker["best_psnr"] - marker["final_psnr"], abs=1e-9)
    summary = (index.parent / "tables" / "stopping-summary.md").read_text()
    assert "| denoise | all settings | " in summary and "backtracking fallbacks" in summary


def test_real_fits_of_one_image_share_its_stored_inputs(denoise: tuple[Path, Path, Path]) -> None:
    """2 λ × 2 seeds of one image: one clean image for all four fits, one degraded image per seed
    (the noise is the seed's, whatever λ), and none in the fits' own folders."""
    _, root, _ = denoise
    assert len(list((root / "images").iterdir())) == 3
    assert not list((root / "fits").glob("*/clean.png")) and not list((root / "fits").glob("*/degraded.png"))
    store = Store(str(root))
    keys = [marker["key"] for marker in markers(root)]
    assert len({store.read_image(key, "clean") for key in keys}) == 1
    assert len({store.read_image(key, "degraded") for key in keys}) == 2


def test_band_convergence_table_is_the_same_from_old_markers(denoise: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Markers written before rows had fbc_converged_* (the same store with them removed): the
    report then reads every fit's metrics and finds the same table."""
    _, root, index = denoise
    assert all("fbc_converged_5" in marker for marker in markers(root))
    old = tmp_path / "old"
    shutil.copytree(root, old)
    for path in (old / "done").glob("*.json"):
        marker = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in marker.items() if not k.startswith("fbc_converged_")}))
    (old / "summary.parquet").unlink(missing_ok=True)
    old_index = write_report(old, tmp_path / "out", max_groups=0)
    table = "tables/fbc-band-convergence.csv"
    assert read_csv(old_index.parent / table) == read_csv(index.parent / table)
    assert len(read_csv(index.parent / table)) == 2  # λ none and λ 2


def test_one_d_fits_get_convergence_tables_and_capacity_plots(tmp_path: Path) -> None:
    manifest = run_manifest(
        tmp_path,
        "tiny-1d",
        {
            "images": [{"signal": {"length": 64, "freqs": [2, 10]}}],
            "tasks": [{"task": "clean"}],
            "model": {"name": "dip_linear_1d", "depth": 2},
            "grid": {"width": [8, 16]},
            "seeds": [0, 1],
            "fit": {"iterations": 80, "lr": 0.01, "snapshot_stride": 10, "spectral": False},
        },
    )
    index = write_report(manifest, tmp_path / "out")
    assert all(t.is_file() for t in links(index))
    assert (tmp_path / "out" / "figures" / "capacity-width.png").is_file()
    assert any(t.stem.endswith("-amplitude-error") for t in links(index))
    rows = {row["setting"]: row for row in read_csv(tmp_path / "out" / "tables" / "clean-signals-convergence.csv")}
    for width in (8, 16):
        converged = [m["converged_k2"] for m in markers(tmp_path / "tiny-1d") if m["width"] == width]
        expected = [c for c in converged if c >= 0]
        row = rows[f"dip_linear_1d width={width}"]
        assert int(row["k=10 n"]) == len(expected)
        if expected:
            assert float(row["k=10 mean"]) == pytest.approx(statistics.mean(expected))
    assert not (tmp_path / "out" / "tables" / "stopping-per-fit.csv").exists()  # 1-D fits have no automatic stop
    assert "no automatic stop" in index.read_text()


def synthetic_fit(store: Store, key: str, task: str, clean: bool) -> None:
    """A stored fit written directly: with a clean reference (an auto-stop that never fired), or without one."""
    rng = np.random.default_rng(0)
    iterations = np.arange(21)
    metrics: dict[str, np.ndarray] = {
        "iteration": iterations,
        "psnr_target": np.linspace(10, 20, 21),
        "ratio": np.linspace(2, 1, 21),
    }
    summary: dict[str, Any] = {
        "sweep": "robust",
        "image": "sample:camera",
        "task": task,
        "seed": 0,
        "model": "decoder",
        "lam": None,
        "iterations": 20,
        "iterations_run": 20,
    }
    images: dict[str, bytes] = {}
    trajectory: dict[str, np.ndarray] = {"snapshot_iterations": np.array([], dtype=np.int64)}
    if clean:
        metrics["psnr_clean"] = np.linspace(12, 22, 21)
        summary |= {
            "param_sigma": 25.0,
            "final_psnr": 22.0,
            "best_psnr": 22.0,
            "best_iteration": 20,
            "stop_psnr": None,
            "stop_iteration": None,
        }
        snapshots = rng.random((3, 1, 32, 32)).astype(np.float16)
        trajectory = {"snapshots": snapshots, "snapshot_iterations": np.array([0, 10, 20])}
        images["clean"] = encode_png(rng.random((1, 32, 32)).astype(np.float32))
    store.write_fit(
        key,
        {"image_name": "sample:camera", "task": task},
        summary,
        {k: np.asarray(v, dtype=np.int64 if k == "iteration" else np.float32) for k, v in metrics.items()},
        trajectory,
        images,
    )


def test_failed_fits_and_fits_without_clean_reference_still_report(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    store.write_failure(
        "f" * 16, {"image_name": "missing.png"}, "ImageError: cannot read image missing.png", "ImageError", attempts=1
    )
    synthetic_fit(store, "a" * 16, "enhance", clean=False)
    index = write_report(tmp_path / "store", tmp_path / "out")  # a storage path, no manifest; no PSNR column at all
    text = index.read_text()
    assert "fits done: 1" in text and "fits failed: 1" in text and "1 × ImageError: cannot read image" in text
    assert "no clean reference" in text and all(t.is_file() for t in links(index))

    synthetic_fit(store, "b" * 16, "denoise", clean=True)
    index = write_report(tmp_path / "store", tmp_path / "out2", max_groups=1)
    assert "Figures are drawn for 1 of 2 groups" in index.read_text()
    assert all(t.is_file() for t in links(index))
    [row] = read_csv(tmp_path / "out2" / "tables" / "stopping-per-fit.csv")  # only the fit with a clean image
    assert (row["key"], row["stop_fired"], row["iterations_saved"], row["stop_iteration"]) == (
        "b" * 16,
        "False",
        "0",
        "",
    )


def superres_fit(
    store: Store,
    key: str,
    image: str,
    setting: dict[str, Any],
    psnrs: dict[str, Any],
    iterations: int = 200,
    iterations_run: int = 200,
) -> None:
    """A stored ×4 super-resolution fit of experiment S9 on Set14, written directly."""
    summary = {
        "sweep": "s9",
        "experiment": "S9",
        "image": f"set14/{image}",
        "dataset": "set14",
        "task": "superres",
        "param_factor": 4,
        "seed": 0,
        "crop": 64,
        "iterations": iterations,
        "iterations_run": iterations_run,
        "best_iteration": 50,
        "stop_psnr": None,
        "stop_iteration": None,
        **setting,
        **psnrs,
    }
    metrics = {
        "iteration": np.arange(3, dtype=np.int64),
        "psnr_target": np.float32([10, 11, 12]),
        "psnr_clean": np.float32([9, 10, 11]),
    }
    store.write_fit(
        key,
        {"image_name": summary["image"], "task": "superres"},
        summary,
        metrics,
        {"snapshot_iterations": np.array([], dtype=np.int64)},
        {},
    )


def test_superres_paper_tables_compare_at_the_fixed_budget(tmp_path: Path) -> None:
    """Shi Tables 4-5 report every row at a fixed iteration (§5.4): oracle, auto-stop and final
    PSNR differ here, and the S9 table takes the final one, the posterior mean for Bayesian DIP,
    leaves out a fit that halted before its budget, and says which iteration it compared."""
    store = Store(str(tmp_path / "store"))
    dip, controlled = {"model": "encoder_decoder_skip", "lam": None}, {"model": "decoder", "lam": 2.0}
    superres_fit(
        store,
        "a" * 16,
        "zebra.png",
        dip,
        {"best_psnr": 25.0, "stop_psnr": 24.0, "stop_iteration": 100, "final_psnr": 23.0},
    )
    superres_fit(
        store,
        "b" * 16,
        "zebra.png",
        controlled,
        {"best_psnr": 26.0, "stop_psnr": 25.5, "stop_iteration": 150, "final_psnr": 24.5},
    )
    superres_fit(
        store,
        "c" * 16,
        "baboon.png",
        controlled,  # halted at its stop: no PSNR at iteration 200
        {"best_psnr": 20.0, "stop_psnr": 19.5, "stop_iteration": 150, "final_psnr": 19.5},
        iterations_run=150,
    )
    superres_fit(
        store,
        "d" * 16,
        "zebra.png",
        dip | {"optimizer": "sgld"},
        {"best_psnr": 24.0, "final_psnr": 21.0, "posterior_psnr": 22.2},
    )
    superres_fit(
        store,
        "e" * 16,
        "zebra.png",
        {"method": "tv", "model": None},
        {"best_psnr": 21.0, "final_psnr": 21.0},
        iterations=300,
        iterations_run=300,
    )
    index = write_report(tmp_path / "store", tmp_path / "out", max_groups=0)
    [path] = (index.parent / "tables").glob("superres-set14-paper-*.csv")
    rows = {row["paper_row"]: row for row in read_csv(path)}
    expected = {
        "DIP": (23.0, "final_psnr", 1),
        "controlled": (24.5, "final_psnr", 1),
        "Bayesian DIP": (22.2, "posterior_psnr", 1),
        "TV prior": (21.0, "final_psnr", 1),
    }
    for row, (psnr, column, n) in expected.items():
        assert rows[row]["compared_on"] == column, row
        assert float(rows[row]["×4 ours mean"]) == pytest.approx(psnr) and int(rows[row]["×4 ours n"]) == n, row
    assert float(rows["TV prior"]["×4 paper"]) == 26.42 and float(rows["TV prior"]["×8 paper"]) == 23.48
    assert float(rows["Bayesian DIP"]["×4 paper"]) == 26.07 and float(rows["Bayesian DIP"]["×8 paper"]) == 20.67
    markdown = path.with_suffix(".md").read_text()
    assert "PSNR at a fixed iteration (×4: iteration 200 (paper 2,000))" in markdown.splitlines()[0]
    assert "| DIP ← encoder_decoder_skip (at budget) | 23.00 |" in markdown
    assert "1 network fit(s) halted at the automatic stop" in markdown
    assert "PSNR at a fixed iteration" in path.with_suffix(".tex").read_text()  # the LaTeX caption too


def test_empty_storage_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"no finished fits in storage file://{re.escape(str(tmp_path))}/empty"):
        write_report(tmp_path / "empty", tmp_path / "out")


# --- the papers' numbers, spot-checked against the papers' tables as printed there ----------------


@pytest.mark.parametrize(
    ("task", "dataset", "experiment", "row", "column", "psnr"),
    [
        ("denoise", "cbsd68", "S6", "controlled", 25, 28.15),  # Shi Table 1
        ("denoise", "cbsd68", "S6", "CBM3D", 50, 27.38),
        ("jpeg", "live1", "S7", "DIP", 20, 29.75),  # Shi Table 2
        ("inpaint", "cbsd68", "S8", "Bayesian DIP", 0.25, 19.49),  # Shi Table 3
        ("superres", "set14", "S9", "bicubic", 4, 26.05),  # Shi Table 4
        ("superres", "set5", "S9", "controlled", 8, 26.08),  # Shi Table 5
        ("superres", "set14", "S9", "TV prior", 4, 26.42),  # Shi Table 4 (from Ulyanov et al.)
        ("superres", "set14", "S9", "TV prior", 8, 23.48),
        ("superres", "set14", "S9", "Bayesian DIP", 4, 26.07),
        ("superres", "set14", "S9", "Bayesian DIP", 8, 20.67),  # as printed (its per-image values average 23.28)
        ("superres", "set5", "S9", "TV prior", 4, 28.85),  # Shi Table 5
        ("superres", "set5", "S9", "TV prior", 8, 24.87),
        ("denoise", "standard9", "C6", "ReLUNet", 25, 27.58),  # C&M Table 2
        ("denoise", "standard9", "C6", "DIP-Linear-2048", 25, 19.17),
    ],
)
def test_paper_numbers_match_the_spec(
    task: str, dataset: str, experiment: str, row: str, column: float, psnr: float
) -> None:
    [table] = tables_for(task, dataset, experiment)
    assert table.experiment == experiment
    assert table.value(row, column) == psnr
    assert table.value(row.lower(), column) == psnr  # methods are matched whatever their letter case


def test_paper_tables_apply_only_to_their_experiment() -> None:
    assert len(PAPER_TABLES) == 6
    assert tables_for("denoise", "standard9", "S6") == []  # S6 fits standard9 at full size, C&M downsampled
    assert [t.experiment for t in tables_for("denoise", "cbsd68", None)] == ["S6"]
    assert tables_for("superres", "set5", "S9")[0].value("Bayesian DIP", 4) == 26.57


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"model": "decoder", "lam": None}, ("DIP", "best_psnr")),
        ({"model": "encoder_decoder_skip", "lam": float("nan")}, ("DIP", "best_psnr")),
        ({"model": "decoder", "lam": 2.0}, ("controlled", "autostop_psnr")),
        ({"model": "dip_linear", "width": 2048, "lam": None}, ("DIP-Linear-2048", "best_psnr")),
        ({"model": "relunet", "lam": None}, ("ReLUNet", "best_psnr")),
        ({"method": "bm3d", "model": None}, ("CBM3D", "final_psnr")),
        ({"method": "tv", "model": None}, ("TV prior", "final_psnr")),
        ({"model": "deep_decoder", "lam": None}, ("Deep Decoder", "final_psnr")),
        ({"model": "encoder_decoder_skip", "lam": None, "optimizer": "sgld"}, ("Bayesian DIP", "posterior_psnr")),
        ({"model": "convnet", "lam": None}, None),
    ],
)
def test_paper_row_mapping(setting: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert paper_row(setting) == expected


def test_fallback_marks_sit_where_the_cumulative_count_rises() -> None:
    from pipeline.plots import fallback_points

    metrics = {
        "iteration": np.array([0, 5, 10, 15, 20]),
        "psnr_target": np.array([10.0, 20, 8, 21, 22]),
        "fallbacks": np.array([0.0, 0, 1, 1, 3]),
    }
    assert fallback_points(metrics, "psnr_target") == [(10.0, 8.0), (20.0, 22.0)]
    assert fallback_points({"iteration": np.arange(3), "psnr_target": np.zeros(3)}, "psnr_target") == []


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"model": "decoder", "lam": None}, ("DIP", "final_psnr")),
        ({"model": "decoder", "lam": 2.0}, ("controlled", "final_psnr")),
        ({"model": "deep_decoder", "lam": None}, ("Deep Decoder", "final_psnr")),
        ({"model": "encoder_decoder_skip", "lam": None, "optimizer": "sgld"}, ("Bayesian DIP", "posterior_psnr")),
        ({"method": "tv", "model": None}, ("TV prior", "final_psnr")),
    ],
)
def test_superres_tables_compare_every_row_at_the_fixed_budget(
    setting: dict[str, Any], expected: tuple[str, str]
) -> None:
    for dataset in ("set14", "set5"):
        [table] = tables_for("superres", dataset, "S9")
        assert table.budgets == {4: 2000, 8: 4000}  # Shi §5.4
        assert paper_row(setting, table) == expected
    [denoise] = tables_for("denoise", "cbsd68", "S6")
    assert denoise.budgets is None and paper_row(setting, denoise) == paper_row(setting)


def test_per_layer_sigmas_are_a_text_column_and_name_their_rows(tmp_path: Path) -> None:
    """Summary rows hold flat scalars: a σ per upsampling layer goes to `up_sigmas` (text), `up_sigma`
    stays a number column (null there), and the report names each row by its σ."""
    from pipeline.report import load_fits

    run_manifest(
        tmp_path,
        "sigmas",
        {
            "images": [{"sample": "camera", "crop": 16}],
            "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
            "model": {"name": "decoder", "width": 4, "depth": 2, "upsample": "gaussian", "input": "fourier"},
            "grid": {"up_sigma": [[0.1, 0.5], 0.3]},
            "fit": {"iterations": 3, "stop_window": 1},
        },
    )
    store = Store(str(tmp_path / "sigmas"))
    rows = {row["up_sigmas"] or row["up_sigma"]: row for row in store.collect(write=False).to_pylist()}
    assert set(rows) == {"0.1,0.5", 0.3}
    assert rows["0.1,0.5"]["up_sigma"] is None and rows[0.3]["up_sigmas"] is None
    assert all(
        r["input"] == "fourier" and r["bound_head"] is False and r["detach_sigma"] is False for r in rows.values()
    )
    names = set(load_fits(store)["setting"])
    assert names == {"decoder gaussian σ=0.1,0.5", "decoder gaussian σ=0.3"}
