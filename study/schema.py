"""The schema of a search space, on pydantic: every section is a model that rejects
unknown keys, values carry their bounds, and one formatter turns pydantic's errors into
the space's one-line messages ``<file>: <key path>: <what is wrong>, got <value>``.

The public face is :mod:`study.space` (``load_space``, ``validate_space``, trial
expansion); this module holds the models it returns: :class:`Space` and its sections
:class:`DatasetSpec`, :class:`ModelSpec`, :class:`SearchSpec`, :class:`SchedulerSpec`,
:class:`ResourceSpec`, :class:`FailureSpec`, and the :class:`ParamSpec` of each model
param and training key. Model params are checked per model (the keys its constructor
takes, ``ae4ad.models.MODEL_PARAMS``) and data set params against the data source's
signature, both through models built from the registries.

Example:
    >>> from study.schema import parse_space
    >>> space = parse_space({"name": "t", "datasets": [{"name": "phantom"}],
    ...     "models": [{"name": "ae", "params": {"latent_dim": [2, 4]}}],
    ...     "resources": {"gpu_per_trial": 1}})
    Traceback (most recent call last):
    ...
    study.schema.SpaceError: <space>: resources.gpu_per_trial: unknown key; did you mean \
'gpus_per_trial'?
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ae4ad.metrics import METRICS, OBJECTIVES, suggest
from study.params import (
    MODEL_PARAM_RULES,
    NONNEG_INT,
    TRAINING_RULES,
    ParamSpec,
    Rule,
    Section,
    expect,
    fail,
    format_error,
    number,
    range_kind,
    rule_for,
    spec_type,
    specs_yaml,
)

__all__ = [
    "DATA_ROOT_ENV",
    "DatasetSpec",
    "FailureSpec",
    "LoggingSpec",
    "MODEL_PARAM_RULES",
    "ModelSpec",
    "ParamSpec",
    "ResourceSpec",
    "Rule",
    "SchedulerSpec",
    "SearchSpec",
    "Space",
    "SpaceError",
    "Stratum",
    "TRAINING_RULES",
    "format_error",
    "parse_space",
]

DATA_ROOT_ENV = "AE4AD_DATA"
FALLBACK_MODELS = ("ae", "vae", "memae", "ceae", "constrained_ae", "ae_spatial")
FALLBACK_SOURCES = ("digits", "medianomaly", "medmnist", "phantom")
AUTO_GPUS = 0.25  # gpus_per_trial "auto" on a cluster with GPUs
# URI schemes of storage_path that Ray Tune takes (through pyarrow.fs); file:// is local.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
# Model constructor arguments that the harness fills in from the data set.
DATA_DEFINED_PARAMS = ("image_size", "in_channels")


class SpaceError(ValueError):
    """A search space cannot be used as written: a one-line message naming the file,
    the key path, what is wrong and the offending value."""


# --------------------------------------------------------------------------- sections


class _TrainingBase(Section):
    _expects = "expected a mapping of training keys"


_Training = create_model(
    "_Training",
    __base__=_TrainingBase,
    **{key: (spec_type(rule), None) for key, rule in TRAINING_RULES.items()},
)


def _training(raw: Any) -> dict[str, ParamSpec]:
    section = _Training.model_validate(raw)
    return {key: getattr(section, key) for key in (raw or {})}


TrainingSpecs = Annotated[
    dict[str, ParamSpec], PlainValidator(_training), PlainSerializer(specs_yaml)
]


class SearchSpec(Section):
    """``type`` grid | optuna; ``sampler``, ``n_trials`` (per stratum) and ``seed`` are
    set for optuna only (None under grid)."""

    _expects = "expected a mapping of search settings"
    type: Annotated[
        Literal["grid", "optuna"], expect("unknown search type (allowed: grid, optuna)")
    ] = "grid"
    sampler: Annotated[
        Literal["tpe", "random", "cmaes"], expect("unknown sampler (allowed: tpe, random, cmaes)")
    ] = None
    n_trials: Annotated[
        StrictInt, Field(ge=1), expect("expected a positive integer (trials per stratum)")
    ] = None
    seed: Annotated[StrictInt, Field(ge=0), expect("expected an integer >= 0")] = None

    @model_validator(mode="after")
    def _optuna_defaults(self) -> SearchSpec:
        if self.type == "optuna":
            self.sampler = self.sampler or "tpe"
            self.n_trials = 20 if self.n_trials is None else self.n_trials
            self.seed = 0 if self.seed is None else self.seed
            if self.sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
                fail(
                    ("sampler",),
                    "the cmaes sampler needs the package 'cmaes' (pip install cmaes)",
                    self.sampler,
                )
        return self


def _metric(value: Any) -> str:
    if value not in OBJECTIVES:
        close = suggest(str(value))
        hint = f"did you mean {close!r}?" if close else "allowed: " + ", ".join(OBJECTIVES)
        fail((), f"unknown metric ({hint})", value)
    return value


class SchedulerSpec(Section):
    """``type`` none | asha. ``metric``/``mode`` are also the Optuna objective; ``mode``
    defaults to the metric's direction in :data:`ae4ad.metrics.METRICS`."""

    _expects = "expected a mapping of scheduler settings"
    type: Annotated[
        Literal["none", "asha"],
        BeforeValidator(lambda v: "none" if v is None else v),
        expect("unknown scheduler (allowed: none, asha)"),
    ] = "none"
    metric: Annotated[str, PlainValidator(_metric)] = "auc"
    mode: Annotated[Literal["max", "min"], expect("expected max or min")] = None
    grace_period: Annotated[
        StrictInt, Field(ge=1), expect("expected a positive integer (epochs)")
    ] = 10
    reduction_factor: Annotated[number(gt=1), expect("expected a number > 1")] = 3

    @model_validator(mode="after")
    def _asha_keys(self) -> SchedulerSpec:
        if self.type == "none":
            for key in ("grace_period", "reduction_factor"):
                if key in self.model_fields_set:
                    fail(
                        (key,),
                        "only used when scheduler.type is asha (set scheduler.type: asha)",
                        getattr(self, key),
                    )
        if self.mode is None:
            self.mode = METRICS[self.metric].direction
        return self


def _whole_gpus_above_one(gpus: Any) -> Any:
    if gpus != "auto" and gpus > 1 and not float(gpus).is_integer():
        fail((), "fractions are allowed only below 1 (Ray)", gpus)
    return gpus


class ResourceSpec(Section):
    """Ray resources per trial; ``gpus_per_trial`` is a number or "auto"; ``fuse``: how
    a grid's trials are fused into bundles (auto, off or K; see :mod:`study.fusion`)."""

    _expects = "expected a mapping of resource settings"
    cpus_per_trial: Annotated[number(gt=0), expect("expected a positive number")] = 1
    gpus_per_trial: Annotated[
        Literal["auto"] | number(ge=0),
        expect("expected a number >= 0 or auto"),
        AfterValidator(_whole_gpus_above_one),
    ] = "auto"
    max_concurrent_trials: Annotated[
        None | Annotated[StrictInt, Field(ge=1)],
        expect("expected a positive integer or null"),
    ] = None
    fuse: Annotated[
        Literal["auto", "off"] | Annotated[StrictInt, Field(ge=1)],
        BeforeValidator(
            lambda v: {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v
        ),
        expect("expected auto, off or a bundle size >= 1"),
    ] = "auto"
    custom: Annotated[
        dict[StrictStr, Annotated[number(ge=0), expect("expected a number >= 0")]],
        BeforeValidator(lambda v: {} if v is None else v),
        expect("expected a mapping of custom Ray resources", nested=True),
    ] = Field(default_factory=dict)

    def resolve_gpus(self, cluster_gpus: float) -> float:
        """GPUs per trial on a cluster with ``cluster_gpus`` GPUs in all.

        >>> ResourceSpec(gpus_per_trial="auto").resolve_gpus(0)
        0.0
        >>> ResourceSpec(gpus_per_trial="auto").resolve_gpus(4)
        0.25
        """
        if self.gpus_per_trial == "auto":
            return AUTO_GPUS if cluster_gpus > 0 else 0.0
        return float(self.gpus_per_trial)

    @property
    def threads(self) -> int:
        """Torch threads per trial."""
        return max(1, int(self.cpus_per_trial))


class FailureSpec(Section):
    """``max_failures``: how often Ray retries a failing trial."""

    _expects = "expected a mapping of failure settings"
    max_failures: Annotated[StrictInt, Field(ge=0), expect("expected an integer >= 0")] = 0


TRACKERS = ("mlflow", "tensorboard", "wandb")


def _text_or_null(what: str) -> Any:
    return Annotated[None | StrictStr, expect(f"expected {what} or null")]


class MlflowSpec(Section):
    """MLflow: ``tracking_uri`` (default ``sqlite:///<run dir>/mlflow.db``) and
    ``experiment`` (default: the study's name)."""

    _expects = "expected a mapping of MLflow settings (tracking_uri, experiment)"
    tracking_uri: _text_or_null(
        "a tracking URI such as sqlite:///mlflow.db or http://host:5000"
    ) = None
    experiment: _text_or_null("an experiment name") = None


class TensorboardSpec(Section):
    """TensorBoard: ``logdir`` (default ``<run dir>/tensorboard``), one folder per trial."""

    _expects = "expected a mapping of TensorBoard settings (logdir)"
    logdir: _text_or_null("a folder") = None


class WandbSpec(Section):
    """Weights & Biases: ``project`` (default: the study's name), ``entity``, ``group``
    (default: the study's name) and ``mode`` (offline: written under the run folder)."""

    _expects = "expected a mapping of W&B settings (project, entity, group, mode)"
    project: _text_or_null("a project name") = None
    entity: _text_or_null("an entity (user or team)") = None
    group: _text_or_null("a group name") = None
    mode: Annotated[
        Literal["offline", "online", "disabled"],
        expect("unknown mode (allowed: offline, online, disabled)"),
    ] = "offline"


class LoggingSpec(Section):
    """Experiment trackers fed by Ray Tune's logger callbacks (:mod:`study.trackers`):
    ``trackers`` lists those to use (``--log`` adds more); the other keys configure them."""

    _expects = "expected a mapping of logging settings (trackers, mlflow, tensorboard, wandb)"
    trackers: Annotated[
        list[
            Annotated[
                Literal["mlflow", "tensorboard", "wandb"],
                expect("unknown tracker (allowed: " + ", ".join(TRACKERS) + ")"),
            ]
        ],
        BeforeValidator(lambda v: [] if v is None else v),
        AfterValidator(lambda v: list(dict.fromkeys(v))),
        expect("expected a list of trackers (" + ", ".join(TRACKERS) + ")", nested=True),
    ] = Field(default_factory=list)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    tensorboard: TensorboardSpec = Field(default_factory=TensorboardSpec)
    wandb: WandbSpec = Field(default_factory=WandbSpec)


# --------------------------------------------------------------------------- registries


def _model_registry() -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(model names, per-model {param: default}); the fixed lists when ae4ad.models
    cannot be imported. Parameters that come from the data are left out."""
    try:
        models_module = importlib.import_module("ae4ad.models")
    except ImportError:
        return list(FALLBACK_MODELS), {}
    names = list(getattr(models_module, "MODELS", None) or FALLBACK_MODELS)
    per_model: dict[str, dict[str, Any]] = {}
    for model, params in dict(getattr(models_module, "MODEL_PARAMS", None) or {}).items():
        defaults = dict(params) if isinstance(params, Mapping) else dict.fromkeys(params)
        per_model[str(model)] = {k: v for k, v in defaults.items() if k not in DATA_DEFINED_PARAMS}
    return names, per_model


def _source_registry() -> dict[str, Callable | None]:
    """Data source name -> loader (None when only the fixed list is known)."""
    try:
        registry = dict(getattr(importlib.import_module("ae4ad.data"), "DATA_SOURCES", {}))
    except ImportError:
        registry = {}
    return registry or dict.fromkeys(FALLBACK_SOURCES)


def _registry(context: Mapping[str, Any] | None, name: str) -> Any:
    """The model or source registry of a validation (read afresh without a context)."""
    if context and name in context:
        return context[name]
    return _model_registry() if name == "models" else _source_registry()


class _ModelParams(Section):
    _expects = "expected a mapping of model params"
    _hidden_keys = frozenset(DATA_DEFINED_PARAMS)


def _set_by_data(key: str) -> Any:
    def refuse(value: Any) -> Any:
        fail((), f"set by the data (give datasets[i].params.{key} instead)", value)

    return Annotated[Any, PlainValidator(refuse)]


@lru_cache(maxsize=256)
def _params_model(model: str, params: tuple[tuple[str, Rule], ...]) -> type[Section]:
    """The schema of one model's params: its own keys, each a spec of its value rule."""
    fields: dict[str, Any] = {
        f"p{i}": (spec_type(rule), Field(None, alias=key)) for i, (key, rule) in enumerate(params)
    }
    for key in DATA_DEFINED_PARAMS:
        fields[f"data_{key}"] = (_set_by_data(key), Field(None, alias=key))
    return create_model(f"Params_{model}", __base__=_ModelParams, **fields)


def _accepts_sequence(hint: Any) -> bool:
    """Whether a type hint takes a tuple, list or sequence (then a YAML list is one
    fixed value, e.g. a (low, high) pair)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts_sequence(arg) for arg in typing.get_args(hint))
    return (origin or hint) in (tuple, list, abc.Sequence, typing.Sequence)


class _SourceParams(Section):
    _expects = "expected a mapping of data set params"


def _fixed_value(takes_sequence: bool) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, dict) or (isinstance(value, list) and not takes_sequence):
            fail(
                (),
                "data sets are built once, so their params take one fixed value "
                "(add another datasets entry to vary it)",
                value,
            )
        return value

    return Annotated[Any, PlainValidator(check)]


@lru_cache(maxsize=64)
def _source_model(loader: Callable) -> type[Section] | None:
    """The schema of a data source's params: the keyword parameters of its loader (as
    ``ae4ad.data.load_dataset`` accepts them; a ``**kwargs`` adds none); None when the
    signature cannot be read."""
    try:
        signature = inspect.signature(loader)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(loader)
    except Exception:  # noqa: BLE001  (an annotation that does not resolve: no sequences)
        hints = {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in signature.parameters.values() if p.kind in kinds]
    fields = {
        f"p{i}": (_fixed_value(_accepts_sequence(hints.get(name))), Field(None, alias=name))
        for i, name in enumerate(names)
    }
    name = getattr(loader, "__name__", "source")
    return create_model(f"Source_{name}", __base__=_SourceParams, **fields)


def _validated_keys(section: BaseModel, raw: Mapping[str, Any]) -> dict[str, Any]:
    """{given key: validated value} of a section whose fields are aliased by key."""
    by_key = {f.alias: getattr(section, name) for name, f in type(section).model_fields.items()}
    return {key: by_key[key] for key in raw}


_Label = Annotated[
    StrictStr,
    Field(pattern=r"^[A-Za-z0-9_.+-]+$"),
    expect("expected a label made of letters, digits, '_', '.', '+', '-'"),
]


def _source_name(value: Any, info: ValidationInfo) -> str:
    sources = _registry(info.context, "sources")
    if value not in sources:
        fail((), f"unknown dataset source (allowed: {', '.join(sorted(sources))})", value)
    return value


def _model_name(value: Any, info: ValidationInfo) -> str:
    names = _registry(info.context, "models")[0]
    if value not in names:
        fail((), f"unknown model (allowed: {', '.join(names)})", value)
    return value


class DatasetSpec(Section):
    """One data set: an ae4ad data source ``name``, its ``label`` in results, fixed
    ``params``, and optional per-data-set ``training`` specs that replace the study's."""

    _expects = "expected a mapping with name (and label, params)"
    name: Annotated[str, PlainValidator(_source_name)]
    label: _Label = None
    params: Annotated[dict[str, Any], expect("expected a mapping of data set params")] = Field(
        default_factory=dict
    )
    training: TrainingSpecs = Field(default_factory=dict)

    @classmethod
    def _missing(cls, key: str, context: Mapping[str, Any]) -> str:
        return "missing (a data source: " + ", ".join(sorted(_registry(context, "sources"))) + ")"

    @field_validator("params")
    @classmethod
    def _source_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        loader = _registry(info.context, "sources").get(info.data.get("name"))
        schema = _source_model(loader) if loader is not None else None
        if schema is not None:
            _validated_keys(schema.model_validate(params), params)
        return params

    @model_validator(mode="after")
    def _label_and_data(self, info: ValidationInfo) -> DatasetSpec:
        self.label = self.label or self.name
        if (info.context or {}).get("check_data", True):
            _check_data_root(self.name, self.params)
        return self


def _check_data_root(source: str, params: Mapping[str, Any]) -> None:
    path = params.get("path")
    if path is not None and (not isinstance(path, str) or not Path(path).expanduser().exists()):
        fail(("params", "path"), "no such file or folder", path)
    root = params.get("root")
    if root is not None:
        if not isinstance(root, str) or not Path(root).expanduser().is_dir():
            fail(("params", "root"), "no such folder", root)
        return
    if source != "medianomaly":
        return
    env = os.environ.get(DATA_ROOT_ENV)
    if not env:
        fail(
            ("params", "root"),
            f"medianomaly needs the MedIAnomaly-Data folder: set params.root or the "
            f"environment variable {DATA_ROOT_ENV}",
            None,
        )
    if not Path(env).expanduser().is_dir():
        fail(("params", "root"), f"the environment variable {DATA_ROOT_ENV} names no folder", env)


class ModelSpec(Section):
    """One model: an ae4ad registry ``name``, its ``label`` in results, param specs."""

    _expects = "expected a mapping with name (and label, params)"
    name: Annotated[str, PlainValidator(_model_name)]
    label: _Label = None
    params: Annotated[
        dict[str, Any],
        expect("expected a mapping of model params"),
        PlainSerializer(specs_yaml),
    ] = Field(default_factory=dict)

    @classmethod
    def _missing(cls, key: str, context: Mapping[str, Any]) -> str:
        return "missing (a model: " + ", ".join(_registry(context, "models")[0]) + ")"

    @field_validator("params")
    @classmethod
    def _model_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "name" not in info.data:
            return params
        model = info.data["name"]
        names, per_model = _registry(info.context, "models")
        defaults = per_model.get(model, dict.fromkeys(MODEL_PARAM_RULES))
        rules = tuple((key, rule_for(key, default)) for key, default in defaults.items())
        return _validated_keys(_params_model(model, rules).model_validate(params), params)

    @model_validator(mode="after")
    def _default_label(self) -> ModelSpec:
        self.label = self.label or self.name
        return self


def _unique_labels(entries: list, section: str) -> list:
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.label in seen:
            fail(
                (i, "label"),
                f"duplicate label ({section}[{seen[entry.label]}] has it too; give each a "
                "distinct label)",
                entry.label,
            )
        seen[entry.label] = i
    return entries


def _study_name(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not re.fullmatch(r"[A-Za-z0-9_.-]+", value)
        or (value in (".", ".."))
    ):
        fail((), "expected a study name made of letters, digits, '_', '.', '-'", value)
    return value


def _storage(value: Any) -> Path | str:
    """A local folder (resolved from the current folder) or a URI Ray Tune takes:
    ``s3://``, ``gs://``, ... stay URIs; ``file:///path`` is the local folder /path."""
    if not isinstance(value, str) or not value.strip():
        fail((), "expected a folder path or a URI such as s3://bucket/runs", value)
    uri = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if uri is None:
        return (Path.cwd() / Path(value).expanduser()).resolve()
    scheme, parsed = uri.group(1).lower(), urlparse(value)
    if scheme not in STORAGE_SCHEMES:
        fail((), f"unknown URI scheme {scheme!r} (allowed: {', '.join(STORAGE_SCHEMES)})", value)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            fail((), "a file URI names an absolute local folder: file:///path", value)
        return Path(parsed.path).resolve()
    if not parsed.netloc:
        fail((), f"expected {scheme}://<bucket or host>/<path>", value)
    return value.rstrip("/")


def _seeds(raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            fail((), "a count of seeds must be positive", raw)
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        fail((), "expected a non-empty list of integers >= 0, or a count n (seeds 0..n-1)", raw)
    for i, seed in enumerate(raw):
        NONNEG_INT.validate(seed, (i,))
        if seed in raw[:i]:
            fail((i,), "duplicate seed", seed)
    return list(raw)


def _entries(what: str) -> Any:
    return expect(f"expected a non-empty list of {what} (each with name and params)", nested=True)


class Space(Section):
    """A validated search space (see the module docstring and docs/search_spaces.md)."""

    _expects = "not valid YAML: the top level must be a mapping"
    name: Annotated[str, PlainValidator(_study_name)] = Field(
        description="a study name made of letters, digits, '_', '.', '-'"
    )
    description: Annotated[
        str, BeforeValidator(lambda v: "" if v is None else v), expect("expected a string")
    ] = ""
    storage_path: Annotated[Path | str, PlainValidator(_storage), PlainSerializer(str)] = Field(
        "runs", validate_default=True
    )
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    training: TrainingSpecs = Field(default_factory=dict)
    datasets: Annotated[list[DatasetSpec], Field(min_length=1), _entries("data sets")] = Field(
        description="a list of data sets (each with name and params)"
    )
    models: Annotated[list[ModelSpec], Field(min_length=1), _entries("models")] = Field(
        description="a list of models (each with name and params)"
    )
    seeds: Annotated[list[int], PlainValidator(_seeds)] = Field(default_factory=lambda: [0])
    _path: Path | None = PrivateAttr(None)
    # where the tables go when storage_path is a URI: ./runs of the validating process
    _local_runs: Path = PrivateAttr(default_factory=lambda: Path.cwd().resolve() / "runs")

    @model_validator(mode="before")
    @classmethod
    def _grid_or_optuna(cls, raw: Any, info: ValidationInfo) -> Any:
        """The rules of a grid search, checked on the YAML as written: no Optuna
        settings, no ranges (Optuna samples ranges; a grid needs listed values). Also the
        study name defaults to the file name."""
        if not isinstance(raw, dict):
            return raw
        path = (info.context or {}).get("path")
        if "name" not in raw and path is not None:
            raw = {"name": path.stem, **raw}
        search = raw.get("search")
        search = search if isinstance(search, dict) else {}
        if search.get("type", "grid") != "grid":
            return raw
        for key in ("sampler", "n_trials", "seed"):
            if key in search:
                fail(
                    ("search", key),
                    "only used when search.type is optuna (set search.type: optuna)",
                    search[key],
                )
        for loc, spec in _written_specs(raw):
            if range_kind(spec):
                fail(
                    loc,
                    "a range needs search.type: optuna (under grid give a list of values)",
                    spec,
                )
        return raw

    @field_validator("datasets", "models")
    @classmethod
    def _unique_labels(cls, entries: list, info: ValidationInfo) -> list:
        return _unique_labels(entries, info.field_name)

    @property
    def path(self) -> Path | None:
        """The YAML file the space was read from (None when validated from a dict)."""
        return self._path

    @property
    def max_failures(self) -> int:
        return self.failure.max_failures

    @property
    def storage_is_uri(self) -> bool:
        """Whether ``storage_path`` is a URI (s3://, gs://, ...) rather than a folder."""
        return isinstance(self.storage_path, str)

    @property
    def run_dir(self) -> Path:
        """The run folder of the tables and the report: ``<storage_path>/<name>``; with
        a URI storage path, ``./runs/<name>`` (the current folder when the space was
        validated) on the driver, Ray Tune's storage being the URI."""
        if self.storage_is_uri:
            return self._local_runs / self.name
        return self.storage_path / self.name

    def training_for(self, dataset: DatasetSpec) -> dict[str, ParamSpec]:
        """The training specs of one data set: the study's, replaced key by key by the
        data set's own ``training`` block."""
        return {**self.training, **dataset.training}

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain YAML-serialisable data; loads back to an equal
        space."""
        out = self.model_dump(mode="json")
        for dataset in out["datasets"]:
            if not dataset["training"]:
                del dataset["training"]
        if self.search.type == "grid":
            out["search"] = {"type": "grid"}
        if self.scheduler.type == "none":
            for key in ("grace_period", "reduction_factor"):
                del out["scheduler"][key]
        keys = ("name", "description", "storage_path", "datasets", "models", "training", "seeds")
        return (
            {k: out[k] for k in keys}
            | {k: out[k] for k in ("search", "scheduler", "resources", "failure")}
            | ({"logging": out["logging"]} if self.logging != LoggingSpec() else {})
        )


@dataclass
class Stratum:
    """A (data set, model) pair; Optuna runs one study per stratum."""

    dataset: DatasetSpec
    model: ModelSpec

    @property
    def key(self) -> str:
        return f"{self.dataset.label}/{self.model.label}"


def _written_specs(raw: Mapping[str, Any]) -> list[tuple[tuple, Any]]:
    """(key path, spec as written) of every training key and model param of raw YAML."""
    out: list[tuple[tuple, Any]] = []

    def specs(section: Any, loc: tuple) -> None:
        if isinstance(section, dict):
            out.extend(((*loc, k), v) for k, v in section.items())

    specs(raw.get("training"), ("training",))
    for section, key in (("datasets", "training"), ("models", "params")):
        entries = raw.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                specs(entry.get(key), (section, i, key))
    return out


# --------------------------------------------------------------------------- parsing


def parse_space(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    file_name: str | None = None,
    check_data: bool = True,
) -> Space:
    """Validate the parsed YAML of a space (``path``: the file it came from, whose stem
    is the default name); ``check_data=False`` skips the checks that look at the file
    system (data roots). Raises SpaceError with the first problem."""
    file = file_name or (path.name if path is not None else "<space>")
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{file}: not valid YAML: the top level must be a mapping")
    context = {
        "path": path,
        "check_data": check_data,
        "models": _model_registry(),
        "sources": _source_registry(),
    }
    try:
        space = Space.model_validate(dict(raw), context=context)
    except ValidationError as exc:
        raise SpaceError(format_error(exc, file)) from None
    space._path = path
    return space
