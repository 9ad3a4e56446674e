"""What a manifest may set in model, fit, grid and zip, and the grid resolved into configurations.

Names and value types come from the dataclasses themselves (`NetConfig`, `FitConfig`,
`ClassicalConfig`), so a field added there can be set here with no second list. Each grid point
is built into its dataclass once, so the dataclasses' own checks fail at validation with the
manifest line that set the field, not later in a worker.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_type_hints

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from dipmodel.classical import METHODS, ClassicalConfig
from dipmodel.fit import FitConfig
from dipmodel.networks import NetConfig
from pipeline.manifest.errors import Loc, Problem, clean_message, validated

NET_TYPES: dict[str, Any] = get_type_hints(NetConfig)
FIT_CONFIG_TYPES: dict[str, Any] = {k: v for k, v in get_type_hints(FitConfig).items() if k != "seed"}
# The fit section, grid and zip also choose the method: "dip" (the network fit) or a classical one.
METHOD_TYPES: dict[str, Any] = {"method": Literal[("dip",) + tuple(METHODS)]} | {
    k: v for k, v in get_type_hints(ClassicalConfig).items() if k != "method"
}
FIT_TYPES = FIT_CONFIG_TYPES | METHOD_TYPES
SETTING_ADAPTERS = {name: TypeAdapter(t) for name, t in (NET_TYPES | FIT_TYPES).items()}
NET_ADAPTER = TypeAdapter(NetConfig)
FIT_ADAPTER = TypeAdapter(FitConfig)
CLASSICAL_ADAPTER = TypeAdapter(ClassicalConfig)
Setting = dict[str, tuple[Any, Loc]]  # field -> (value, where the manifest set it)


@dataclass(frozen=True)
class Configuration:
    """One grid point resolved: the method, the NetConfig and FitConfig (seed 0) as dicts, and
    where the manifest set each field. A classical method has no network and no fit loop: its
    network dict is empty and its fit dict holds the settings that determine its output."""

    setting: Setting
    method: str
    network: dict[str, Any]
    fit: dict[str, Any]
    problems: tuple[Problem, ...]


def check_settings(
    values: dict[str, Any], allowed: dict[str, Any], where: str, axes: bool, at: Loc = ()
) -> tuple[dict[str, Any], list[Problem]]:
    """Names and value types of `model`/`fit` settings, or of grid/zip axes (`axes=True`)."""
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in values.items():
        loc = at + (name,)
        if name == "seed":
            problems.append((loc, "set seeds with the top-level seeds or repeats"))
        elif name not in allowed:
            problems.append((loc, f"unknown {where} field; valid: {', '.join(allowed)}"))
        elif not axes:
            out[name], found = validated(SETTING_ADAPTERS[name], value, loc)
            problems += found
        elif not value:
            problems.append((loc, "empty list: an axis needs at least one value"))
        else:
            checked = [validated(SETTING_ADAPTERS[name], v, loc + (j,)) for j, v in enumerate(value)]
            out[name] = [v for v, _ in checked]
            problems += [p for _, found in checked for p in found]
    return out, problems


def settings(
    model: dict[str, Any], fit: dict[str, Any], grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]]
) -> Iterator[Setting]:
    """Every grid point (grid axes, then one axis per zip group) merged over model and fit."""
    base = {f: (v, ("model", f)) for f, v in model.items()}
    base |= {f: (v, ("fit", f)) for f, v in fit.items()}
    axes: list[list[Setting]]
    axes = [[{f: (v, ("grid", f, j))} for j, v in enumerate(vs)] for f, vs in grid.items()]
    for i, group in enumerate(zips):
        length = len(next(iter(group.values())))
        axes.append([{f: (vs[j], ("zip", i, f, j)) for f, vs in group.items()} for j in range(length)])
    for point in itertools.product(*axes):
        yield base | {f: value for part in point for f, value in part.items()}


def resolve(setting: Setting) -> Configuration:
    """The method, NetConfig and FitConfig (seed 0) of one grid point, and any problems."""
    net = {f: v for f, (v, _) in setting.items() if f in NET_TYPES}  # NetConfig derives norm from lam
    fit = {f: v for f, (v, _) in setting.items() if f in FIT_CONFIG_TYPES} | {"seed": 0}
    origins = {f: loc for f, (_, loc) in setting.items()}
    method = setting.get("method", ("dip", ()))[0]
    net_dict, net_problems = _build("model", NET_ADAPTER, net, origins)
    if method != "dip":  # the network is still checked: it sets the crop (`side_multiple`)
        classical = {f: v for f, (v, _) in setting.items() if f in METHOD_TYPES}
        built, problems = _build("fit", CLASSICAL_ADAPTER, classical, origins)
        fit_dict = ClassicalConfig(**built).settings() if not problems else {}
        return Configuration(setting, method, net_dict, fit_dict, tuple(net_problems + problems))
    fit_dict, fit_problems = _build("fit", FIT_ADAPTER, fit, origins)
    return Configuration(setting, method, net_dict, fit_dict, tuple(net_problems + fit_problems))


def _build(
    section: str, adapter: TypeAdapter[Any], values: dict[str, Any], origins: dict[str, Loc]
) -> tuple[dict[str, Any], list[Problem]]:
    """Construct a NetConfig/FitConfig (its own checks run) as a dict, or say where it fails."""
    try:
        return to_jsonable_python(asdict(adapter.validate_python(values))), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            message = clean_message(e["msg"])
            field = str(e["loc"][0]) if e["loc"] else _blame(message, values)
            problems.append((origins.get(field, (section, field) if field else (section,)), message))
        return {}, problems


def _blame(message: str, values: dict[str, Any]) -> str:
    """The field a dataclass's own check complains about: the first field named in its message."""
    hits = [(m.start(), f) for f in values if (m := re.search(rf"\b{f}\b", message))]
    return min(hits)[1] if hits else ""
