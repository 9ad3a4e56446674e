"""Security promises: no unpickling or unsafe YAML of user files, guarded image decoding,
manifests that cannot reach outside their roots or write outside their storage prefix, and a
local Ray that listens on loopback only."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import images
from pipeline.images import ImageError, decode, load_image, read_limited
from pipeline.manifest import FitSpec, ManifestError, load_manifest
from pipeline.storage import Store

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("dipmodel", "pipeline", "bench", "devservices") for p in (ROOT / folder).rglob("*.py")
)


# --- no pickle, no unsafe YAML ----------------------------------------------------------------------


def calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call, e.g. ('np.load', …)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            out.append((".".join(reversed(parts)), node))
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_never_unpickles_or_loads_yaml_unsafely(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}
    for name, node in calls(tree):
        keywords = {k.arg: k.value for k in node.keywords}
        if name in {"np.load", "numpy.load"}:
            flag = keywords.get("allow_pickle")
            assert isinstance(flag, ast.Constant) and flag.value is False, f"{path.name}:{node.lineno}: {name}"
        if name == "torch.load":
            flag = keywords.get("weights_only")
            assert isinstance(flag, ast.Constant) and flag.value is True, f"{path.name}:{node.lineno}: torch.load"
        assert name not in {
            "yaml.load",
            "yaml.load_all",
            "yaml.unsafe_load",
            "yaml.full_load",
            "pd.read_pickle",
            "yaml.unsafe_load_all",
            "yaml.full_load_all",
        }, f"{path.name}:{node.lineno}: {name}"
        if name in {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"}:
            pytest.fail(f"{path.name}:{node.lineno}: {name}")


class _Trap:
    """Unpickling this creates a file: proof that a loader ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_trajectory_holding_a_pickle_is_refused_not_run(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "r"))
    key = "0123456789abcdef"
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Trap(marker)
    buf = io.BytesIO()
    np.savez(buf, snapshots=evil, allow_pickle=True)
    (tmp_path / "r" / "fits" / key).mkdir(parents=True)
    (tmp_path / "r" / "fits" / key / "trajectory.npz").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        store.read_trajectory(key)
    assert not marker.exists()
    # the trap is real: a pickle-enabled load does run it
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()


def test_a_manifest_with_python_tags_is_an_error_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"name: x\nimages: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ManifestError, match="<manifest>:2"):
        load_manifest(text)
    assert not marker.exists()


# --- image guards ------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height, with a valid CRC and a tiny IDAT: decoding it would
    need width × height pixels of memory."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_header_only(width: int, height: int) -> bytes:
    """A JPEG start with an SOF0 frame header claiming width × height (then nothing)."""
    sof = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


@pytest.mark.parametrize(
    "data, side",
    [
        (png_header_only(100_000, 100_000), "100000x100000"),  # 10 Gpx: PIL's own bomb check refuses it
        (png_header_only(9_000, 8_000), "9000x8000"),  # 72 Mpx: below PIL's threshold, above ours
        (jpeg_header_only(65_000, 65_000), "65000x65000"),
    ],
)
def test_huge_images_are_refused_before_decoding(data: bytes, side: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        decode(data, "bomb.img")
    assert "bomb.img" in str(err.value)
    assert side in str(err.value) or "decompression bomb" in str(err.value)
    assert time.perf_counter() - start < 1.0  # refused from the header, nothing decoded


def test_an_image_just_below_the_pixel_limit_header_is_not_refused_as_huge(monkeypatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)
    with pytest.raises(ImageError, match="not a readable image"):  # the header passes; the data is truncated
        decode(png_header_only(64, 64), "ok.png")
    with pytest.raises(ImageError, match="exceeds the 4096 pixel limit"):
        decode(png_header_only(65, 64), "big.png")


def test_oversized_files_are_refused_without_reading_them_whole(tmp_path: Path, monkeypatch) -> None:
    assert read_limited(io.BytesIO(b"x" * 1000), "f", limit=1000) == b"x" * 1000
    with pytest.raises(ImageError, match="f: file larger than"):
        read_limited(io.BytesIO(b"x" * 1001), "f", limit=1000)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 2**20)
    big = tmp_path / "big.png"
    with big.open("wb") as fh:
        fh.truncate(2**20 + 1)  # sparse: nothing is written
    with pytest.raises(ImageError, match=rf"{big}: file larger than the 1 MiB image limit"):
        load_image(big)


# --- manifest paths stay under their roots -------------------------------------------------------------


def manifest_text(**changes) -> str:
    doc = {
        "name": "paths",
        "images": [{"sample": "camera", "crop": 32}],
        "tasks": [{"task": "denoise", "params": {"sigma": 25}}],
        "model": {"name": "decoder", "width": 4, "depth": 3},
        "storage": "s3://lab/results/paths",
    }
    for key, value in changes.items():
        doc[key] = value
    return yaml.safe_dump(doc)


@pytest.mark.parametrize(
    "change, where",
    [
        ({"images": [{"dataset": "../etc"}]}, "images[0].dataset"),
        ({"images": [{"dataset": "a/b"}]}, "images[0].dataset"),
        ({"images": [{"dataset": "set5", "files": ["ok.png", "../../secret.png"]}]}, "images[0].files[1]"),
        ({"images": [{"dataset": "set5", "files": ["/etc/passwd"]}]}, "images[0].files[0]"),
        ({"images": [{"dataset": "set5", "glob": "../*"}]}, "images[0].glob"),
        ({"storage": "s3://lab/results/../other"}, "storage"),
        ({"storage": "/tmp/results/../../etc"}, "storage"),
        ({"data_root": "s3://lab/data/.."}, "data_root"),
        ({"images": [{"uris": ["s3://lab/a.png", "s3://lab/../b.png"]}]}, "images[0].uris[1]"),
    ],
)
def test_manifest_paths_that_escape_are_named_errors(change: dict, where: str) -> None:
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest_text(**change))
    assert f": {where}: " in str(err.value)


def test_allowed_roots_confine_storage_data_and_image_uris(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIP_ALLOWED_ROOTS", f"s3://lab/ {tmp_path}")
    load_manifest(manifest_text(data_root=str(tmp_path / "data")))  # all inside: valid
    load_manifest(manifest_text(storage="s3://lab", data_root=str(tmp_path)))  # the roots themselves
    cases = {
        "storage": manifest_text(storage="s3://lab-other/results"),  # a prefix of the name is not inside
        "data_root": manifest_text(data_root="/srv/data"),
        "images[0].uris[0]": manifest_text(images=[{"uris": [str(tmp_path.parent / "x.png")]}]),
    }
    for where, text in cases.items():
        with pytest.raises(ManifestError, match=rf": {re.escape(where)}: .* is outside the allowed roots"):
            load_manifest(text)


def test_stores_and_fit_keys_cannot_traverse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'..'"):
        Store("s3://bucket/results/../elsewhere")
    store = Store(str(tmp_path / "r"))
    for key in ("../../x", "..", "/abs", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="not a valid key"):
            store.write_failure(key, {}, "r", "E", 1)
    assert not any(tmp_path.rglob("*.json"))
    spec = {
        "sweep": "s",
        "image_uri": "x",
        "image_name": "x",
        "dataset": None,
        "crop": None,
        "grey": False,
        "task": "clean",
        "task_params": {},
        "network": {},
        "fit": {},
        "seed": 0,
    }
    FitSpec(**spec, key="0123456789abcdef")
    with pytest.raises(ValueError, match="key"):
        FitSpec(**spec, key="../../etc/passwd")


# --- loopback only ----------------------------------------------------------------------------------------

LISTENERS = r"""
import json, os, re
from pipeline.sweep import connect  # before ray is imported, as in `dip sweep run`

def children():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, set()).add(int(d))
    return kids

connect(None)
import ray
ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])
kids, todo, tree = children(), [os.getpid()], set()
todo += [p.process.pid for ps in ray._private.worker._global_node.all_processes.values() for p in ps]
while todo:
    pid = todo.pop()
    if pid not in tree:
        tree.add(pid)
        todo += kids.get(pid, ())
inodes = {}
for pid in tree:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            if m:
                inodes[m.group(1)] = pid
    except OSError:
        pass
found = []
for table in ("tcp", "tcp6"):
    for line in open(f"/proc/net/{table}").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            found.append([table, f[1].split(":")[0], open(f"/proc/{inodes[f[9]]}/comm").read().strip()])
print(json.dumps({"processes": len(tree), "listening": found}))
"""


HOST_NAMES = {"ip_address", "host", "dashboard_host"}  # keywords and dict keys that choose where a server binds
HOST_FLAGS = {"--host", "-H", "--node-ip-address"}  # command-line flags that do (mlflow server, moto.server, ray start)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_servers_started_here_bind_loopback(path: Path) -> None:
    """Wherever the code names a server's host (moto, mlflow, Ray's dashboard; as a keyword, a dict key
    or a command-line flag), the host is 127.0.0.1: the services of the tests and benchmarks stay
    on the machine."""
    tree = ast.parse(path.read_text())
    named: list[tuple[str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in HOST_NAMES:
            named.append((node.arg, node.value))
        elif isinstance(node, ast.Dict):
            named += [
                (k.value, v)
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and k.value in HOST_NAMES
            ]
        elif isinstance(node, ast.List):
            named += [
                (f.value, v)
                for f, v in zip(node.elts, node.elts[1:], strict=False)
                if isinstance(f, ast.Constant) and f.value in HOST_FLAGS
            ]
    for name, value in named:
        host = value.value if isinstance(value, ast.Constant) else ast.unparse(value)
        assert host == "127.0.0.1", f"{path.name}:{value.lineno}: {name} = {host!r}, not 127.0.0.1"


def test_a_local_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"}}
    out = subprocess.run(
        [sys.executable, "-c", LISTENERS], capture_output=True, text=True, env=env, cwd=ROOT, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["listening"], "found no listening socket: the check is blind"
    # /proc/net order: 127.0.0.1; ::1 and ::ffff:127.0.0.1 (IPv4-mapped)
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    outside = [(comm, addr) for _, addr, comm in report["listening"] if addr not in loopback]
    assert not outside, f"listening beyond loopback: {outside}"
