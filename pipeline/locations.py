"""Where data and results may live: one rule for paths and URIs, used by manifests, storage and jobs.

A location is a local path or an fsspec URI. Local paths are compared and stored as absolute
``file://`` URIs so every process resolves them alike; ``..`` components are refused so a store
or data root stays under its own prefix; a shared cluster can confine every location to the
prefixes listed in $DIP_ALLOWED_ROOTS.
"""

from __future__ import annotations

import os

# Space-separated path/URI prefixes that every manifest's storage, data root and image URIs must
# lie under (a shared cluster sets it; unset: anywhere the process can reach).
ALLOWED_ROOTS_ENV = "DIP_ALLOWED_ROOTS"


def is_remote(location: str) -> bool:
    """Whether a location is an fsspec URI read through its file system (s3://, gs://, …), not a local path."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> str:
    """A local location as a plain path (``file://`` removed); callers check `is_remote` first."""
    return location.removeprefix("file://")


def climbs(location: str) -> bool:
    """Whether the path part of a location has a '..' component (it could leave its prefix)."""
    return ".." in location.split("://", 1)[-1].split("/")


def as_uri(location: str) -> str:
    """A path or URI in comparable form: local paths become absolute file:// URIs, no trailing /."""
    if "://" not in location:
        location = "file://" + os.path.abspath(os.path.expanduser(location))
    return location.rstrip("/")


def allowed_roots() -> list[str]:
    """The prefixes of $DIP_ALLOWED_ROOTS as URIs ending in '/'; empty when unset."""
    return [as_uri(root) + "/" for root in os.environ.get(ALLOWED_ROOTS_ENV, "").split()]


def location_problem(location: str) -> str | None:
    """Why a storage, data-root or image location is refused ('..', outside the allowed roots), or None."""
    if climbs(location):
        return f"{location!r} may not contain '..' components"
    roots = allowed_roots()
    if roots and not any((as_uri(location) + "/").startswith(root) for root in roots):
        listed = " ".join(root.rstrip("/") for root in roots)
        return f"{location} is outside the allowed roots ({listed}; set by ${ALLOWED_ROOTS_ENV})"
    return None
