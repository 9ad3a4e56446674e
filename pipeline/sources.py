"""Where the CLI's commands find a sweep: its manifest and its store, local or remote alike.

A source is a manifest (a ``.yaml``/``.yml`` path or URI, e.g. ``s3://bucket/m.yaml``) or a
storage root (a path or URI). Manifests on object storage are read with fsspec, with the
client's own configuration (environment, ~/.aws), since the manifest that would carry storage
options is what is being read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from pipeline.locations import is_remote, local_path
from pipeline.manifest import FitSpec, Manifest, expand, load_manifest, parse_manifest
from pipeline.storage import Store, data_lister, read_text

MANIFEST_SUFFIXES = (".yaml", ".yml")


def is_manifest(source: str | Path) -> bool:
    """Whether a source names a manifest (by its suffix) rather than a storage root."""
    return PurePosixPath(str(source).split("://", 1)[-1].rstrip("/")).suffix in MANIFEST_SUFFIXES


def read_manifest(uri: str | Path, overrides: Sequence[str] = ()) -> Manifest:
    """A manifest from a local file or from a URI on object storage (read with fsspec), with the
    ``FIELD.PATH=VALUE`` overrides of ``--set`` applied before validation."""
    location = str(uri)
    if is_remote(location):
        return parse_manifest(read_text(location), location, overrides)
    return load_manifest(local_path(location), overrides)


def open_store(source: str | Path | Manifest) -> Store:
    """The store of a manifest (loaded, or a source naming one), else of a storage root path or URI."""
    if isinstance(source, (str, Path)) and is_manifest(source):
        source = read_manifest(source)
    if isinstance(source, Manifest):
        return Store(source.storage_uri, source.storage_options)
    return Store(str(source))


def expand_specs(manifest: Manifest) -> list[FitSpec]:
    """The manifest's fits; data sets on a remote data root are listed through fsspec."""
    remote = is_remote(manifest.data_root or "")
    return expand(manifest, data_lister(manifest.storage_options) if remote else None)
