"""Manifests: loading, every error with its field path and line, expansion, and stable keys."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.manifest import (
    FitSpec,
    ManifestError,
    expand,
    fit_key,
    json_schema,
    load_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "manifests" / "quickstart.yaml"
SHARED_DATA = Path("/work/shared/datasets")

# One fit; every line is a place a test may change. Line numbers matter: see `write`.
BASE = """\
name: base
images:
  - sample: astronaut
    crop: 64
tasks:
  - task: denoise
    params:
      sigma: 25
model:
  name: decoder
  width: 8
grid:
  lam: [2]
fit:
  iterations: 10
  stop_window: 5
seeds: [0]
# spare
"""


def write(tmp_path: Path, text: str = BASE, file: str = "m.yaml", **lines: str) -> Path:
    """Write a manifest, replacing the first line of each key given (`sigma="      sigma: 15"`);
    `spare` replaces the comment line at the end."""
    out = []
    for line in text.splitlines():
        key = line.strip().split(":")[0].lstrip("-# ")
        out.append(lines.pop(key, line))
    path = tmp_path / file
    path.write_text("\n".join(out) + "\n")
    return path


def line_of(path: Path, start: str) -> int:
    """1-based number of the first line whose stripped text starts with `start`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(start))


def keys(path: Path | str) -> set[str]:
    return {s.key for s in expand(load_manifest(path))}


def one_spec(path: Path) -> FitSpec:
    (spec,) = expand(load_manifest(path))
    return spec


# --- the quickstart -------------------------------------------------------------------------------


def test_quickstart_is_eight_distinct_fits() -> None:
    specs = expand(load_manifest(QUICKSTART))
    # 2 samples (astronaut, camera) x 2 noise levels (sigma 15, 25) x 2 bounds (lam null, 2) x 1 seed
    assert len(specs) == 2 * 2 * 2
    assert len({s.key for s in specs}) == 8
    assert {s.image_name for s in specs} == {"sample:astronaut", "sample:camera"}
    assert {(s.network["lam"], s.network["norm"]) for s in specs} == {(None, "batch"), (2.0, "lipschitz")}
    assert all(s.crop == 64 and s.fit["iterations"] == 1500 and s.network["width"] == 32 for s in specs)


def test_spec_round_trips_through_json() -> None:
    spec = expand(load_manifest(QUICKSTART))[0]
    again = FitSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert fit_key(again.model_dump()) == spec.key
    assert again.net_config().width == 32
    assert again.fit_config().betas == (0.9, 0.999)
    assert again.fit_config().seed == spec.seed


# --- keys -------------------------------------------------------------------------------------------


def test_key_ignores_where_and_how_a_sweep_runs(tmp_path: Path) -> None:
    a = write(tmp_path, file="a.yaml")
    elsewhere = BASE.replace("name: base", "name: other-sweep\nexperiment: S6") + (
        "data_root: /somewhere/else\nstorage: s3://bucket/results\nstorage_options: {anon: true}\n"
        "mlflow: {tracking_uri: http://127.0.0.1:5000, experiment: x, enabled: false}\n"
        "resources: {num_gpus: 0.25, num_cpus: 2, max_retries: 5, max_workers: 3, pack: 4}\n"
    )
    b = write(tmp_path, elsewhere, file="b.yaml")
    assert keys(a) == keys(b)


def test_key_ignores_key_order_and_int_vs_float(tmp_path: Path) -> None:
    reordered = """\
seeds: [0]
fit: {stop_window: 5, iterations: 10.0}
grid: {lam: [2.0]}
model: {width: 8, name: decoder}
tasks: [{params: {sigma: 25.0}, task: denoise}]
images: [{crop: 64, sample: [astronaut]}]
name: base
"""
    assert keys(write(tmp_path, file="a.yaml")) == keys(write(tmp_path, reordered, file="b.yaml"))


@pytest.mark.parametrize(
    "change",
    [
        {"sigma": "      sigma: 15"},
        {"lam": "  lam: [3]"},
        {"seeds": "seeds: [1]"},
        {"iterations": "  iterations: 11"},
        {"crop": "    crop: 32"},
        {"sample": "  - sample: camera"},
        {"width": "  width: 16"},
        {"spare": "repeats: 2"},  # adds seed 1 beside seed 0 (seeds line removed below)
        {"crop": "    crop: 64\n    grey: true"},
        {"crop": "    crop: 64\n    downsample: 2"},
        {"task": "  - task: lowfreq_noise", "sigma": "      sigma: 25\n      cutoff: 0.1"},
    ],
    ids=["sigma", "lam", "seed", "iterations", "crop", "image", "width", "repeats", "grey", "downsample", "task"],
)
def test_key_changes_with_what_determines_the_result(tmp_path: Path, change: dict[str, str]) -> None:
    base = keys(write(tmp_path, file="a.yaml"))
    lines = change | ({"seeds": ""} if "spare" in change else {})
    changed = keys(write(tmp_path, file="b.yaml", **lines))
    assert changed - base, "a changed result-determining field must give a new key"


def test_speed_options_enter_the_key_only_when_they_change_the_result(tmp_path: Path) -> None:
    """Keys stored before the speed options existed stay valid; bf16 is a different fit, compile is not."""
    spec = expand(load_manifest(write(tmp_path)))[0]
    content = spec.model_dump()
    old = content | {
        "fit": {
            k: v
            for k, v in content["fit"].items()
            if k not in ("precision", "channels_last", "compile", "sn_refresh_every")
        }
    }
    assert fit_key(old) == spec.key
    assert fit_key(content | {"fit": content["fit"] | {"compile": True, "channels_last": True}}) == spec.key
    assert fit_key(content | {"fit": content["fit"] | {"precision": "bf16"}}) != spec.key


def test_keys_of_fits_without_the_newer_fields_are_unchanged(tmp_path: Path) -> None:
    """downsample entered the key after version-1 keys were stored: unset, it leaves them as they were."""
    content = one_spec(write(tmp_path)).model_dump()
    assert content["downsample"] is None
    assert fit_key(content) == fit_key({k: v for k, v in content.items() if k != "downsample"})
    assert fit_key(content | {"downsample": 4}) != fit_key(content)


def test_experiment_is_copied_into_every_spec(tmp_path: Path) -> None:
    path = write(tmp_path, name="name: base\nexperiment: S3", seeds="seeds: [0, 1]")
    assert {s.experiment for s in expand(load_manifest(path))} == {"S3"}
    assert one_spec(write(tmp_path, file="b.yaml")).experiment is None


# --- networks: lambda and the normalisation it needs ---------------------------------------------


@pytest.mark.parametrize(
    ("model_norm", "lam", "norm"),
    [(None, "null", "batch"), (None, "2", "lipschitz"), ("batch", "2", "batch"), ("none", "null", "none")],
)
def test_lam_picks_the_norm_unless_it_is_set(tmp_path: Path, model_norm: str | None, lam: str, norm: str) -> None:
    width = "  width: 8" + (f"\n  norm: {model_norm}" if model_norm else "")
    spec = one_spec(write(tmp_path, width=width, lam=f"  lam: [{lam}]"))
    assert spec.network["norm"] == norm
    assert spec.net_config().norm == norm


# --- grid and zip -------------------------------------------------------------------------------------


def test_zip_groups_vary_together(tmp_path: Path) -> None:
    zipped = "zip:\n  - upsample: [bilinear, gaussian, gaussian]\n    up_sigma: [0.5, 0.5, 1.0]"
    specs = expand(load_manifest(write(tmp_path, lam="  lam: [null, 2]", spare=zipped)))
    assert len(specs) == 2 * 3  # lam axis x one zip axis of length 3
    pairs = {(s.network["upsample"], s.network["up_sigma"]) for s in specs}
    assert pairs == {("bilinear", 0.5), ("gaussian", 0.5), ("gaussian", 1.0)}


AUTHORS = """\
  width: 8
  lam: 2
  upsample: gaussian
  up_sigma: [0.1, 0.1, 0.1, 0.5, 0.5]
  input: fourier
  bound_head: true
  detach_sigma: true"""


def test_the_authors_network_options_validate_and_expand(tmp_path: Path) -> None:
    """One fit: the per-layer σ list in `model` is one value, not an axis."""
    spec = one_spec(write(tmp_path, width=AUTHORS, lam="  sn_method: [svd]"))
    assert spec.network["up_sigma"] == [0.1, 0.1, 0.1, 0.5, 0.5]
    assert (spec.network["input"], spec.network["bound_head"], spec.network["detach_sigma"]) == ("fourier", True, True)
    cfg = spec.net_config()
    assert cfg.up_sigma == (0.1, 0.1, 0.1, 0.5, 0.5) and cfg.lam == 2 and cfg.norm == "lipschitz"
    assert fit_key(FitSpec.model_validate_json(spec.model_dump_json()).model_dump()) == spec.key
    default = one_spec(write(tmp_path, file="d.yaml"))
    assert (default.network["input"], default.network["bound_head"], default.network["detach_sigma"]) == (
        "noise",
        False,
        False,
    )
    for field in ("input", "bound_head", "detach_sigma"):  # each enters the key
        value = "fourier" if field == "input" else "true"
        other = write(tmp_path, file=f"{field}.yaml", lam=f"  lam: [2]\n  {field}: [{value}]")
        assert one_spec(other).key != default.key


def test_per_layer_sigmas_in_a_grid_are_lists_of_lists(tmp_path: Path) -> None:
    """A grid axis is always a list of values; a per-layer σ is one value, so a list inside it."""
    path = write(tmp_path, lam="  upsample: [gaussian]\n  up_sigma: [[0.1, 0.1, 0.1, 0.5, 0.5], 0.5]")
    specs = expand(load_manifest(path))
    assert [s.network["up_sigma"] for s in specs] == [[0.1, 0.1, 0.1, 0.5, 0.5], 0.5]
    flat = expand(load_manifest(write(tmp_path, file="f.yaml", lam="  up_sigma: [0.1, 0.5]")))
    assert [s.network["up_sigma"] for s in flat] == [0.1, 0.5]  # a list of numbers: a sweep, as always


def test_a_sigma_list_of_the_wrong_length_is_blamed_on_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, width="  width: 8\n  up_sigma: [0.1, 0.5]")
    assert_blamed(path, "up_sigma", "model.up_sigma", "gives 2 value(s) but decoder (depth 5) has 5 upsampling layers")


def test_zip_lists_of_unequal_length_are_an_error(tmp_path: Path) -> None:
    zipped = "zip:\n  - upsample: [bilinear, gaussian]\n    up_sigma: [0.5]"
    path = write(tmp_path, spare=zipped)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert f"{path}:{line_of(path, '- upsample')}: zip[0]: zip group 0 has lists of unequal length" in str(err.value)


def test_task_parameter_lists_and_seeds_multiply(tmp_path: Path) -> None:
    path = write(tmp_path, sigma="      sigma: [15, 25, 50]", lam="  lam: [null, 1, 2]", seeds="repeats: 2")
    specs = expand(load_manifest(path))
    assert len(specs) == 3 * 3 * 2
    assert [s.seed for s in specs[:2]] == [0, 1]  # seeds vary fastest
    assert {s.fit["seed"] for s in specs} == {0, 1}


def test_duplicate_grid_points_are_one_fit(tmp_path: Path) -> None:
    path = write(tmp_path, lam="  lam: [2, 2.0]", seeds="seeds: [0, 0]")
    assert len(expand(load_manifest(path))) == 1


# --- errors: field path and line, all of them at once -------------------------------------------


BAD = {  # id: (lines to change, start of the line blamed, field path, words of the message)
    "wrong-type": ({"iterations": '  iterations: "many"'}, "iterations", "fit.iterations", "valid integer"),
    "unknown-top-level": ({"spare": "colour: red"}, "colour", "colour", "unknown field"),
    "unknown-model-field": ({"width": "  widht: 8"}, "widht", "model.widht", "unknown model field"),
    "unknown-task-param": ({"sigma": "      quality: 10"}, "quality", "tasks[0].params.quality", "no parameter"),
    "unknown-task": ({"task": "  - task: deblur"}, "- task", "tasks[0].task", "'denoise'"),
    "empty-axis": ({"lam": "  lam: []"}, "lam", "grid.lam", "empty list"),
    "seeds-and-repeats": ({"spare": "repeats: 3"}, "repeats", "repeats", "not both"),
    "bad-slug": ({"name": "name: Big Sweep"}, "name", "name", "not a slug"),
    "seed-in-fit": ({"iterations": "  seed: 3"}, "seed", "fit.seed", "seeds or repeats"),
    "config-check": ({"stop_window": "  stop_window: 0"}, "stop_window", "fit.stop_window", ">= 1"),
    "bad-axis-value": ({"lam": "  upsample: [bilinear, cubic]"}, "upsample", "grid.upsample[1]", "upsample kind"),
    "unknown-sample": ({"sample": "  - sample: [astronaut, x]"}, "- sample", "images[0].sample[1]", "scikit-image"),
    "duplicate-key": ({"spare": "model: {}"}, "model:", "model", "key given twice (again on line 18)"),
    "set-twice": ({"spare": "zip: [{lam: [1, 2]}]"}, "zip", "zip[0].lam", "already set at grid.lam"),
    "pack-zero": ({"spare": "resources: {pack: 0}"}, "resources", "resources.pack", "greater than 0"),
    "mlflow-points-negative": (
        {"spare": "mlflow: {max_metric_points: -1}"},
        "mlflow",
        "mlflow.max_metric_points",
        "greater than or equal to 0",
    ),
    # lambda is null or positive, in each place the grammar allows it (NetConfig's check, located)
    "lam-zero-in-model": ({"width": "  lam: 0", "lam": "  width: [8]"}, "lam", "model.lam", "lam must be positive"),
    "lam-negative-in-grid": ({"lam": "  lam: [2, -1]"}, "lam", "grid.lam[1]", "no bound), got -1.0"),
    "lam-nan-in-grid": ({"lam": "  lam: [null, .nan]"}, "lam", "grid.lam[1]", "lam must be positive"),
    "lam-zero-in-zip": (
        {"lam": "  upsample: [bilinear]", "spare": "zip: [{lam: [1, 0], lr: [0.01, 0.02]}]"},
        "zip",
        "zip[0].lam[1]",
        "lam must be positive",
    ),
}


def assert_blamed(path: Path, where: str, field: str, words: str) -> None:
    """Loading `path` fails, naming the line that starts with `where`, the field path and `words`."""
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert f"{path}:{line_of(path, where)}: {field}: " in str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize(("lines", "where", "field", "words"), BAD.values(), ids=BAD.keys())
def test_bad_manifest_names_field_and_line(
    tmp_path: Path, lines: dict[str, str], where: str, field: str, words: str
) -> None:
    path = write(tmp_path, **lines)
    assert_blamed(path, where, field, words)


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, width="  width: 8: 9")
    with pytest.raises(ManifestError, match=rf"{path}:{line_of(path, 'width')}: YAML syntax error"):
        load_manifest(path)


def test_every_error_is_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, name="name: Bad", width="  widht: 8", sigma="      sigma: [15, loud]", spare="colour: red")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    problems = err.value.problems
    assert [p.split(": ")[1] for p in problems] == ["name", "tasks[0].params.sigma[1]", "model.widht", "colour"]
    assert str(err.value) == "\n".join(problems)


def test_text_manifests_are_labelled() -> None:
    with pytest.raises(ManifestError, match=r"^<manifest>:1: name: "):
        load_manifest(BASE.replace("name: base", "name: NO"))


# --- data sets ----------------------------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root holding one data set of three small PNGs."""
    root = tmp_path / "data"
    (root / "pics").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.jpg"):
        Image.new("RGB", (40, 40), (90, 120, 200)).save(root / "pics" / name)
    return root


def dataset_manifest(tmp_path: Path, root: Path, images: str, file: str = "d.yaml") -> Path:
    text = BASE.replace("  - sample: astronaut\n", f"  - {images}\n") + f"data_root: {root}\n"
    return write(tmp_path, text, file=file)


@pytest.mark.parametrize(
    ("images", "names"),
    [
        ("dataset: pics", ["pics/a.png", "pics/b.png", "pics/c.jpg"]),
        ("dataset: pics\n    glob: '*.png'", ["pics/a.png", "pics/b.png"]),
        ("dataset: pics\n    files: [c.jpg, a.png]", ["pics/c.jpg", "pics/a.png"]),
    ],
    ids=["all", "glob", "files"],
)
def test_dataset_images_resolve(tmp_path: Path, data_root: Path, images: str, names: list[str]) -> None:
    specs = expand(load_manifest(dataset_manifest(tmp_path, data_root, images)))
    assert [s.image_name for s in specs] == names
    assert all(Path(s.image_uri).is_file() and Path(s.image_uri).is_absolute() for s in specs)
    assert {s.dataset for s in specs} == {"pics"}


def test_moving_the_data_keeps_the_keys(tmp_path: Path, data_root: Path) -> None:
    moved = shutil.copytree(data_root, tmp_path / "moved")
    a = keys(dataset_manifest(tmp_path, data_root, "dataset: pics", file="a.yaml"))
    b = keys(dataset_manifest(tmp_path, moved, "dataset: pics", file="b.yaml"))
    assert a == b


def test_missing_dataset_names_dataset_and_root(tmp_path: Path, data_root: Path) -> None:
    path = dataset_manifest(tmp_path, data_root, "dataset: nothere")
    with pytest.raises(ManifestError) as err:
        expand(load_manifest(path))
    assert f"{path}:{line_of(path, '- dataset')}: images[0].dataset: dataset 'nothere'" in str(err.value)
    assert str(data_root) in str(err.value)


@pytest.mark.parametrize(
    ("images", "field", "words"),
    [
        ("dataset: pics\n    files: [a.png, z.png]", "images[0].files[1]", "no file 'z.png' in dataset 'pics'"),
        ("dataset: pics\n    glob: '*.tif'", "images[0].dataset", "no files match '*.tif'"),
    ],
    ids=["file", "glob"],
)
def test_missing_files_are_errors(tmp_path: Path, data_root: Path, images: str, field: str, words: str) -> None:
    with pytest.raises(ManifestError) as err:
        expand(load_manifest(dataset_manifest(tmp_path, data_root, images)))
    assert f"{field}: {words}" in str(err.value)


def test_remote_roots_use_the_given_lister() -> None:
    """Storage stays outside the manifest module: a lister returns paths relative to the root."""
    listing = {"pics/x.png", "pics/y.png", "other/z.png"}

    def list_files(root: str, pattern: str) -> list[str]:
        folder = pattern.split("/")[0]
        return sorted(p for p in listing if p.startswith(folder + "/"))

    text = BASE.replace("  - sample: astronaut\n", "  - dataset: pics\n") + "data_root: s3://bucket/data/\n"
    specs = expand(load_manifest(text), list_files)
    assert [s.image_uri for s in specs] == ["s3://bucket/data/pics/x.png", "s3://bucket/data/pics/y.png"]


@pytest.mark.skipif(not (SHARED_DATA / "standard9").is_dir(), reason="shared data sets not on this machine")
def test_shared_datasets_via_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_DATA_ROOT", str(SHARED_DATA))
    text = BASE.replace("  - sample: astronaut\n", "  - dataset: standard9\n    files: [image_F16_512rgb.png]\n")
    (spec,) = expand(load_manifest(text))
    assert spec.image_name == "standard9/image_F16_512rgb.png"
    assert Path(spec.image_uri) == SHARED_DATA / "standard9" / "image_F16_512rgb.png"
    with pytest.raises(ManifestError, match=rf"dataset 'standard10' not found under data root {SHARED_DATA}"):
        expand(load_manifest(text.replace("standard9", "standard10")))


def test_data_root_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIP_DATA_ROOT", raising=False)
    manifest = load_manifest(BASE)
    assert manifest.data_root == "./data"
    assert manifest.storage == f"file://{os.getcwd()}/results/base"
    assert manifest.mlflow.experiment == "base" and manifest.mlflow.tracking_uri is None
    monkeypatch.setenv("DIP_DATA_ROOT", "/mnt/data")
    assert load_manifest(BASE).data_root == "/mnt/data"


# --- 1-D signals --------------------------------------------------------------------------------------

SIGNAL = """\
name: signal
images:
  - signal: {length: 256, freqs: [5, 50]}
tasks:
  - task: clean
model: {name: dip_conv_1d, width: 8, depth: 4}
fit:
  iterations: 10
  stop_window: 5
seeds: [0]
# spare
"""


def test_each_signal_is_one_input(tmp_path: Path) -> None:
    two = SIGNAL.replace("# spare", "").replace(
        "  - signal: {length: 256, freqs: [5, 50]}",
        "  - signal: {length: 256, freqs: [5, 50]}\n  - signal: {}\n  - signal: {freqs: [3], amplitudes: [0.5]}",
    )
    specs = expand(load_manifest(write(tmp_path, two, seeds="seeds: [0, 1]")))
    # the first two are the same signal (the defaults are C&M's), so they share their fits
    assert [(s.image_name, s.seed) for s in specs] == [
        ("signal:256:5+50", 0),
        ("signal:256:5+50", 1),
        ("signal:256:3:0.5", 0),
        ("signal:256:3:0.5", 1),
    ]
    assert specs[0].signal.amplitudes == [1.0, 1.0] and specs[2].signal.amplitudes == [0.5]
    assert all(s.fit["spectral"] is False and s.dataset is None and s.crop is None for s in specs)


def test_explicit_unit_amplitudes_are_the_default_signal(tmp_path: Path) -> None:
    a = keys(write(tmp_path, SIGNAL, file="a.yaml"))
    b = keys(write(tmp_path, SIGNAL.replace("freqs: [5, 50]}", "freqs: [5, 50], amplitudes: [1, 1.0]}"), file="b.yaml"))
    assert a == b


BAD_SIGNAL = {  # id: (lines to change, start of the line blamed, field path, words of the message)
    "task": (
        {"task": "  - task: denoise\n    params: {sigma: 25}"},
        "- signal",
        "images[0].signal",
        "takes task clean only; tasks[0] is denoise",
    ),
    "network": (
        {"model": "model: {name: decoder}"},
        "model",
        "model.name",
        "needs a 1-D network (dip_conv_1d, dip_linear_1d)",
    ),
    "image-on-1d-network": (
        {"signal": "  - signal: {}\n  - sample: camera"},
        "model",
        "model.name",
        "dip_conv_1d fits 1-D signals; images[1] holds images",
    ),
    "crop": ({"signal": "  - signal: {}\n    crop: 64"}, "crop", "images[0].crop", "not to a 1-D signal"),
    "nyquist": (
        {"signal": "  - signal: {length: 64, freqs: [5, 32]}"},
        "- signal",
        "images[0].signal.freqs[1]",
        "not below length/2 = 32",
    ),
    "order": ({"signal": "  - signal: {freqs: [50, 5]}"}, "- signal", "images[0].signal.freqs", "must increase"),
    "amplitudes": (
        {"signal": "  - signal: {amplitudes: [1]}"},
        "- signal",
        "images[0].signal.amplitudes",
        "one amplitude per frequency (2)",
    ),
    "spectral": ({"stop_window": "  stop_window: 5\n  spectral: true"}, "spectral", "fit.spectral", "spectral: false"),
    "two-sources": (
        {"signal": "  - signal: {}\n    sample: camera"},
        "- signal",
        "images[0]",
        "exactly one of sample, dataset, uris, signal or impulse",
    ),
}


# --- C8: layer measurements on an impulse -------------------------------------------------------------

IMPULSE = """\
name: impulse
images:
  - impulse: 64
tasks:
  - task: upsampling_response
    params: {stride: [2, 4]}
model: {name: decoder}
grid:
  upsample: [nearest, bilinear]
seeds: [0]
# spare
"""


def test_impulse_measurements_expand_per_stride_and_layer(tmp_path: Path) -> None:
    specs = expand(load_manifest(write(tmp_path, IMPULSE)))
    assert [(s.task_params["stride"], s.network["upsample"]) for s in specs] == [
        (2, "nearest"),
        (2, "bilinear"),
        (4, "nearest"),
        (4, "bilinear"),
    ]
    assert all(s.image_name == "impulse:64" and s.impulse == 64 and s.crop is None for s in specs)
    assert len({s.key for s in specs}) == 4


BAD_IMPULSE = {  # id: (lines to change, start of the line blamed, field path, words of the message)
    "task": (
        {"task": "  - task: clean", "params": "    params: {}"},
        "- impulse",
        "images[0].impulse",
        "takes task upsampling_response only; tasks[0] is clean",
    ),
    "image": ({"impulse": "  - sample: camera"}, "- task", "tasks[0].task", "images[0] is not one"),
    "crop": ({"impulse": "  - impulse: 64\n    crop: 32"}, "crop", "images[0].crop", "not to a 1-D signal"),
    "short": ({"impulse": "  - impulse: 4"}, "- impulse", "images[0].impulse", "greater than or equal to 8"),
    "stride": ({"params": "    params: {stride: 0}"}, "params", "tasks[0].params.stride", "greater than 0"),
    "per-layer-sigma": (
        {"upsample": "  upsample: [gaussian]\n  up_sigma: [[0.1, 0.1, 0.1, 0.5, 0.5]]"},
        "up_sigma",
        "grid.up_sigma[0]",
        "measures one upsampling layer: give one up_sigma",
    ),
}


BAD_ONE_D = {f"signal-{k}": (SIGNAL, *case) for k, case in BAD_SIGNAL.items()}
BAD_ONE_D |= {f"impulse-{k}": (IMPULSE, *case) for k, case in BAD_IMPULSE.items()}


@pytest.mark.parametrize(("text", "lines", "where", "field", "words"), BAD_ONE_D.values(), ids=BAD_ONE_D.keys())
def test_bad_1d_input_names_field_and_line(
    tmp_path: Path, text: str, lines: dict[str, str], where: str, field: str, words: str
) -> None:
    assert_blamed(write(tmp_path, text, **lines), where, field, words)


# --- schema -------------------------------------------------------------------------------------------


def test_json_schema_lists_the_manifest_fields() -> None:
    schema = json.loads(json.dumps(json_schema()))
    props = set(schema["properties"])
    assert {"name", "data_root", "images", "tasks", "model", "grid", "zip", "seeds", "repeats", "fit"} <= props
    assert {"storage", "storage_options", "mlflow", "resources", "experiment"} <= props
    image_set = schema["$defs"]["ImageSet"]["properties"]
    assert {"signal", "downsample", "grey"} <= set(image_set)
    assert "lam" in schema["properties"]["model"]["propertyNames"]["enum"]
    assert set(yaml.safe_load(QUICKSTART.read_text())) <= props


# --- --set overrides -------------------------------------------------------------------------------


def test_set_overrides_fields_without_touching_the_file(tmp_path: Path) -> None:
    """A resource override leaves every fit key alone; a fit setting changes them; values are YAML."""
    path = write(tmp_path)
    text = path.read_text()
    plain = load_manifest(path)
    cpu = load_manifest(path, ["resources.num_gpus=0", "resources.custom={accelerator: 1}"])
    assert (cpu.resources.num_gpus, cpu.resources.custom) == (0, {"accelerator": 1.0})
    assert {s.key for s in expand(cpu)} == {s.key for s in expand(plain)}
    longer = load_manifest(path, ["fit.iterations=20", "grid.lam=[1, 2]"])
    assert [s.fit["iterations"] for s in expand(longer)] == [20, 20]
    assert not {s.key for s in expand(longer)} & {s.key for s in expand(plain)}
    assert path.read_text() == text


@pytest.mark.parametrize(
    "override, message",
    [
        ("resources.num_gpus=-1", "resources.num_gpus: Input should be greater than or equal to 0"),
        ("fit.iterations", "--set 'fit.iterations': expected FIELD.PATH=VALUE"),
        ("name.first=x", "--set name.first: name is not a mapping (no field first)"),
        ("fit.bogus=1", "fit.bogus: unknown fit field"),
    ],
)
def test_a_bad_override_is_named_like_a_bad_file(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        load_manifest(write(tmp_path), [override])
    assert message in str(err.value), str(err.value)


def test_sweep_commands_take_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dip sweep plan M --set fit.iterations=20`: one 64² fit of 20 iterations is 64² × 20 = 81,920
    iteration·pixels; a bad value exits 2 naming the field."""
    from pipeline.cli import main as dip

    path = write(tmp_path)
    storage = f"storage={tmp_path / 'results'}"
    assert dip(["sweep", "plan", str(path), "--set", storage, "--set", "fit.iterations=20"]) == 0
    assert "work ≈ 8.19e+04 iteration·pixels" in capsys.readouterr().out
    assert dip(["sweep", "plan", str(path), "--set", "fit.iterations=0"]) == 2
    assert "fit.iterations" in capsys.readouterr().err
