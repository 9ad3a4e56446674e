"""`dip fit` from a user's side: files it writes, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as dip
from pipeline.messages import one_line

TINY = ["--width", "4", "--depth", "3", "--iters", "6", "--lam", "2"]


def picture(path: Path, mode: str, size: tuple[int, int] = (40, 36)) -> Path:
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)
    return path


@pytest.mark.parametrize("name, mode", [("g.png", "L"), ("c.jpg", "RGB"), ("c.bmp", "RGB"), ("a.png", "RGBA")])
def test_fit_writes_images_metrics_and_curves(tmp_path: Path, capsys, name: str, mode: str) -> None:
    image = picture(tmp_path / name, mode)
    out = tmp_path / "out"
    assert dip(["fit", str(image), "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert "from 40x36 to 40x32" in err  # 36 rows cropped to the network's multiple of 8
    assert ("alpha channel dropped" in err) == (mode == "RGBA")
    for png in ("final.png", "clean.png", "degraded.png", "curves.png"):
        assert (out / png).stat().st_size > 0
    final = np.asarray(Image.open(out / "final.png"))
    assert final.shape[:2] == (32, 40) and (final.ndim == 2) == (mode == "L")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(float(r["iteration"])) for r in rows] == list(range(7))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_psnr"] == pytest.approx(float(rows[-1]["psnr_clean"]), abs=1e-3)


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: p / "missing.png", [], "cannot read image"),
        (lambda p: (p / "bad.png").write_bytes(b"not an image") and p / "bad.png", [], "not a readable image"),
        (lambda p: (p / "empty.png").write_bytes(b"") is not None and p / "empty.png", [], "empty"),
        (lambda p: picture(p / "small.png", "RGB", (12, 12)), [], "too small"),
        (lambda p: picture(p / "ok.png", "RGB"), ["--quality", "10"], "--quality does not apply to --task denoise"),
        (lambda p: picture(p / "ok.png", "RGB"), ["--task", "jpeg", "--quality", "0"], "quality"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys, make, args: list, message: str) -> None:
    path = make(tmp_path)
    assert dip(["fit", str(path), "--out", str(tmp_path / "o"), *TINY, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dip: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_unknown_option_values_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        dip(["fit", "x.png", "--task", "deblur"])
    assert exc.value.code == 2
    assert "invalid choice: 'deblur'" in capsys.readouterr().err


def test_bundled_sample_needs_no_file(tmp_path: Path) -> None:
    assert dip(["fit", "skimage:camera", "--crop", "32", "--out", str(tmp_path), *TINY]) == 0
    assert np.asarray(Image.open(tmp_path / "final.png")).shape == (32, 32)


def test_grey_fits_the_luma_of_a_colour_image(tmp_path: Path) -> None:
    assert (
        dip(["fit", "skimage:astronaut", "--crop", "32", "--grey", "--task", "jpeg", "--out", str(tmp_path), *TINY])
        == 0
    )
    clean = np.asarray(Image.open(tmp_path / "clean.png"), dtype=np.float64)
    rgb = np.asarray(Image.open(tmp_path / "final.png"))
    assert clean.ndim == 2 and rgb.ndim == 2  # one channel in, one channel out
    from skimage import data

    full = data.astronaut().astype(np.float64)
    top, left = (512 - 32) // 2, (512 - 32) // 2
    luma = full[top : top + 32, left : left + 32] @ np.array([0.299, 0.587, 0.114])
    assert np.abs(clean - luma).max() <= 1.0  # ITU-R 601 luma, up to 8-bit rounding


def test_the_authors_network_options(tmp_path: Path) -> None:
    """--input, --bound-head, --detach-sigma and one σ per upsampling layer reach the network."""
    args = [
        "--upsample",
        "gaussian",
        "--up-sigma",
        "0.1",
        "0.1",
        "0.5",
        "--input",
        "fourier",
        "--bound-head",
        "--detach-sigma",
    ]
    assert dip(["fit", "skimage:camera", "--crop", "32", "--out", str(tmp_path), *TINY, *args]) == 0
    network = json.loads((tmp_path / "summary.json").read_text())["network"]
    assert network["up_sigma"] == [0.1, 0.1, 0.5]
    assert (network["input"], network["bound_head"], network["detach_sigma"]) == ("fourier", True, True)


def test_up_sigma_takes_one_value_or_one_per_layer(tmp_path: Path, capsys) -> None:
    assert dip(["fit", "skimage:camera", "--crop", "32", "--out", str(tmp_path), *TINY, "--up-sigma", "0.3"]) == 0
    network = json.loads((tmp_path / "summary.json").read_text())["network"]
    assert (network["up_sigma"], network["upsample"], network["input"], network["bound_head"]) == (
        0.3,
        "gaussian",
        "noise",
        False,
    )
    assert dip(["fit", "skimage:camera", "--out", str(tmp_path), *TINY, "--up-sigma", "0.1", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dip: error:") and "gives 2 value(s) but decoder (depth 3) has 3 upsampling" in err[-1]


def test_ulyanovs_options_and_the_safeguard_reach_the_fit(tmp_path: Path, capsys) -> None:
    """--negative-slope, --input-noise-std, --output-average and --no-backtrack reach the configs,
    and the summary line says how often the fit backtracked."""
    args = [
        "--negative-slope",
        "0.2",
        "--lr",
        "0.01",
        "--input-noise-std",
        "0.0333",
        "--output-average",
        "0.99",
        "--no-backtrack",
    ]
    assert dip(["fit", "skimage:camera", "--crop", "32", "--out", str(tmp_path), *TINY, *args]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["network"]["negative_slope"] == 0.2
    fit = summary["fit"]
    assert (fit["lr"], fit["input_noise_std"], fit["output_average"], fit["backtrack"]) == (0.01, 0.0333, 0.99, False)
    assert "backtracked 0 times" in capsys.readouterr().out


def test_debug_shows_the_traceback_of_an_expected_error(tmp_path: Path, capsys) -> None:
    assert dip(["--debug", "fit", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("dip: error: cannot read image")


@pytest.mark.parametrize(
    "message, expected",
    [
        ("first\nsecond", "first"),
        ("\n  spaced   out \n", "spaced out"),
        (KeyError(), "KeyError"),
        ("x" * 400, "x" * 299 + "…"),
    ],
)
def test_one_line(message: str | BaseException, expected: str) -> None:
    assert one_line(message) == expected


def test_every_network_and_task_parameter_is_an_option() -> None:
    from dipmodel.networks import NETWORK_NAMES
    from pipeline.cli import build_parser

    for name in NETWORK_NAMES:
        assert build_parser().parse_args(["fit", "x.png", "--model", name]).model == name
    args = build_parser().parse_args(["fit", "x.png", "--task", "inpaint", "--kind", "bernoulli", "--cutoff", "0.2"])
    assert (args.kind, args.cutoff) == ("bernoulli", 0.2)


LOCAL_SWEEP = """\
name: local
images: [{sample: camera, crop: 32}]
tasks: [{task: denoise, params: {sigma: 25}}]
model: {name: decoder, width: 4, depth: 3, lam: 2}
fit: {iterations: 6}
seeds: [0, 1]
"""


def test_a_local_sweep_runs_the_chosen_fits_in_process_and_resumes(tmp_path: Path, capsys) -> None:
    from pipeline.manifest import expand, load_manifest
    from pipeline.storage import Store

    path = tmp_path / "local.yaml"
    path.write_text(LOCAL_SWEEP)
    store = tmp_path / "store"
    run = ["sweep", "run", str(path), "--local", "--store", str(store), "--where", "seed=1"]
    assert dip(run) == 0
    [chosen] = [s.key for s in expand(load_manifest(path)) if s.seed == 1]
    assert Store(str(store)).done_keys() == {chosen}
    assert dip(run) == 0  # a second call finds it done
    assert "already done" in capsys.readouterr().out
    forget = ["sweep", "forget", str(path), "--set", f"storage={store}", chosen, "0000000000000000"]
    assert dip(forget) == 1  # one of the two keys was not done
    assert "0000000000000000: not done" in capsys.readouterr().out
    assert Store(str(store)).done_keys() == set()
    assert dip(run) == 0  # computed again
    assert "already done" not in capsys.readouterr().out and Store(str(store)).done_keys() == {chosen}
    assert dip([*run[:-1], "nofield=1"]) == 2
    assert "no field 'nofield'" in capsys.readouterr().err


def test_dip_fit_stores_the_fit_under_the_key_a_sweep_gives_it(tmp_path: Path) -> None:
    """dip fit runs a one-image sweep: the same spec, the same key, the same store layout."""
    from pipeline.manifest import expand, load_manifest
    from pipeline.storage import Store

    out = tmp_path / "out"
    assert dip(["fit", "skimage:camera", "--crop", "32", "--out", str(out), *TINY]) == 0
    path = tmp_path / "same.yaml"
    path.write_text(LOCAL_SWEEP.replace("seeds: [0, 1]", "seeds: [0]"))
    [spec] = expand(load_manifest(path))
    assert json.loads((out / "summary.json").read_text())["key"] == spec.key
    assert Store(str(out)).done_keys() == {spec.key}
