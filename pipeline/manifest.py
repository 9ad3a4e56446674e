"""Sweep manifests: the YAML a person writes, validated, and its expansion into fit specs.

A manifest names images, tasks with their degradation parameters, a network, a fit budget
and the axes to sweep; `expand` turns it into one `FitSpec` per fit, each with a key derived
from the content that determines its result (see `fit_key`), so a rerun anywhere finds the
fits already stored. Every error is reported at once as ``FILE:LINE: field.path: message``:
pydantic validates the structure and, per field, the names and types of the settings; once
the structure is sound, every network/fit configuration the grid produces is built, so the
dataclasses' own checks (`NetConfig`/`FitConfig.__post_init__`) fail here and not in a worker.
Data sets are looked up only by `expand`, through a `list_files` callable, so storage
(fsspec) stays outside this module; the data sets of the papers are checked against their
checksums there too (`pipeline.datasets.verify`, replaceable by a `verify` callable).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, to_jsonable_python

from dipmodel.classical import METHOD_TASKS, METHODS, ClassicalConfig
from dipmodel.fit import SPEED_FIELDS, FitConfig
from dipmodel.networks import ONE_D, NetConfig, side_multiple
from pipeline import datasets
from pipeline.images import SAMPLE_PREFIX

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

# Space-separated path/URI prefixes that every manifest's storage, data root and image URIs must
# lie under (a shared cluster sets it; unset: anywhere the process can reach).
ALLOWED_ROOTS_ENV = "DIP_ALLOWED_ROOTS"
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]  # where in the manifest, what is wrong
ListFiles = Callable[[str, str], list[str]]
VerifyDataset = Callable[[str, str, list[str] | None], None]  # (data_root, data set, files or all)

# --- what may be set where ---------------------------------------------------------------------

_NET_TYPES: dict[str, Any] = get_type_hints(NetConfig)
_FIT_CONFIG_TYPES: dict[str, Any] = {k: v for k, v in get_type_hints(FitConfig).items() if k != "seed"}
# The fit section, grid and zip also choose the method: "dip" (the network fit) or a classical one.
_METHOD_TYPES: dict[str, Any] = {"method": Literal[("dip", *METHODS)]} | {
    k: v for k, v in get_type_hints(ClassicalConfig).items() if k != "method"}
_FIT_TYPES = _FIT_CONFIG_TYPES | _METHOD_TYPES
_SETTING_ADAPTERS = {name: TypeAdapter(t) for name, t in (_NET_TYPES | _FIT_TYPES).items()}
_NET_ADAPTER = TypeAdapter(NetConfig)
_FIT_ADAPTER = TypeAdapter(FitConfig)
_CLASSICAL_ADAPTER = TypeAdapter(ClassicalConfig)

Task = Literal["clean", "enhance", "denoise", "lowfreq_noise", "jpeg", "inpaint", "superres", "upsampling_response"]
_TASK_PARAMS: dict[str, dict[str, Any]] = {  # task -> parameter -> type (see dipmodel.operators)
    "clean": {},
    "enhance": {},
    "denoise": {"sigma": float},
    "lowfreq_noise": {"sigma": float, "cutoff": float},
    "jpeg": {"quality": int},
    "inpaint": {"kind": Literal["center", "bernoulli"], "ratio": float, "p": float},
    "superres": {"factor": int},
    # C&M App. E (C8): no fit; the model's upsampling layer is measured against its closed form
    "upsampling_response": {"stride": PositiveInt},
}
_INPAINT_AMOUNT = {"center": "ratio", "bernoulli": "p"}  # the parameter each mask kind takes
_PARAM_ADAPTERS = {t: {p: TypeAdapter(typ) for p, typ in ps.items()} for t, ps in _TASK_PARAMS.items()}
_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_SCALAR_OR_LIST_SCHEMA: dict[str, Any] = {"anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}]}


class ManifestError(ValueError):
    """An invalid manifest; the message has one ``FILE[:LINE]: field.path: message`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _raise_if(problems: list[Problem], title: str) -> None:
    """Raise all problems together, so pydantic nests them under the caller's location."""
    if problems:
        details = [
            InitErrorDetails(type=PydanticCustomError("manifest", "{msg}", {"msg": msg}), loc=loc, input=None)
            for loc, msg in problems
        ]
        raise ValidationError.from_exception_data(title, details)


def _validated(adapter: TypeAdapter, value: Any, loc: Loc) -> tuple[Any, list[Problem]]:
    """`value` validated (and normalised, e.g. 2 -> 2.0 for a float), or the problems at `loc`."""
    try:
        return adapter.validate_python(value), []
    except ValidationError as err:
        return value, [(loc + tuple(e["loc"]), _clean_message(e["msg"])) for e in err.errors()]


def _check_settings(
    settings: dict[str, Any], allowed: dict[str, Any], where: str, axes: bool, at: Loc = ()
) -> tuple[dict[str, Any], list[Problem]]:
    """Names and value types of `model`/`fit` settings, or of grid/zip axes (`axes=True`)."""
    out: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in settings.items():
        loc = at + (name,)
        if name == "seed":
            problems.append((loc, "set seeds with the top-level seeds or repeats"))
        elif name not in allowed:
            problems.append((loc, f"unknown {where} field; valid: {', '.join(allowed)}"))
        elif not axes:
            out[name], found = _validated(_SETTING_ADAPTERS[name], value, loc)
            problems += found
        elif not value:
            problems.append((loc, "empty list: an axis needs at least one value"))
        else:
            checked = [_validated(_SETTING_ADAPTERS[name], v, loc + (j,)) for j, v in enumerate(value)]
            out[name] = [v for v, _ in checked]
            problems += [p for _, found in checked for p in found]
    return out, problems


def _names_schema(names: Iterable[str]) -> dict[str, Any]:
    """JSON-schema hint so editors complete and check the keys of a free-form mapping."""
    return {"propertyNames": {"enum": sorted(names)}}


def _escape_problem(relative: str) -> str | None:
    """Why a path inside a data set could leave it ('..', absolute), or None."""
    if relative.startswith(("/", "\\")) or "://" in relative:
        return f"{relative!r} must be relative to the data set folder"
    if ".." in re.split(r"[/\\]", relative):
        return f"{relative!r} may not contain '..'"
    return None


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
    if ".." in location.split("://", 1)[-1].split("/"):
        return f"{location!r} may not contain '..' components"
    roots = allowed_roots()
    if roots and not any((as_uri(location) + "/").startswith(root) for root in roots):
        listed = " ".join(root.rstrip("/") for root in roots)
        return f"{location} is outside the allowed roots ({listed}; set by ${ALLOWED_ROOTS_ENV})"
    return None


# --- manifest models -----------------------------------------------------------------------------


class SignalSpec(BaseModel):
    """A 1-D sum of sines, C&M §3.1: x0(t) = sum_i a_i sin(2 pi k_i t), t = i / length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length: int = Field(256, ge=8, description="samples")
    freqs: list[PositiveInt] = Field(
        [5, 50], min_length=1, description="integer frequencies k_i (cycles per signal), increasing, below length/2"
    )
    amplitudes: list[float] | None = Field(None, min_length=1, description="a_i, one per frequency; default 1 each")

    @model_validator(mode="after")
    def _check(self) -> SignalSpec:
        problems: list[Problem] = []
        if any(b <= a for a, b in zip(self.freqs, self.freqs[1:])):
            problems.append((("freqs",), "frequencies must increase (se_1, converged_k1 are the lowest)"))
        half = f"length/2 = {self.length / 2:g}"
        problems += [
            (("freqs", i), f"frequency {k} is not below {half} (SE(k) needs 0 < k < length/2)")
            for i, k in enumerate(self.freqs)
            if 2 * k >= self.length
        ]
        if self.amplitudes is not None and len(self.amplitudes) != len(self.freqs):
            problems.append((("amplitudes",), f"give one amplitude per frequency ({len(self.freqs)})"))
        _raise_if(problems, "SignalSpec")
        return self

    def amplitude_list(self) -> list[float]:
        """a_i, the default (1 each) written out."""
        return self.amplitudes or [1.0] * len(self.freqs)

    def resolved(self) -> SignalSpec:
        """The same signal with its amplitudes written out, so equal signals compare equal."""
        return self.model_copy(update={"amplitudes": self.amplitude_list()})

    def name(self) -> str:
        """Its image name, e.g. ``signal:256:5+50``; amplitudes follow when any is not 1."""
        text = f"signal:{self.length}:{'+'.join(map(str, self.freqs))}"
        amplitudes = _canonical(self.amplitude_list())
        return text if all(a == 1 for a in amplitudes) else f"{text}:{'+'.join(map(str, amplitudes))}"


class ImageSet(BaseModel):
    """What to fit: bundled samples, a data-set folder under the data root, URIs, or a 1-D signal,
    with the preprocessing that is part of the experiment (downsampling, luma)."""

    model_config = ConfigDict(extra="forbid")

    sample: list[str] | None = Field(
        None,
        min_length=1,
        description="scikit-image bundled sample(s), e.g. astronaut, camera",
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    )
    dataset: str | None = Field(None, description="folder under the data root; known names are checksum-verified")
    files: list[str] | None = Field(None, min_length=1, description="file names inside the dataset folder")
    glob: str | None = Field(None, description="pattern inside the dataset folder (default *)")
    uris: list[str] | None = Field(None, min_length=1, description="explicit image paths or URIs")
    signal: SignalSpec | None = Field(None, description="a 1-D sum of sines (C&M §3.1) instead of images")
    impulse: int | None = Field(
        None, ge=8, description="length of a 1-D unit impulse: the input of task upsampling_response (C&M App. E)"
    )
    downsample: int | None = Field(
        None, ge=2, description="shrink by this factor (PIL Lanczos) before cropping; C&M Tables 1-2 use 4"
    )
    crop: PositiveInt | None = Field(None, description="centre-crop to at most crop x crop")
    grey: bool | None = Field(
        None, description="fit the luma (Y of YCbCr, ITU-R 601) only; default: the data set's convention (live1: true)"
    )

    @field_validator("sample", mode="before")
    @classmethod
    def _one_sample_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("sample")
    @classmethod
    def _known_samples(cls, names: list[str] | None) -> list[str] | None:
        from skimage import data  # here: only sample sets need it (it loads lazily)

        bad: list[Problem] = [
            ((i,), f"unknown scikit-image sample {n!r} (e.g. astronaut, camera)")
            for i, n in enumerate(names or [])
            if n.startswith("_") or not callable(getattr(data, n, None))
        ]
        _raise_if(bad, "ImageSet.sample")
        return names

    @field_validator("dataset")
    @classmethod
    def _dataset_is_one_folder(cls, name: str | None) -> str | None:
        if name is not None and not _PATH_COMPONENT.fullmatch(name):
            raise PydanticCustomError("manifest", "a data set is one folder name under the data root (letters, "
                                      "digits, . _ -), not {name!r}", {"name": name})
        return name

    @field_validator("files")
    @classmethod
    def _files_stay_inside(cls, names: list[str] | None) -> list[str] | None:
        _raise_if([((j,), problem) for j, n in enumerate(names or []) if (problem := _escape_problem(n))],
                  "ImageSet.files")
        return names

    @field_validator("glob")
    @classmethod
    def _glob_stays_inside(cls, pattern: str | None) -> str | None:
        if pattern is not None and (problem := _escape_problem(pattern)):
            raise PydanticCustomError("manifest", "{problem}", {"problem": problem})
        return pattern

    @model_validator(mode="after")
    def _one_source(self) -> ImageSet:
        sources = [k for k in ("sample", "dataset", "uris", "signal", "impulse") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise PydanticCustomError("manifest", "give exactly one of sample, dataset, uris, signal or impulse")
        if self.dataset is None and (self.files is not None or self.glob is not None):
            raise PydanticCustomError("manifest", "files and glob choose files inside a dataset")
        if self.files is not None and self.glob is not None:
            raise PydanticCustomError("manifest", "give files or glob, not both")
        if self.signal is not None or self.impulse is not None:
            _raise_if([((f,), "applies to images, not to a 1-D signal") for f in ("downsample", "crop", "grey")
                       if getattr(self, f)], "ImageSet")
        if self.grey is None:  # the data set's convention, e.g. LIVE1 is evaluated on the Y channel
            known = datasets.registry().get(self.dataset or "")
            self.grey = known is not None and known.grey
        return self


class TaskSpec(BaseModel):
    """A task and its degradation parameters; a list value is an axis of the grid."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="degradation parameters; a list is a sweep axis, e.g. sigma: [15, 25]",
        json_schema_extra={"additionalProperties": _SCALAR_OR_LIST_SCHEMA},
    )

    @model_validator(mode="after")
    def _check_params(self) -> TaskSpec:
        known = _PARAM_ADAPTERS[self.task]
        problems: list[Problem] = []
        for name, value in self.params.items():
            loc: Loc = ("params", name)
            if name not in known:
                valid = ", ".join(known) or "none"
                problems.append((loc, f"task {self.task} has no parameter {name!r}; valid: {valid}"))
                continue
            if value == []:
                problems.append((loc, "empty list: an axis needs at least one value"))
            is_axis = isinstance(value, list)
            values = []
            for j, v in enumerate(value if is_axis else [value]):
                v, found = _validated(known[name], v, loc + (j,) if is_axis else loc)
                values.append(v)
                problems += found
            self.params[name] = values if is_axis else values[0]
        if not problems:
            problems = [(("params",), msg) for msg in dict.fromkeys(self._combination_problems())]
        _raise_if(problems, "TaskSpec")
        return self

    def combinations(self) -> list[dict[str, Any]]:
        """Every setting of the parameters: the Cartesian product of the list-valued ones."""
        axes = [[(k, x) for x in v] if isinstance(v, list) else [(k, v)] for k, v in self.params.items()]
        return [dict(point) for point in itertools.product(*axes)]

    def _combination_problems(self) -> Iterator[str]:
        """Every parameter must be given (no hidden operator defaults enter a key)."""
        for combo in self.combinations():
            needed = set(_TASK_PARAMS[self.task])
            if self.task == "inpaint":
                needed = {"kind", _INPAINT_AMOUNT.get(combo.get("kind", ""), "ratio")}
            if missing := sorted(needed - set(combo)):
                yield f"task {self.task} needs parameter(s) {', '.join(missing)}"
            if extra := sorted(set(combo) - needed):
                yield f"parameter(s) {', '.join(extra)} do not apply to kind {combo['kind']}"


class MlflowSpec(BaseModel):
    """Where fits are tracked; storage stays the source of truth."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="None: the embedded sqlite:///<cwd>/mlflow.db")
    experiment: str | None = Field(None, description="default: the manifest name")
    enabled: bool = True


class Resources(BaseModel):
    """What one sweep worker asks of the cluster, and how many fits it runs at once."""

    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(0, ge=0, description="GPUs per worker (per fit at pack 1); fractions share a GPU")
    num_cpus: float = Field(1, ge=0)
    max_retries: NonNegativeInt = Field(2, description="retries after infrastructure failures only")
    max_workers: PositiveInt | None = Field(None, description="cap on concurrent fit workers")
    pack: PositiveInt = Field(1, description="fits a worker runs at once on its device (dipmodel.fit.fit_many)")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per worker, e.g. {accelerator_a100: 1}; also how tests stand in for GPUs",
    )

    @field_validator("custom")
    @classmethod
    def _positive_amounts(cls, amounts: dict[str, float]) -> dict[str, float]:
        _raise_if([((name,), "a resource amount must be positive") for name, n in amounts.items() if not n > 0],
                  "Resources.custom")
        return amounts


@dataclass(frozen=True)
class _Source:
    """The YAML a manifest came from, to turn pydantic locations into file lines."""

    label: str
    root: yaml.Node | None

    def line(self, loc: Loc) -> int | None:
        """1-based line of the deepest YAML node on `loc` (a key's own line for mappings)."""
        node, line = self.root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, problems: list[Problem]) -> ManifestError:
        """One error listing every problem in file order (those with no line last)."""
        located = [(self.line(loc), loc, msg) for loc, msg in problems]
        located.sort(key=lambda p: (p[0] is None, p[0] or 0))
        lines = []
        for line, loc, message in located:
            where = f"{self.label}:{line}" if line else self.label
            lines.append(f"{where}: {_path(loc)}: {message}" if loc else f"{where}: {message}")
        return ManifestError(lines)


def _path(loc: Loc) -> str:
    """('tasks', 0, 'params', 'sigma') -> 'tasks[0].params.sigma'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


class Manifest(BaseModel):
    """A sweep: images x tasks x task-parameter axes x grid axes x zip groups x seeds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="sweep name: lower-case letters, digits, _ and -")
    experiment: str | None = Field(
        None, min_length=1, description="paper experiment id (e.g. S6, C4) for reports; not part of fit keys"
    )
    data_root: str | None = Field(
        None, validate_default=True, description="path or URI of the data sets; default $DIP_DATA_ROOT, else ./data"
    )
    images: list[ImageSet] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(min_length=1)
    model: dict[str, Any] = Field(
        description=("NetConfig fields (name, width, depth, upsample, up_sigma, norm, lam, input, bound_head, "
                     "detach_sigma, ...)"),
        json_schema_extra=_names_schema(_NET_TYPES),
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Cartesian axes over NetConfig/FitConfig fields, e.g. lam: [null, 2]",
        json_schema_extra=_names_schema(_NET_TYPES | _FIT_TYPES),
    )
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of equally long lists that vary together; each group is one axis"
    )
    seeds: list[NonNegativeInt] | None = Field(None, min_length=1, description="default [0]")
    repeats: PositiveInt | None = Field(None, description="seeds 0..repeats-1 (instead of seeds)")
    fit: dict[str, Any] = Field(
        default_factory=dict,
        description=("FitConfig fields except seed (iterations, lr, metric_stride, ...), and the method: dip "
                     "(default) or a classical reference (bm3d, bicubic, tv, with tv_weight, tv_iterations)"),
        json_schema_extra=_names_schema(_FIT_TYPES),
    )
    storage: str | None = Field(None, description="results URI; default file://<cwd>/results/<name>")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. an S3 endpoint")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    resources: Resources = Field(default_factory=Resources)

    _source: _Source | None = PrivateAttr(default=None)

    @field_validator("data_root")
    @classmethod
    def _default_data_root(cls, value: str | None) -> str:
        return value or os.environ.get("DIP_DATA_ROOT") or "./data"

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: dict[str, Any]) -> dict[str, Any]:
        out, problems = _check_settings(value, _NET_TYPES, "model", axes=False)
        _raise_if(problems, "model")
        return out

    @field_validator("fit")
    @classmethod
    def _check_fit(cls, value: dict[str, Any]) -> dict[str, Any]:
        out, problems = _check_settings(value, _FIT_TYPES, "fit", axes=False)
        _raise_if(problems, "fit")
        return out

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out, problems = _check_settings(value, _NET_TYPES | _FIT_TYPES, "grid", axes=True)
        _raise_if(problems, "grid")
        return out

    @field_validator("zip")
    @classmethod
    def _check_zip(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        out, problems = [], []
        for i, group in enumerate(groups):
            checked, found = _check_settings(group, _NET_TYPES | _FIT_TYPES, "zip", axes=True, at=(i,))
            out.append(checked)
            problems += found
            lengths = {k: len(v) for k, v in group.items()}
            if not group:
                problems.append(((i,), "a zip group needs at least one field"))
            elif len(set(lengths.values())) > 1:
                sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                problems.append(((i,), f"zip group {i} has lists of unequal length ({sizes})"))
        _raise_if(problems, "zip")
        return out

    @model_validator(mode="after")
    def _check_sweep(self) -> Manifest:
        problems: list[Problem] = []
        if self.seeds is not None and self.repeats is not None:
            problems.append((("repeats",), "give seeds or repeats, not both"))
        seen: dict[str, Loc] = {}
        for loc in self._setting_locations():
            field = str(loc[-1])
            if field in seen:
                problems.append((loc, f"{field} is already set at {_path(seen[field])}"))
            seen[field] = loc
        if not problems:
            problems = self._config_problems() or self._input_problems()
        _raise_if(problems, "Manifest")
        if self.storage is None:
            self.storage = f"file://{Path.cwd()}/results/{self.name}"
        _raise_if(list(self._location_problems()), "Manifest")
        if self.mlflow.experiment is None:
            self.mlflow.experiment = self.name
        return self

    def written(self, field: str) -> bool:
        """Whether the manifest itself sets a top-level field (validation fills in some defaults)."""
        if self._source is not None and self._source.root is not None:
            return self._source.line((field,)) is not None
        return field in self.model_fields_set

    def _location_problems(self) -> Iterator[Problem]:
        """Storage, data root and image URIs: no '..', and under $DIP_ALLOWED_ROOTS when it is set."""
        places: list[tuple[Loc, str]] = [(("storage",), self.storage or ""), (("data_root",), self.data_root or "")]
        places += [(("images", i, "uris", j), uri) for i, images in enumerate(self.images)
                   for j, uri in enumerate(images.uris or []) if not uri.startswith(SAMPLE_PREFIX)]
        for loc, location in places:
            if problem := location_problem(location):
                yield loc, problem

    # --- resolution ----------------------------------------------------------------------------

    def seed_list(self) -> list[int]:
        """The seeds of every fit: `seeds`, or 0..repeats-1, or [0]."""
        if self.repeats is not None:
            return list(range(self.repeats))
        return list(dict.fromkeys(self.seeds or [0]))

    def _setting_locations(self) -> Iterator[Loc]:
        """Where each network/fit field is set: model, fit, grid axes, zip groups."""
        for section in ("model", "fit", "grid"):
            yield from ((section, f) for f in getattr(self, section))
        for i, group in enumerate(self.zip):
            yield from (("zip", i, f) for f in group)

    def _settings(self) -> Iterator[dict[str, tuple[Any, Loc]]]:
        """Every grid point (grid axes, then one axis per zip group) merged over model and fit,
        as field -> (value, where the manifest set it)."""
        base = {f: (v, ("model", f)) for f, v in self.model.items()}
        base |= {f: (v, ("fit", f)) for f, v in self.fit.items()}
        axes: list[list[dict[str, tuple[Any, Loc]]]]
        axes = [[{f: (v, ("grid", f, j))} for j, v in enumerate(vs)] for f, vs in self.grid.items()]
        for i, group in enumerate(self.zip):
            length = len(next(iter(group.values())))
            axes.append([{f: (vs[j], ("zip", i, f, j)) for f, vs in group.items()} for j in range(length)])
        for point in itertools.product(*axes):
            yield base | {f: value for part in point for f, value in part.items()}

    def _resolve(self, setting: dict[str, tuple[Any, Loc]]) -> tuple[str, dict, dict, list[Problem]]:
        """The method, NetConfig and FitConfig (seed 0) of one grid point, and any problems.

        A classical method has no network and no fit loop: its network dict is empty and its
        fit dict holds the settings that determine its output (`ClassicalConfig.settings`).
        """
        net = {f: v for f, (v, _) in setting.items() if f in _NET_TYPES}
        if "norm" not in net:  # a Lipschitz conv needs Lipschitz normalisation: BN undoes the bound
            net["norm"] = "batch" if net.get("lam") is None else "lipschitz"
        fit = {f: v for f, (v, _) in setting.items() if f in _FIT_CONFIG_TYPES} | {"seed": 0}
        origins = {f: loc for f, (_, loc) in setting.items()}
        method = setting.get("method", ("dip", ()))[0]
        net_dict, net_problems = _build("model", _NET_ADAPTER, net, origins)
        if method != "dip":  # the network is still checked: it sets the crop (`side_multiple`)
            classical = {f: v for f, (v, _) in setting.items() if f in _METHOD_TYPES}
            built, problems = _build("fit", _CLASSICAL_ADAPTER, classical, origins)
            return method, net_dict, ClassicalConfig(**built).settings() if not problems else {}, net_problems + problems
        fit_dict, fit_problems = _build("fit", _FIT_ADAPTER, fit, origins)
        return method, net_dict, fit_dict, net_problems + fit_problems

    def _config_problems(self) -> list[Problem]:
        return list(dict.fromkeys(p for setting in self._settings() for p in self._resolve(setting)[3]))

    def _input_problems(self) -> list[Problem]:
        """1-D signals and images need different networks, a signal takes task clean only, and
        an impulse is the input of task upsampling_response and of nothing else."""
        signals = [i for i, images in enumerate(self.images) if images.signal is not None]
        impulses = [i for i, images in enumerate(self.images) if images.impulse is not None]
        pictures = [i for i, images in enumerate(self.images) if images.signal is None and images.impulse is None]
        problems: list[Problem] = [
            (("images", i, "signal"), f"a 1-D signal takes task clean only; tasks[{j}] is {task.task}")
            for i in signals
            for j, task in enumerate(self.tasks)
            if task.task != "clean"
        ]
        measuring = [j for j, task in enumerate(self.tasks) if task.task == "upsampling_response"]
        problems += [(("images", i, "impulse"), f"an impulse takes task upsampling_response only; tasks[{j}] is "
                      f"{task.task}") for i in impulses for j, task in enumerate(self.tasks) if j not in measuring]
        problems += [(("tasks", j, "task"), f"upsampling_response measures a layer on an impulse; images[{i}] "
                      "is not one (give images: [{impulse: 64}])") for j in measuring for i in signals + pictures]
        if impulses:  # the network's other fields do not matter to a layer, but it is one layer
            problems += [(loc, "upsampling_response measures one upsampling layer: give one up_sigma, not "
                               "one per layer") for setting in self._settings()
                         for sigma, loc in [setting.get("up_sigma", (0.5, ()))] if isinstance(sigma, tuple)]
            return list(dict.fromkeys(problems))
        for setting in self._settings():
            method, method_loc = setting.get("method", ("dip", ()))
            problems += [(method_loc, f"method {method} restores {', '.join(METHOD_TASKS[method])} only; "
                                      f"tasks[{j}] is {task.task}")
                         for j, task in enumerate(self.tasks) if method != "dip" and task.task not in METHOD_TASKS[method]]
            name, loc = setting["name"]
            if signals and name not in ONE_D:
                needs = f"the signal of images[{signals[0]}] needs a 1-D network ({', '.join(ONE_D)})"
                problems.append((loc, f"{name} fits images; {needs}"))
            if pictures and name in ONE_D:
                problems.append((loc, f"{name} fits 1-D signals; images[{pictures[0]}] holds images"))
            spectral, spectral_loc = setting.get("spectral", (False, ()))
            if signals and spectral:
                problems.append((spectral_loc, "FBC and blur/sharpness need images; signals fit with spectral: false"))
        return list(dict.fromkeys(problems))

    def configurations(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(method, network, fit) of every grid point, in grid order; fit.seed is set per spec."""
        configs = []
        for setting in self._settings():
            method, net, fit, problems = self._resolve(setting)
            if problems:  # only when the manifest was changed after validation
                raise self.error(problems)
            configs.append((method, net, fit))
        return configs

    def side_multiple(self) -> int:
        """What every network of the manifest needs image sides to be multiples of: classical
        methods crop to it too, so they restore exactly the pixels the networks do."""
        return math.lcm(*(side_multiple(_NET_ADAPTER.validate_python(net)) for _, net, _ in self.configurations()))

    def error(self, problems: list[Problem]) -> ManifestError:
        """A ManifestError for problems found after validation, with lines when loaded from YAML."""
        return (self._source or _Source("<manifest>", None)).error(problems)


def _build(
    section: str, adapter: TypeAdapter, values: dict[str, Any], origins: dict[str, Loc]
) -> tuple[dict, list[Problem]]:
    """Construct a NetConfig/FitConfig (its own checks run) as a dict, or say where it fails."""
    try:
        return to_jsonable_python(asdict(adapter.validate_python(values))), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            message = _clean_message(e["msg"])
            field = str(e["loc"][0]) if e["loc"] else _blame(message, values)
            problems.append((origins.get(field, (section, field) if field else (section,)), message))
        return {}, problems


def _blame(message: str, values: dict[str, Any]) -> str:
    """The field a dataclass's own check complains about: the first field named in its message."""
    hits = [(m.start(), f) for f in values if (m := re.search(rf"\b{f}\b", message))]
    return min(hits)[1] if hits else ""


def _clean_message(message: str) -> str:
    return message.removeprefix("Value error, ")


# --- fit specs and keys --------------------------------------------------------------------------


class FitSpec(BaseModel):
    """One fit, fully resolved: what a worker receives, stores beside its results and logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sweep: str
    image_uri: str  # where to read the image: a path, a URI, or skimage:NAME
    image_name: str  # stable short name: dataset/file, sample:NAME, signal:LENGTH:FREQS, or the URI as written
    dataset: str | None
    crop: int | None
    grey: bool
    downsample: int | None = None
    signal: SignalSpec | None = None  # a 1-D input instead of an image, amplitudes written out
    impulse: int | None = None  # the impulse length of an upsampling_response measurement (also in image_name)
    experiment: str | None = None  # the manifest's paper experiment id; not part of the key
    method: str | None = None  # a classical method (bm3d, bicubic, tv); None: the network fit ("dip")
    side_multiple: int | None = None  # a classical method crops image sides to multiples of this
    task: str
    task_params: dict[str, Any]
    network: dict[str, Any]  # every NetConfig field; empty for a classical method
    fit: dict[str, Any]  # every FitConfig field, seed included; a classical method's settings
    seed: int
    key: str = Field(pattern=r"^[0-9a-f]{16}$")  # fit_key's form: one safe path component in storage

    def net_config(self) -> NetConfig:
        return _NET_ADAPTER.validate_python(self.network)

    def fit_config(self) -> FitConfig:
        return _FIT_ADAPTER.validate_python(self.fit)

    def classical_config(self) -> ClassicalConfig:
        return ClassicalConfig(method=self.method or "dip", **self.fit)


def _canonical(value: Any) -> Any:
    """JSON-ready value where equal numbers are equal text: 2.0 -> 2, tuples -> lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def key_fit_fields(fit: dict[str, Any]) -> dict[str, Any]:
    """The fit configuration as the key sees it: speed options that never change the result
    left out, and fields added after version-1 keys existed (SGLD settings, precision) left out
    at their defaults, so keys made before they existed still name the same fits."""
    later = LATER_FIT_DEFAULTS | {k: default for k, (default, _) in SPEED_FIELDS.items()}
    return {k: v for k, v in fit.items()
            if not (k in SPEED_FIELDS and not SPEED_FIELDS[k][1]) and not (k in later and v == later[k])}


def fit_key(spec_content: dict[str, Any]) -> str:
    """Stable 16-hex-digit key of a fit: sha256 of the canonical JSON of what determines its result.

    The key covers ``KEY_FIELDS`` (image_name, crop, grey, task, task_params, the full network
    and fit configurations, seed), those of ``OPTIONAL_KEY_FIELDS`` (downsample, a classical
    method) that are set, and ``KEY_VERSION``; the fit configuration as `key_fit_fields`
    sees it (fields added since version 1 only where they differ from their defaults). Extra
    entries in `spec_content` (e.g. a whole FitSpec dump, with its experiment id) are ignored. Deliberately excluded: the sweep name, storage, MLflow,
    resources and the data root (image_name is relative to it), so renaming a sweep, moving
    its data or its results, or changing the cluster reuses the fits already done. JSON is
    written with sorted keys and no spaces, and integral floats as integers (2 == 2.0).
    """
    content = {k: spec_content[k] for k in KEY_FIELDS} | {"key_version": KEY_VERSION}
    content["fit"] = key_fit_fields(content["fit"])
    content |= {k: spec_content[k] for k in OPTIONAL_KEY_FIELDS if spec_content.get(k) is not None}
    text = json.dumps(_canonical(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- images --------------------------------------------------------------------------------------


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
                for j, (f, hits) in enumerate(zip(images.files, found))
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
            (("images", index, "files", files.index(p.file)) if p.file in files else ("images", index, "dataset"),
             p.message)
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
        for params, (method, network, fit), seed in itertools.product(task.combinations(), configs,
                                                                      manifest.seed_list()):
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
                specs[key] = FitSpec(sweep=manifest.name, image_uri=uri, dataset=image_set.dataset, signal=signal,
                                     impulse=image_set.impulse, experiment=manifest.experiment, key=key, **content)
    return list(specs.values())


# --- loading ---------------------------------------------------------------------------------------


def _duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> Iterator[Problem]:
    """Keys given twice in one mapping (yaml would keep the last one silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for k, v in node.value:
            if k.value in seen:
                yield loc + (k.value,), f"key given twice (again on line {k.start_mark.line + 1})"
            seen.add(k.value)
            yield from _duplicate_keys(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, loc + (i,))


MAX_EXPANDED_NODES = 100_000  # far above any real manifest; aliases can otherwise expand exponentially


def _check_expanded_size(root: yaml.Node | None, label: str) -> None:
    """Refuse recursive aliases and documents whose aliases expand beyond MAX_EXPANDED_NODES
    ("billion laughs"): validation walks the expanded tree."""
    count = 0
    stack: list[tuple[yaml.Node, tuple[int, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, ancestors = stack.pop()
        count += 1
        if id(node) in ancestors:
            raise ManifestError([f"{label}:{node.start_mark.line + 1}: YAML alias refers to a node that contains it"])
        if count > MAX_EXPANDED_NODES:
            raise ManifestError([f"{label}: YAML aliases expand to more than {MAX_EXPANDED_NODES} values"])
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        stack += [(child, ancestors + (id(node),)) for child in children]


def _parse(text: str, label: str) -> tuple[Any, yaml.Node | None]:
    """The data and node tree of one YAML document (safe loader), syntax errors with their line."""
    try:
        loader = yaml.SafeLoader(text)  # checks the characters first
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, err.position) + 1
        raise ManifestError([f"{label}:{line}: not YAML text: character #x{err.character:04x} is not allowed"]) from None
    try:
        node = loader.get_single_node()
        _check_expanded_size(node, label)
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{label}:{mark.line + 1}" if mark else label
        raise ManifestError([f"{where}: YAML syntax error: {err.problem or err.context}"]) from None
    finally:
        loader.dispose()


def load_manifest(source: str | Path) -> Manifest:
    """Read and validate a manifest from a file (a Path, or a one-line str) or from YAML text.

    Raises ManifestError listing every problem found, one ``FILE:LINE: field.path: message``
    per line (no line when the field is absent from the file).
    """
    if isinstance(source, Path) or "\n" not in source:
        label = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as err:
            raise ManifestError([f"{label}: cannot read manifest: {err.strerror or err}"]) from None
        except UnicodeDecodeError as err:
            raise ManifestError([f"{label}: not UTF-8 text (byte {err.start})"]) from None
    else:
        label, text = "<manifest>", source
    return parse_manifest(text, label)


def parse_manifest(text: str, label: str) -> Manifest:
    """Validate manifest YAML text; `label` (a file name or URI) starts every error line."""
    data, root = _parse(text, label)
    located = _Source(label, root)
    problems = list(_duplicate_keys(root))
    if not isinstance(data, dict):
        raise located.error(problems + [((), "a manifest is a YAML mapping (name, images, tasks, model, ...)")])
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        problems += [(tuple(e["loc"]), _message(e)) for e in err.errors()]
    if problems:
        raise located.error(problems)
    manifest._source = located
    return manifest


def _message(error: Any) -> str:
    """Pydantic's message, reworded where the manifest's reader needs different words."""
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "too_short":
        return "empty list: give at least one value"
    if error["type"] == "string_pattern_mismatch":
        return f"{error['input']!r} is not a slug: use lower-case letters, digits, _ and -"
    return _clean_message(error["msg"])


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema, for editors' completion and checking of YAML manifests."""
    return Manifest.model_json_schema()
