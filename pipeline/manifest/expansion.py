"""A validated manifest expanded into fits: its images looked up (and the papers' data sets
checked against their checksums), then images x tasks x task parameters x grid points x seeds.

Data sets are looked up only here, through a `list_files` callable, so storage (fsspec) stays
outside the manifest package; `verify` (default `pipeline.datasets.verify`) checks checksums.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from functools import partial
from glob import escape as glob_escape

from pipeline import datasets
from pipeline.images import SAMPLE_PREFIX
from pipeline.manifest.errors import Loc, Problem
from pipeline.manifest.keys import fit_key
from pipeline.manifest.schema import FitSpec, ImageSet, Manifest

ListFiles = Callable[[str, str], list[str]]
VerifyDataset = Callable[[str, str, list[str] | None], None]  # (data_root, data set, files or all)


def list_local_files(data_root: str, pattern: str) -> list[str]:
    """Files under a local data root matching `pattern` ("dataset/glob"), relative to the root.

    This is the contract of `expand`'s `list_files`: '/'-separated paths relative to the
    root, and FileNotFoundError when the pattern's top folder (the data set) does not exist.
    """
    root = datasets.local_root(data_root)
    if root is None:
        raise FileNotFoundError(f"{data_root} is not a local folder; pass expand() a list_files for it")
    folder = root / pattern.split("/", 1)[0]
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())


def _image_uri(data_root: str, relative: str) -> str:
    root = datasets.local_root(data_root)
    return os.path.abspath(root / relative) if root is not None else f"{data_root.rstrip('/')}/{relative}"


def _resolve_images(
    manifest: Manifest, index: int, images: ImageSet, list_files: ListFiles, verify: VerifyDataset
) -> tuple[list[tuple[str, str]], list[Problem]]:
    """(image_name, image_uri) pairs of one image set, or the problems found looking them up."""
    if images.sample is not None:
        return [(f"sample:{n}", f"{SAMPLE_PREFIX}{n}") for n in images.sample], []
    if images.uris is not None:
        return [(u, u) for u in images.uris], []
    if images.signal is not None:
        return [(images.signal.name(), images.signal.name())], []
    if images.impulse is not None:
        return [(f"impulse:{images.impulse}", f"impulse:{images.impulse}")], []
    root, dataset = manifest.data_root or "", images.dataset or ""
    loc: Loc = ("images", index, "dataset")
    try:
        if images.files is not None:
            found = [list_files(root, f"{dataset}/{glob_escape(f)}") for f in images.files]
            missing: list[Problem] = [
                (("images", index, "files", j), f"no file {f!r} in dataset {dataset!r} under data root {root}")
                for j, (f, hits) in enumerate(zip(images.files, found, strict=True))
                if not hits
            ]
            relative = [r for hits in found for r in hits]
        else:
            pattern = images.glob or "*"
            relative = list_files(root, f"{dataset}/{pattern}")
            nothing = f"no files match {pattern!r} in dataset {dataset!r} under data root {root}"
            missing = [] if relative else [(loc, nothing)]
    except OSError as err:
        return [], [(loc, f"dataset {dataset!r} not found under data root {root} ({err})")]
    if not missing:
        missing = _verification_problems(root, index, images, [r.split("/", 1)[1] for r in relative], verify)
    return [(r, _image_uri(root, r)) for r in relative], missing


def _verification_problems(
    root: str, index: int, images: ImageSet, names: list[str], verify: VerifyDataset
) -> list[Problem]:
    """Checksum problems of the files an image set uses; a glob needs the whole data set intact."""
    dataset = images.dataset or ""
    try:
        if images.files is None:
            verify(root, dataset, None)
        verify(root, dataset, names)
    except datasets.DatasetError as err:
        files = images.files or []
        return [
            (
                ("images", index, "files", files.index(p.file)) if p.file in files else ("images", index, "dataset"),
                p.message,
            )
            for p in err.problems
        ]
    return []


def expand(
    manifest: Manifest, list_files: ListFiles | None = None, verify: VerifyDataset | None = None
) -> list[FitSpec]:
    """Every fit of the manifest, once each (deduplicated by key), in a deterministic order.

    Order: image sets, their images, tasks, task-parameter combinations, grid points
    (grid axes in written order, then zip groups), seeds. `list_files(data_root, pattern)`
    finds data-set files (see `list_local_files`, the default, for its contract).
    `verify(data_root, dataset, files)` checks the files of a data set (None: all of them) and
    raises `datasets.DatasetError`; the default, `datasets.verify`, checks the known data sets'
    checksums through fsspec with the manifest's storage options.
    """
    list_files = list_files or list_local_files
    verify = verify or partial(datasets.verify, storage_options=manifest.storage_options)
    images: list[tuple[ImageSet, str, str]] = []
    problems: list[Problem] = []
    for i, image_set in enumerate(manifest.images):
        found, bad = _resolve_images(manifest, i, image_set, list_files, verify)
        images += [(image_set, name, uri) for name, uri in found]
        problems += bad
    if problems:
        raise manifest.error(problems)
    configs = manifest.configurations()
    multiple = manifest.side_multiple()
    specs: dict[str, FitSpec] = {}
    for (image_set, name, uri), task in itertools.product(images, manifest.tasks):
        signal = image_set.signal.resolved() if image_set.signal is not None else None
        for params, config, seed in itertools.product(task.combinations(), configs, manifest.seed_list()):
            method, network, fit = config.method, config.network, config.fit
            classical = method != "dip"  # no network, no fit loop: its settings are its "fit"
            network = {} if classical else network
            one_d = signal is not None or image_set.impulse is not None  # 2-D metrics need images
            fit_cfg = fit if classical else fit | {"seed": seed} | ({"spectral": False} if one_d else {})
            content = {
                "image_name": name, "crop": image_set.crop, "grey": image_set.grey,
                "downsample": image_set.downsample, "method": method if classical else None,
                "side_multiple": multiple if classical else None,
                "task": task.task, "task_params": params, "network": network, "fit": fit_cfg, "seed": seed,
            }  # fmt: skip
            key = fit_key(content)
            if key not in specs:
                specs[key] = FitSpec(
                    sweep=manifest.name,
                    image_uri=uri,
                    dataset=image_set.dataset,
                    signal=signal,
                    impulse=image_set.impulse,
                    experiment=manifest.experiment,
                    key=key,
                    **content,
                )
    return list(specs.values())
