"""Sweep manifests: the YAML a person writes, validated, and its expansion into fit specs.

A manifest names images, tasks with their degradation parameters, a network, a fit budget and
the axes to sweep; `expand` turns it into one `FitSpec` per fit, each with a key derived from
the content that determines its result (`fit_key`), so a rerun anywhere finds the fits already
stored. Every error is reported at once as ``FILE:LINE: field.path: message``.

Modules: `errors` (problems and how they are reported), `loading` (safe YAML), `schema` (the
pydantic models), `grid` (what may be set where, the grid resolved), `expansion` (images looked
up, fits enumerated), `keys` (the key policy).
"""

from pipeline.locations import (
    ALLOWED_ROOTS_ENV,
    allowed_roots,
    as_uri,
    location_problem,
)
from pipeline.manifest.errors import Loc, ManifestError, Problem
from pipeline.manifest.expansion import (
    ListFiles,
    VerifyDataset,
    expand,
    list_local_files,
)
from pipeline.manifest.keys import (
    KEY_FIELDS,
    KEY_VERSION,
    OPTIONAL_KEY_FIELDS,
    SPEED_FIELDS,
    fit_key,
    key_fit_fields,
)
from pipeline.manifest.loading import MAX_EXPANDED_NODES, load_manifest, parse_manifest
from pipeline.manifest.schema import (
    FitSpec,
    ImageSet,
    Manifest,
    MlflowSpec,
    Resources,
    SignalSpec,
    TaskSpec,
    json_schema,
)

__all__ = [
    "ALLOWED_ROOTS_ENV",
    "KEY_FIELDS",
    "KEY_VERSION",
    "MAX_EXPANDED_NODES",
    "OPTIONAL_KEY_FIELDS",
    "SPEED_FIELDS",
    "FitSpec",
    "ImageSet",
    "ListFiles",
    "Loc",
    "Manifest",
    "ManifestError",
    "MlflowSpec",
    "Problem",
    "Resources",
    "SignalSpec",
    "TaskSpec",
    "VerifyDataset",
    "allowed_roots",
    "as_uri",
    "expand",
    "fit_key",
    "json_schema",
    "key_fit_fields",
    "list_local_files",
    "load_manifest",
    "location_problem",
    "parse_manifest",
]
