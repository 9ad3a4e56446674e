"""Bad input, generated: manifests and image files that are wrong in every way hypothesis finds.

Each case must end in a clear error (one ``dip: error:`` line; an ``ImageError`` naming the
file; a fit recorded as failed with its reason) or in a valid result, never in another
exception or a hang. The number of cases tried is printed at the end of the module.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.cli import main as dip
from pipeline.images import ImageError, decode
from pipeline.manifest import load_manifest
from pipeline.storage import Store
from pipeline.sweep import expand_specs
from pipeline.worker import execute_fit

TRIED: Counter[str] = Counter()  # cases per test
ENDED: Counter[str] = Counter()  # how they ended: valid (a result) or a clear error
FUZZ = settings(
    max_examples=300,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    text = ", ".join(f"{name}: {n}" for name, n in sorted(TRIED.items()))
    ends = ", ".join(f"{name}: {n}" for name, n in sorted(ENDED.items()))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when the tests pass
        print(f"\nbad-input cases tried: {sum(TRIED.values())} ({text}); ended as {ends}")


# --- manifests -------------------------------------------------------------------------------------------

BASE = {
    "name": "fuzz",
    "images": [{"sample": ["camera"], "crop": 32}],
    "tasks": [{"task": "denoise", "params": {"sigma": [15, 25]}}],
    "model": {"name": "decoder", "width": 4, "depth": 3},
    "grid": {"lam": [None, 2]},
    "zip": [{"lr": [0.01, 0.001], "iterations": [2, 3]}],
    "seeds": [0, 1],
    "fit": {"snapshot_stride": 1},
    "storage": "memory://fuzz/results",
    "mlflow": {"enabled": False},
    "resources": {"num_cpus": 1},
}
FIELD_NAMES = sorted(
    {
        "name",
        "images",
        "tasks",
        "model",
        "grid",
        "zip",
        "seeds",
        "repeats",
        "fit",
        "storage",
        "storage_options",
        "mlflow",
        "resources",
        "data_root",
        "experiment",
        "sample",
        "dataset",
        "files",
        "glob",
        "uris",
        "signal",
        "crop",
        "grey",
        "downsample",
        "task",
        "params",
        "sigma",
        "quality",
        "factor",
        "kind",
        "ratio",
        "p",
        "lam",
        "width",
        "depth",
        "iterations",
        "lr",
        "upsample",
        "up_sigma",
        "norm",
        "num_gpus",
        "max_retries",
        "freqs",
        "length",
        "amplitudes",
    }
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["camera", "denoise", "decoder", "..", "/etc", "s3://x/..", "inf", "nan", "-1", "1e400", "skimage:camera"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, prefix + (i,))
    return out


@st.composite
def mutated_manifests(draw: st.DrawFn) -> Any:
    """The valid base manifest with a few values replaced, deleted or added anywhere inside it."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(doc)))
        if not where:
            return draw(values)
        *parent_path, last = where
        parent = doc
        for part in parent_path:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELD_NAMES))] = draw(values)
    return doc


def validate(path: Path, text: str | bytes, capsys: pytest.CaptureFixture) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    code = dip(["manifest", "validate", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    ENDED[f"manifest {'valid' if code == 0 else 'error'}"] += 1
    if code == 0:
        assert "valid" in out
    else:
        assert err.startswith("dip: error: ") and err.strip(), err
        assert "Traceback" not in err


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(doc=mutated_manifests())
def test_mutated_manifests_validate_or_fail_clearly(doc: Any, scratch: Path, capsys) -> None:
    TRIED["manifest (mutated)"] += 1
    validate(scratch / "m.yaml", yaml.safe_dump(doc, allow_unicode=True), capsys)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.sampled_from(
            [
                "",
                "---\n...",
                "a: [",
                "- 1\n- 2",
                "name: x\nname: y",
                "!!binary AAAA",
                "&a [*a]",
                "x: !!python/name:os.system",
                "{a: 1}\n---\n{b: 2}",
            ]
        ),
    )
)
def test_arbitrary_text_as_a_manifest_fails_clearly(text: str | bytes, scratch: Path, capsys) -> None:
    TRIED["manifest (text)"] += 1
    validate(scratch / "t.yaml", text, capsys)


# --- images --------------------------------------------------------------------------------------------------

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"},
    "JPEG": {"L", "RGB", "CMYK"},
    "BMP": {"1", "L", "P", "RGB"},
    "TIFF": set(MODES),
    "GIF": {"L", "P"},
}


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A real encoded image (any of the modes and formats above, 1×1 to 40×40), then perhaps
    truncated, corrupted, emptied or replaced by non-image bytes."""
    kind = draw(st.sampled_from(["image", "image", "truncated", "corrupted", "empty", "noise", "text"]))
    if kind == "empty":
        return kind, b""
    if kind == "noise":
        return kind, draw(st.binary(min_size=1, max_size=300))
    if kind == "text":
        return kind, draw(
            st.sampled_from(
                [
                    b"hello",
                    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                    b"%PDF-1.4",
                    b"\x89PNG\r\n\x1a\n",
                    b"\xff\xd8\xff",
                    b"GIF89a",
                    b"BM",
                ]
            )
        )
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(sorted(FORMATS[fmt])))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    colour = draw(st.integers(0, 255))
    img = Image.new(mode, (width, height), colour if mode not in ("RGB", "RGBA", "CMYK", "LA") else None)
    if mode in ("RGB", "RGBA", "CMYK", "LA"):
        img = Image.frombytes(
            mode,
            (width, height),
            draw(st.binary(min_size=len(mode) * width * height, max_size=len(mode) * width * height)),
        )
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    elif kind == "corrupted":
        positions = draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8))
        corrupted = bytearray(data)
        for p in positions:
            corrupted[p] ^= draw(st.integers(1, 255))
        data = bytes(corrupted)
    return f"{kind} {fmt} {mode} {width}x{height}", data


@FUZZ
@given(case=image_files())
def test_image_loader_returns_a_valid_image_or_a_clear_error(case: tuple[str, bytes]) -> None:
    label, data = case
    TRIED["image (loader)"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # alpha dropped; PIL's notes on corrupt TIFF tags
            image = decode(data, "fuzz.img")
    except ImageError as err:
        assert str(err).startswith("fuzz.img")
        ENDED["image error"] += 1
        return
    ENDED["image valid"] += 1
    assert image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[1] >= 1 and image.shape[2] >= 1
    assert image.dtype.is_floating_point and bool(((image >= 0) & (image <= 1)).all()), label


@pytest.fixture(scope="module")
def fit_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(str(tmp_path_factory.mktemp("fits") / "results"))


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@settings(FUZZ, max_examples=30, deadline=30_000)  # the first fit pays torch's warm-up
@given(case=image_files())
@example(case=("image PNG RGB 40x40", png(40, 40)))  # so every run reaches a done fit, too
@example(case=("image PNG RGB 12x40", png(12, 40)))  # one side under the crop
def test_a_tiny_fit_on_any_file_is_done_or_failed_with_its_reason(
    case: tuple[str, bytes], scratch: Path, fit_store: Store
) -> None:
    """The body of every sweep worker, on the fuzzed file: it records the fit, never raises."""
    label, data = case
    TRIED["image (fit)"] += 1
    image = scratch / f"img-{TRIED['image (fit)']}.bin"
    image.write_bytes(data)
    manifest = load_manifest(
        yaml.safe_dump(
            BASE
            | {
                "images": [{"uris": [str(image)], "crop": 16}],
                "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
                "grid": {},
                "zip": [],
                "seeds": [0],
                "fit": {"iterations": 2, "stop_window": 1, "snapshot_stride": 1},
                "storage": fit_store.uri,
            }
        )
    )
    [spec] = expand_specs(manifest)
    record = execute_fit(spec, fit_store)
    done, failed = fit_store.is_done(spec.key), spec.key in fit_store.failed()
    ENDED[f"fit {record['status']}"] += 1
    if record["status"] == "done":
        assert done and not failed
        assert math.isfinite(fit_store.summary(spec.key)["final_psnr"]), label
    else:
        assert record["status"] == "failed" and failed and not done
        assert str(image) in record["reason"] or "too small" in record["reason"], (label, record["reason"])
