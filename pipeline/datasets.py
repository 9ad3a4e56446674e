"""The papers' data sets by name: their files, SHA-256 checksums, colour convention and source.

A manifest names a data set (``dataset: live1``) and the pipeline finds it under a data root,
a local folder or any fsspec URI. For the data sets of the two papers the registry below
knows every file and its checksum, so a truncated download, a re-encoded image or another
release of a benchmark fails before a sweep starts, naming the file, instead of quietly
moving a paper table by a few tenths of a dB. It also carries the preprocessing the papers
apply per data set (LIVE1 is evaluated on the Y channel of YCbCr), so manifests inherit it.
A name outside the registry is a plain folder: listed and used, never checked.

The checksums live in ``datasets.json`` beside this module, generated from the
``SHA256SUMS`` of a verified copy (``sha256sum`` output, paths ``./<data set>/<file>``)::

    python -m pipeline.datasets ../shared/datasets/SHA256SUMS
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from pipeline.locations import is_remote, local_path
from pipeline.messages import DipError

CHECKSUMS = Path(__file__).with_name("datasets.json")
_CHUNK = 1 << 20
_SUMS_LINE = re.compile(r"^([0-9a-f]{64}) [ *](?:\./)?([^/]+)/(.+)$")


@dataclass(frozen=True)
class Dataset:
    """A known data set: what it holds, how the papers read it, and where to get it."""

    name: str
    colour: Literal["rgb", "grey"]  # how the images are stored
    grey: bool  # default of a manifest's `grey`: fit the Y channel (the papers' convention)
    source: str  # the publication it comes from
    urls: tuple[str, ...]  # where public copies can be downloaded, where there are stable ones
    files: dict[str, str]  # file name inside the folder -> SHA-256 hex digest


class DatasetProblem(NamedTuple):
    file: str  # name inside the data set's folder
    message: str  # "<data set>/<file>: <what is wrong> under <root> ..."


class DatasetError(DipError, ValueError):
    """A known data set that is incomplete or altered under a data root; one line per file."""

    def __init__(self, problems: list[DatasetProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.message for p in problems))


# name: (colour, fit the Y channel by default, source, public copies)
_ABOUT: dict[str, tuple[Literal["rgb", "grey"], bool, str, tuple[str, ...]]] = {
    "standard9": (
        "rgb",
        False,
        "the standard test images of Dabov et al. 2007 (CBM3D) and the Kodak set",
        ("https://webpages.tuni.fi/foi/GCF-BM3D/", "http://r0k.us/graphics/kodak/"),
    ),
    "cbsd68": (
        "rgb",
        False,
        "CBSD68: the 68 BSDS300 test images in colour (Roth & Black 2009, Martin et al. 2001)",
        ("https://github.com/clausmichele/CBSD68-dataset",),
    ),
    "classic5": ("grey", False, "Classic5 (Foi et al. 2006, pointwise SA-DCT deblocking)", ()),
    "live1": (
        "rgb",
        True,
        "LIVE1 (Sheikh et al. 2006); JPEG results are on the Y channel of YCbCr",
        ("https://live.ece.utexas.edu/research/quality/subjective.htm",),
    ),
    "heide11": ("grey", False, "the 11 test images of Heide et al. 2015 (convolutional sparse coding)", ()),
    "set5": ("rgb", False, "Set5 (Bevilacqua et al. 2012)", ("https://github.com/jbhuang0604/SelfExSR",)),
    "set14": ("rgb", False, "Set14 (Zeyde et al. 2010)", ("https://github.com/jbhuang0604/SelfExSR",)),
    "triangle": ("grey", False, "released with Chakrabarty & Maji 2019", ("https://github.com/PCJohn/dip-spectral",)),
    "enhancement": ("rgb", False, "released with Shi et al. 2022 (tulips, detail enhancement)", ()),
    "inpainting-region": (
        "rgb",
        False,
        "released with Ulyanov et al. 2018 (library, vase and their masks)",
        ("https://github.com/DmitryUlyanov/deep-image-prior",),
    ),
}


def parse_sha256sums(text: str) -> dict[str, dict[str, str]]:
    """{data set: {file: digest}} from ``sha256sum`` output whose paths are ``./<data set>/<file>``."""
    found: dict[str, dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _SUMS_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number}: expected '<sha256>  ./<data set>/<file>', got {line!r}")
        digest, name, file = match.groups()
        found.setdefault(name, {})[file] = digest
    return {name: dict(sorted(files.items())) for name, files in sorted(found.items())}


def write_checksums(sums: Path, out: Path = CHECKSUMS) -> dict[str, dict[str, str]]:
    """Regenerate the checksum file from a SHA256SUMS; every data set in it needs an entry in `_ABOUT`."""
    checksums = parse_sha256sums(sums.read_text())
    if unknown := sorted(set(checksums) - set(_ABOUT)):
        raise ValueError(f"{sums}: no colour/source entry in pipeline/datasets.py for {', '.join(unknown)}")
    out.write_text(json.dumps(checksums, indent=1) + "\n")
    return checksums


@functools.cache
def registry() -> dict[str, Dataset]:
    """The known data sets by name (read once from the checksum file)."""
    checksums = json.loads(CHECKSUMS.read_text())
    if set(checksums) != set(_ABOUT):
        raise RuntimeError(
            f"{CHECKSUMS} and pipeline/datasets.py list different data sets; regenerate the "
            "checksums (python -m pipeline.datasets SHA256SUMS)"
        )
    return {name: Dataset(name, *about, files=checksums[name]) for name, about in _ABOUT.items()}


def local_root(data_root: str) -> Path | None:
    """The local folder of a data root (a plain path or file://), or None for a remote URI."""
    return None if is_remote(data_root) else Path(local_path(data_root)).expanduser()


def _opener(data_root: str, storage_options: dict[str, Any] | None) -> Callable[[str], IO[bytes]]:
    """Open a path relative to the data root: plain files locally, fsspec for remote roots."""
    root = local_root(data_root)
    if root is not None:
        return lambda relative: open(root / relative, "rb")
    import fsspec.core  # here: local roots need no fsspec

    fs, base = fsspec.core.url_to_fs(data_root, **(storage_options or {}))
    return lambda relative: fs.open(f"{base.rstrip('/')}/{relative}", "rb")


def _sha256(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


# (data root, data set) -> files whose checksum matched in this process
_verified: dict[tuple[str, str], set[str]] = {}


def verify(
    data_root: str, name: str, files: list[str] | None = None, storage_options: dict[str, Any] | None = None
) -> None:
    """Check that a known data set's files (all of them, or `files`) are under `data_root`, unaltered.

    Each file is hashed once per process and root; a later call re-reads only files not yet
    verified (a failed file is read again, so a repaired copy is accepted). Names outside the
    registry pass unchecked. Raises DatasetError naming every missing, foreign or altered file
    and the root.
    """
    dataset = registry().get(name)
    if dataset is None:
        return
    done = _verified.setdefault((data_root, name), set())
    todo = [f for f in dict.fromkeys(dataset.files if files is None else files) if f not in done]
    if not todo:
        return
    open_file = _opener(data_root, storage_options)
    problems: list[DatasetProblem] = []
    for file in todo:
        where = f"{name}/{file}"
        expected = dataset.files.get(file)
        if expected is None:
            problems.append(
                DatasetProblem(
                    file,
                    f"{where}: not a file of data set {name} (which has "
                    f"{len(dataset.files)}: see pipeline/datasets.json)",
                )
            )
            continue
        try:
            with open_file(where) as fh:
                got = _sha256(fh)
        except FileNotFoundError:
            problems.append(DatasetProblem(file, f"{where}: missing under {data_root}"))
            continue
        except OSError as err:
            problems.append(DatasetProblem(file, f"{where}: cannot be read under {data_root} ({err})"))
            continue
        if got != expected:
            problems.append(
                DatasetProblem(
                    file, f"{where}: checksum mismatch under {data_root} (expected {expected[:16]}…, got {got[:16]}…)"
                )
            )
        else:
            done.add(file)
    if problems:
        raise DatasetError(problems)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.datasets PATH/TO/SHA256SUMS   (rewrites pipeline/datasets.json)")
    written = write_checksums(Path(sys.argv[1]))
    print(f"{CHECKSUMS}: {sum(map(len, written.values()))} files in {len(written)} data sets")
