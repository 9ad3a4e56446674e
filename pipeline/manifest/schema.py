"""The manifest's schema: the pydantic models a person's YAML is validated against, and FitSpec,
the fully resolved fit that `expand` makes of them.

Pydantic validates the structure and, per field, the names and types of the settings; once the
structure is sound, every network/fit configuration the grid produces is built once
(`grid.resolve`), so the dataclasses' own checks fail at validation and the configurations are
kept for expansion.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dipmodel.classical import METHOD_TASKS, ClassicalConfig
from dipmodel.fit import FitConfig
from dipmodel.networks import ONE_D, NetConfig
from dipmodel.operators import TASK_PARAMS, needed_params
from pipeline import datasets
from pipeline.images import SAMPLE_PREFIX
from pipeline.locations import location_problem
from pipeline.manifest.errors import (
    Loc,
    ManifestError,
    Problem,
    Source,
    loc_path,
    raise_if,
    validated,
)
from pipeline.manifest.grid import (
    FIT_ADAPTER,
    FIT_TYPES,
    NET_ADAPTER,
    NET_TYPES,
    Configuration,
    check_settings,
    resolve,
    settings,
)
from pipeline.manifest.keys import canonical

_PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The operators' parameters (dipmodel.operators.TASK_PARAMS), and C&M App. E (C8)'s measurement:
# no fit; the model's upsampling layer is measured on an impulse against its closed form.
_TASK_PARAMS: dict[str, dict[str, Any]] = {t: {p.name: p.type for p in ps} for t, ps in TASK_PARAMS.items()} | {
    "upsampling_response": {"stride": PositiveInt}
}
Task = Literal[tuple(_TASK_PARAMS)]  # type: ignore[valid-type]  # built from the task table
_PARAM_ADAPTERS = {t: {p: TypeAdapter(typ) for p, typ in ps.items()} for t, ps in _TASK_PARAMS.items()}
_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_SCALAR_OR_LIST_SCHEMA: dict[str, Any] = {"anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}]}


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
        if any(b <= a for a, b in zip(self.freqs, self.freqs[1:], strict=False)):
            problems.append((("freqs",), "frequencies must increase (se_1, converged_k1 are the lowest)"))
        half = f"length/2 = {self.length / 2:g}"
        problems += [
            (("freqs", i), f"frequency {k} is not below {half} (SE(k) needs 0 < k < length/2)")
            for i, k in enumerate(self.freqs)
            if 2 * k >= self.length
        ]
        if self.amplitudes is not None and len(self.amplitudes) != len(self.freqs):
            problems.append((("amplitudes",), f"give one amplitude per frequency ({len(self.freqs)})"))
        raise_if(problems, "SignalSpec")
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
        amplitudes = canonical(self.amplitude_list())
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
        raise_if(bad, "ImageSet.sample")
        return names

    @field_validator("dataset")
    @classmethod
    def _dataset_is_one_folder(cls, name: str | None) -> str | None:
        if name is not None and not _PATH_COMPONENT.fullmatch(name):
            raise PydanticCustomError(
                "manifest",
                "a data set is one folder name under the data root (letters, digits, . _ -), not {name!r}",
                {"name": name},
            )
        return name

    @field_validator("files")
    @classmethod
    def _files_stay_inside(cls, names: list[str] | None) -> list[str] | None:
        raise_if(
            [((j,), problem) for j, n in enumerate(names or []) if (problem := _escape_problem(n))], "ImageSet.files"
        )
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
            raise_if(
                [
                    ((f,), "applies to images, not to a 1-D signal")
                    for f in ("downsample", "crop", "grey")
                    if getattr(self, f)
                ],
                "ImageSet",
            )
        if self.grey is None:  # the data set's convention, e.g. LIVE1 is evaluated on the Y channel
            known = datasets.registry().get(self.dataset or "")
            self.grey = known is not None and known.grey
        return self


class TaskSpec(BaseModel):
    """A task and its degradation parameters; a list value is an axis of the grid."""

    model_config = ConfigDict(extra="forbid")

    task: Task  # type: ignore[valid-type]
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
                v, found = validated(known[name], v, loc + (j,) if is_axis else loc)
                values.append(v)
                problems += found
            self.params[name] = values if is_axis else values[0]
        if not problems:
            problems = [(("params",), msg) for msg in dict.fromkeys(self._combination_problems())]
        raise_if(problems, "TaskSpec")
        return self

    def combinations(self) -> list[dict[str, Any]]:
        """Every setting of the parameters: the Cartesian product of the list-valued ones."""
        axes = [[(k, x) for x in v] if isinstance(v, list) else [(k, v)] for k, v in self.params.items()]
        return [dict(point) for point in itertools.product(*axes)]

    def _combination_problems(self) -> Iterator[str]:
        """Every parameter must be given (no hidden operator defaults enter a key)."""
        for combo in self.combinations():
            needed = set(needed_params(self.task, combo) if self.task in TASK_PARAMS else _TASK_PARAMS[self.task])
            if missing := sorted(needed - set(combo)):
                yield f"task {self.task} needs parameter(s) {', '.join(missing)}"
            if extra := sorted(set(combo) - needed):
                yield f"parameter(s) {', '.join(extra)} do not apply to kind {combo['kind']}"


class MlflowSpec(BaseModel):
    """Where fits are tracked; storage stays the source of truth."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (tracking.default_tracking_uri)"
    )
    experiment: str | None = Field(None, description="default: the manifest name")
    enabled: bool = True
    trajectory_images: NonNegativeInt = Field(
        24,
        description="stored snapshots logged per fit as step-indexed images (the MLflow UI's image slider), "
        "evenly spread over the trajectory; 0 for none. Storage keeps every snapshot",
    )
    max_metric_points: NonNegativeInt | None = Field(
        100,
        description="points per per-iteration metric logged per fit: rows evenly spread from the first to the "
        "last, plus those at the oracle best and the auto-stop; null for every row, 0 for none. The MLflow server "
        "spends about 0.13 ms of CPU per point, so every row of a 10,000-iteration fit costs seconds per fit "
        "(docs/performance.md). Storage keeps every row",
    )


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
        raise_if(
            [((name,), "a resource amount must be positive") for name, n in amounts.items() if not n > 0],
            "Resources.custom",
        )
        return amounts


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
        description=(
            "NetConfig fields (name, width, depth, upsample, up_sigma, norm, lam, input, bound_head, detach_sigma, ...)"
        ),
        json_schema_extra=_names_schema(NET_TYPES),
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Cartesian axes over NetConfig/FitConfig fields, e.g. lam: [null, 2]",
        json_schema_extra=_names_schema(NET_TYPES | FIT_TYPES),
    )
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of equally long lists that vary together; each group is one axis"
    )
    seeds: list[NonNegativeInt] | None = Field(None, min_length=1, description="default [0]")
    repeats: PositiveInt | None = Field(None, description="seeds 0..repeats-1 (instead of seeds)")
    fit: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "FitConfig fields except seed (iterations, lr, metric_stride, ...), and the method: dip "
            "(default) or a classical reference (bm3d, bicubic, tv, with tv_weight, tv_iterations)"
        ),
        json_schema_extra=_names_schema(FIT_TYPES),
    )
    storage: str | None = Field(None, description="results URI; default file://<cwd>/results/<name>")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. an S3 endpoint")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    resources: Resources = Field(default_factory=Resources)

    _source: Source | None = PrivateAttr(default=None)
    _configurations: list[Configuration] = PrivateAttr(default_factory=list)

    @field_validator("data_root")
    @classmethod
    def _default_data_root(cls, value: str | None) -> str:
        return value or os.environ.get("DIP_DATA_ROOT") or "./data"

    @field_validator("model", "fit")
    @classmethod
    def _check_section(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """``model`` takes NetConfig's fields, ``fit`` FitConfig's and the method's, by name and type."""
        section = str(info.field_name)
        out, problems = check_settings(value, NET_TYPES if section == "model" else FIT_TYPES, section, axes=False)
        raise_if(problems, section)
        return out

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out, problems = check_settings(value, NET_TYPES | FIT_TYPES, "grid", axes=True)
        raise_if(problems, "grid")
        return out

    @field_validator("zip")
    @classmethod
    def _check_zip(cls, groups: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        out, problems = [], []
        for i, group in enumerate(groups):
            checked, found = check_settings(group, NET_TYPES | FIT_TYPES, "zip", axes=True, at=(i,))
            out.append(checked)
            problems += found
            lengths = {k: len(v) for k, v in group.items()}
            if not group:
                problems.append(((i,), "a zip group needs at least one field"))
            elif len(set(lengths.values())) > 1:
                sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                problems.append(((i,), f"zip group {i} has lists of unequal length ({sizes})"))
        raise_if(problems, "zip")
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
                problems.append((loc, f"{field} is already set at {loc_path(seen[field])}"))
            seen[field] = loc
        if not problems:
            problems = self._config_problems() or self._input_problems()
        raise_if(problems, "Manifest")
        if self.storage is None:
            self.storage = f"file://{Path.cwd()}/results/{self.name}"
        raise_if(list(self._location_problems()), "Manifest")
        if self.mlflow.experiment is None:
            self.mlflow.experiment = self.name
        return self

    @property
    def storage_uri(self) -> str:
        """Where the fits are stored: ``storage``, which validation has filled in when it was omitted."""
        if self.storage is None:
            raise ValueError(f"manifest {self.name}: storage read before validation set its default")
        return self.storage

    def written(self, field: str) -> bool:
        """Whether the manifest itself sets a top-level field (validation fills in some defaults)."""
        if self._source is not None and self._source.root is not None:
            return self._source.line((field,)) is not None
        return field in self.model_fields_set

    def _location_problems(self) -> Iterator[Problem]:
        """Storage, data root and image URIs: no '..', and under $DIP_ALLOWED_ROOTS when it is set."""
        places: list[tuple[Loc, str]] = [(("storage",), self.storage or ""), (("data_root",), self.data_root or "")]
        places += [
            (("images", i, "uris", j), uri)
            for i, images in enumerate(self.images)
            for j, uri in enumerate(images.uris or [])
            if not uri.startswith(SAMPLE_PREFIX)
        ]
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

    def _config_problems(self) -> list[Problem]:
        """Resolve the grid, once: its configurations are kept for `configurations` and `expand`."""
        self._configurations = [resolve(s) for s in settings(self.model, self.fit, self.grid, self.zip)]
        return list(dict.fromkeys(p for c in self._configurations for p in c.problems))

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
        problems += [
            (("images", i, "impulse"), f"an impulse takes task upsampling_response only; tasks[{j}] is {task.task}")
            for i in impulses
            for j, task in enumerate(self.tasks)
            if j not in measuring
        ]
        problems += [
            (
                ("tasks", j, "task"),
                f"upsampling_response measures a layer on an impulse; images[{i}] "
                "is not one (give images: [{impulse: 64}])",
            )
            for j in measuring
            for i in signals + pictures
        ]
        if impulses:  # the network's other fields do not matter to a layer, but it is one layer
            problems += [
                (loc, "upsampling_response measures one upsampling layer: give one up_sigma, not one per layer")
                for setting in self._points()
                for sigma, loc in [setting.get("up_sigma", (0.5, ()))]
                if isinstance(sigma, tuple)
            ]
            return list(dict.fromkeys(problems))
        for setting in self._points():
            method, method_loc = setting.get("method", ("dip", ()))
            restores = METHOD_TASKS.get(method, ())
            problems += [
                (method_loc, f"method {method} restores {', '.join(restores)} only; tasks[{j}] is {task.task}")
                for j, task in enumerate(self.tasks)
                if method != "dip" and task.task not in restores
            ]
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

    def _points(self) -> list[dict[str, tuple[Any, Loc]]]:
        """Every grid point as field -> (value, where the manifest set it)."""
        return [c.setting for c in self._configurations]

    def configurations(self) -> list[Configuration]:
        """The resolved grid points in grid order (fit.seed is set per spec), from validation."""
        return self._configurations

    def side_multiple(self) -> int:
        """What every network of the manifest needs image sides to be multiples of: classical
        methods crop to it too, so they restore exactly the pixels the networks do."""
        return math.lcm(*(NET_ADAPTER.validate_python(c.network).side_multiple() for c in self._configurations))

    def error(self, problems: list[Problem]) -> ManifestError:
        """A ManifestError for problems found after validation, with lines when loaded from YAML."""
        return (self._source or Source("<manifest>", None)).error(problems)


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
        return NET_ADAPTER.validate_python(self.network)

    def fit_config(self) -> FitConfig:
        return FIT_ADAPTER.validate_python(self.fit)

    def classical_config(self) -> ClassicalConfig:
        return ClassicalConfig(method=self.method or "dip", **self.fit)


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema, for editors' completion and checking of YAML manifests."""
    return Manifest.model_json_schema()
