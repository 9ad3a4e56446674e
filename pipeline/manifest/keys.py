"""Fit keys: the content that determines a fit's result, in canonical JSON, hashed.

A key names a fit wherever it runs, so a rerun finds the fits already stored. The key policy
lives here and nowhere else: which fields enter a key, which were added later and enter only
when they differ from their defaults, and which only change speed and never enter.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump when the meaning of a key's content changes, so old results are not reused. Version 2:
# backtracking on by default, the head convolution unbounded by default, and blurriness,
# sharpness and FBC as the authors compute them (the automatic stop's meaning changed).
KEY_VERSION = 2
KEY_FIELDS = ("image_name", "crop", "grey", "task", "task_params", "network", "fit", "seed")
# Added after version 1 keys existed: entered only when set, so the keys of fits that do not
# use them (and their stored results) stay valid.
OPTIONAL_KEY_FIELDS = ("downsample", "method", "side_multiple")
# FitConfig fields added after version 1 keys existed: left out of a key at their default.
LATER_FIT_DEFAULTS = {"optimizer": "adam", "sgld_temperature": 0.002, "burn_in": 0}
# FitConfig fields added after the first fit keys were stored: (default, changes the result?).
# Left out of a key at their default; those that only change how fast a fit runs always left out.
SPEED_FIELDS: dict[str, tuple[object, bool]] = {
    "precision": ("fp32", True),
    "sn_refresh_every": (20, True),
    "channels_last": (False, False),
    "compile": (False, False),
}


def canonical(value: Any) -> Any:
    """JSON-ready value where equal numbers are equal text: 2.0 -> 2, tuples -> lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def key_fit_fields(fit: dict[str, Any]) -> dict[str, Any]:
    """The fit configuration as the key sees it: speed options that never change the result
    left out, and fields added after version-1 keys existed (SGLD settings, precision) left out
    at their defaults, so keys made before they existed still name the same fits."""
    later = LATER_FIT_DEFAULTS | {k: default for k, (default, _) in SPEED_FIELDS.items()}
    return {
        k: v
        for k, v in fit.items()
        if not (k in SPEED_FIELDS and not SPEED_FIELDS[k][1]) and not (k in later and v == later[k])
    }


def fit_key(spec_content: dict[str, Any]) -> str:
    """Stable 16-hex-digit key of a fit: sha256 of the canonical JSON of what determines its result.

    The key covers ``KEY_FIELDS`` (image_name, crop, grey, task, task_params, the full network
    and fit configurations, seed), those of ``OPTIONAL_KEY_FIELDS`` (downsample, a classical
    method) that are set, and ``KEY_VERSION``; the fit configuration as `key_fit_fields`
    sees it (fields added since version 1 only where they differ from their defaults). Extra
    entries in `spec_content` (e.g. a whole FitSpec dump, with its experiment id) are ignored.
    Deliberately excluded: the sweep name, storage, MLflow,
    resources and the data root (image_name is relative to it), so renaming a sweep, moving
    its data or its results, or changing the cluster reuses the fits already done. JSON is
    written with sorted keys and no spaces, and integral floats as integers (2 == 2.0).
    """
    content = {k: spec_content[k] for k in KEY_FIELDS} | {"key_version": KEY_VERSION}
    content["fit"] = key_fit_fields(content["fit"])
    content |= {k: spec_content[k] for k in OPTIONAL_KEY_FIELDS if spec_content.get(k) is not None}
    text = json.dumps(canonical(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
