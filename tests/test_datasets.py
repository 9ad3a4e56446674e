"""Fit inputs: the known data sets and their checksums, per-data-set preprocessing, 1-D signals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import fsspec
import pytest

from pipeline import datasets
from pipeline.datasets import DatasetError, verify
from pipeline.manifest import ManifestError, expand, load_manifest
from pipeline.storage import Store
from pipeline.worker import execute_fit, load_spec_image

DATA_ROOT = Path(os.environ.get("DIP_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
needs_data = pytest.mark.skipif(not (DATA_ROOT / "SHA256SUMS").is_file(), reason=f"no data sets at {DATA_ROOT}")

ONE_FIT = """\
name: inputs
images:
  - {images}
tasks: [{{task: clean}}]
model: {{name: decoder, width: 4}}
fit: {{iterations: 1}}
data_root: {root}
"""


def manifest(tmp_path: Path, images: str, root: Path | str = DATA_ROOT) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(ONE_FIT.format(images=images, root=root))
    return path


@pytest.fixture
def triangle_copy(tmp_path: Path) -> Path:
    """A data root holding a private copy of the (small) triangle data set."""
    root = tmp_path / "data"
    shutil.copytree(DATA_ROOT / "triangle", root / "triangle")
    return root


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the registry ------------------------------------------------------------------------------------


@needs_data
def test_registry_matches_the_shared_checksums() -> None:
    listed: dict[str, dict[str, str]] = {}
    for line in (DATA_ROOT / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        name, file = path.removeprefix("./").split("/", 1)
        listed.setdefault(name, {})[file] = digest
    assert {name: d.files for name, d in datasets.registry().items()} == listed
    assert datasets.parse_sha256sums((DATA_ROOT / "SHA256SUMS").read_text()) == json.loads(
        datasets.CHECKSUMS.read_text()
    ), "datasets.json is regenerated from SHA256SUMS unchanged"
    assert datasets.CHECKSUMS.stat().st_size < 32_000


@needs_data
def test_every_known_data_set_verifies() -> None:
    for name, dataset in datasets.registry().items():
        assert all((DATA_ROOT / name / f).is_file() for f in dataset.files)
        verify(str(DATA_ROOT), name)


def test_registry_knows_how_the_papers_read_each_data_set() -> None:
    known = datasets.registry()
    assert set(known) == {
        "standard9",
        "cbsd68",
        "classic5",
        "live1",
        "heide11",
        "set5",
        "set14",
        "triangle",
        "enhancement",
        "inpainting-region",
    }
    assert [n for n, d in known.items() if d.grey] == ["live1"]
    assert {n for n, d in known.items() if d.colour == "grey"} == {"classic5", "heide11", "triangle"}
    assert all(d.source for d in known.values())


# --- verification ------------------------------------------------------------------------------------


@needs_data
def test_a_changed_byte_fails_naming_file_and_root(triangle_copy: Path) -> None:
    flip_a_byte(triangle_copy / "triangle" / "triangle-0.5.png")
    with pytest.raises(DatasetError) as err:
        verify(str(triangle_copy), "triangle")
    assert [p.file for p in err.value.problems] == ["triangle-0.5.png"]
    assert str(err.value).startswith(f"triangle/triangle-0.5.png: checksum mismatch under {triangle_copy} (expected ")


@needs_data
def test_a_missing_file_fails_naming_it(triangle_copy: Path) -> None:
    (triangle_copy / "triangle" / "triangle-0.3.png").unlink()
    with pytest.raises(DatasetError, match=rf"^triangle/triangle-0.3.png: missing under {triangle_copy}$"):
        verify(str(triangle_copy), "triangle")
    verify(str(triangle_copy), "triangle", ["triangle-0.2.png"])  # the files a manifest names are enough


@needs_data
def test_expand_reports_checksum_problems_at_the_image_set(tmp_path: Path, triangle_copy: Path) -> None:
    flip_a_byte(triangle_copy / "triangle" / "triangle-0.5.png")
    whole = manifest(tmp_path, "dataset: triangle", triangle_copy)
    with pytest.raises(ManifestError, match=rf"{whole}:3: images\[0\].dataset: triangle/triangle-0.5.png: checksum"):
        expand(load_manifest(whole))
    named = manifest(tmp_path, "{dataset: triangle, files: [triangle-0.2.png, triangle-0.5.png]}", triangle_copy)
    with pytest.raises(ManifestError, match=r"images\[0\].files\[1\]: triangle/triangle-0.5.png: checksum"):
        expand(load_manifest(named))
    intact = manifest(tmp_path, "{dataset: triangle, files: [triangle-0.2.png]}", triangle_copy)
    assert [s.image_name for s in expand(load_manifest(intact))] == ["triangle/triangle-0.2.png"]


@needs_data
def test_a_foreign_file_in_a_known_data_set_is_an_error(tmp_path: Path, triangle_copy: Path) -> None:
    shutil.copy(triangle_copy / "triangle" / "triangle-0.2.png", triangle_copy / "triangle" / "extra.png")
    with pytest.raises(ManifestError, match=r"triangle/extra.png: not a file of data set triangle"):
        expand(load_manifest(manifest(tmp_path, "dataset: triangle", triangle_copy)))


@needs_data
def test_expand_takes_a_verify_hook(tmp_path: Path, triangle_copy: Path) -> None:
    flip_a_byte(triangle_copy / "triangle" / "triangle-0.5.png")
    calls: list[tuple[str, str, list[str] | None]] = []
    specs = expand(
        load_manifest(manifest(tmp_path, "dataset: triangle", triangle_copy)),
        verify=lambda root, name, files: calls.append((root, name, files)),
    )
    assert len(specs) == 9
    assert calls[0] == (str(triangle_copy), "triangle", None)  # a glob needs the whole data set intact


def test_unknown_data_set_folders_are_used_unchecked(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "data" / "mine").mkdir(parents=True)
    Image.new("L", (40, 40), 128).save(tmp_path / "data" / "mine" / "a.png")
    verify(str(tmp_path / "data"), "mine")
    (spec,) = expand(load_manifest(manifest(tmp_path, "dataset: mine", tmp_path / "data")))
    assert spec.image_name == "mine/a.png"


@needs_data
def test_each_file_is_checked_once_per_process(triangle_copy: Path) -> None:
    verify(str(triangle_copy), "triangle")
    flip_a_byte(triangle_copy / "triangle" / "triangle-0.5.png")
    verify(str(triangle_copy), "triangle")  # already verified under this root: not read again


@needs_data
def test_remote_roots_are_verified_through_fsspec(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    root = f"memory://verify-{tmp_path.name}"
    for path in sorted((DATA_ROOT / "triangle").iterdir()):
        if path.name != "triangle-1.0.png":
            fs.pipe_file(f"{root}/triangle/{path.name}", path.read_bytes())
    verify(root, "triangle", ["triangle-0.2.png", "triangle-0.9.png"])
    with pytest.raises(DatasetError, match=rf"^triangle/triangle-1.0.png: missing under {root}$"):
        verify(root, "triangle")


def test_sha256sums_lines_are_parsed_strictly() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert datasets.parse_sha256sums(f"{digest}  ./a/x.png\n{digest} *b/y/z.png\n") == {
        "a": {"x.png": digest},
        "b": {"y/z.png": digest},
    }
    with pytest.raises(ValueError, match="line 1: expected"):
        datasets.parse_sha256sums(f"{digest}  top-level.png\n")


# --- preprocessing: downsampling and luma --------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(("grey", "shape"), [("false", (3, 128, 128)), ("true", (1, 128, 128))])
def test_downsampling_by_four_then_luma(tmp_path: Path, grey: str, shape: tuple[int, ...]) -> None:
    images = f"{{dataset: standard9, files: [image_F16_512rgb.png], downsample: 4, grey: {grey}}}"
    (spec,) = expand(load_manifest(manifest(tmp_path, images)))
    image = load_spec_image(spec)
    assert tuple(image.shape) == shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    full = load_spec_image(spec.model_copy(update={"downsample": None, "grey": False}))
    assert abs(float(image.mean()) - float(full.mean())) < 0.02  # a low-pass resize keeps the mean


@needs_data
def test_live1_is_fitted_on_its_luma_by_default(tmp_path: Path) -> None:
    def grey(images: str) -> bool:
        (spec,) = expand(load_manifest(manifest(tmp_path, images)))
        return spec.grey

    assert grey("{dataset: live1, files: [parrots.bmp]}")
    assert not grey("{dataset: live1, files: [parrots.bmp], grey: false}")
    assert not grey("{dataset: standard9, files: [image_F16_512rgb.png]}")


# --- 1-D signals -----------------------------------------------------------------------------------------


def test_a_signal_fit_records_amplitude_errors_and_convergence(tmp_path: Path) -> None:
    path = tmp_path / "c4.yaml"
    path.write_text("""\
name: c4-tiny
experiment: C4
images:
  - signal: {length: 256, freqs: [5, 50]}
tasks: [{task: clean}]
model: {name: dip_linear_1d, width: 32, depth: 3}
fit: {iterations: 50, lr: 0.003, metric_stride: 5, stop_window: 10}
""")
    (spec,) = expand(load_manifest(path))
    assert spec.image_name == "signal:256:5+50" and spec.fit["spectral"] is False
    store = Store(str(tmp_path / "results"))
    record = execute_fit(spec, store)
    assert record["status"] == "done", record.get("reason")

    metrics = store.read_metrics(spec.key).to_pydict()
    assert {"se_1", "se_2"} <= set(metrics) and not {"fbc_1", "ratio"} & set(metrics)
    summary = store.summary(spec.key)
    assert summary["experiment"] == "C4" and summary["image"] == "signal:256:5+50"
    for k in (1, 2):  # the first logged iteration (not row) with SE(k) <= 0.01
        expected = next(i for i, se in zip(metrics["iteration"], metrics[f"se_{k}"], strict=True) if se <= 0.01)
        assert summary[f"converged_k{k}"] == expected
        assert expected % 5 == 0 and expected > 0
