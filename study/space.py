"""The YAML search space of a study: read, validate, expand into trial configs.

A space names the data sets, the models and their parameter specs, the training
settings, the seeds, the search (grid or Optuna), the scheduler and the resources per
trial. Everything is checked before anything runs; a mistake raises :class:`SpaceError`
with a one-line message ``<file>: <key path>: <what is wrong>, got <value>``.

Parameter specs (model params and training keys):

- a scalar: one fixed value, e.g. ``hidden_dim: 1024``
- a list: a grid (under ``search.type: optuna``: a categorical choice), e.g.
  ``latent_dim: [1, 2, 4]``
- ``{choice: [...]}``: a categorical choice (under grid: every value)
- ``{int: [low, high], log: false}`` / ``{float: [low, high], log: true}``: a range,
  sampled by Optuna (ranges need ``search.type: optuna``)

Example:
    >>> from study.space import estimate_plan, grid_trials, load_space, trial_id
    >>> space = load_space("smoke")
    >>> [c["model_params"]["latent_dim"] for c in grid_trials(space)]
    [2, 16]
    >>> estimate_plan(space)["n_trials"]
    2
    >>> trial_id(grid_trials(space)[0]).startswith("phantom-ae-d2-s0-")
    True
    >>> load_space("smoke", ["models[0].params.latent_dim=[4, 8, 16]"]).models[0].params[
    ...     "latent_dim"].values
    [4, 8, 16]
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DATA_ROOT_ENV",
    "DatasetSpec",
    "FIT_KEYS",
    "ModelSpec",
    "ParamSpec",
    "ResourceSpec",
    "SchedulerSpec",
    "SearchSpec",
    "Space",
    "SpaceError",
    "Stratum",
    "apply_overrides",
    "estimate_plan",
    "fit_config",
    "format_plan",
    "grid_trials",
    "load_space",
    "resolve_space_path",
    "sample_trial",
    "strata",
    "trial_id",
    "validate_space",
]

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DATA_ROOT_ENV = "AE4AD_DATA"

FALLBACK_MODELS = ("ae", "vae", "memae", "ceae", "constrained_ae", "ae_spatial")
FALLBACK_SOURCES = ("digits", "medianomaly", "medmnist", "phantom")
SAMPLERS = ("tpe", "random", "cmaes")
SEARCH_TYPES = ("grid", "optuna")
SCHEDULER_TYPES = ("none", "asha")
SCORES = ("l2", "l1", "ssim")
AUTO_GPUS = 0.25  # gpus_per_trial "auto" on a cluster with GPUs

TOP_KEYS = (
    "name",
    "description",
    "storage_path",
    "datasets",
    "models",
    "training",
    "seeds",
    "search",
    "scheduler",
    "resources",
    "failure",
)
DATASET_KEYS = ("name", "label", "params", "training")
MODEL_KEYS = ("name", "label", "params")
SEARCH_KEYS = ("type", "sampler", "n_trials", "seed")
SCHEDULER_KEYS = ("type", "metric", "mode", "grace_period", "reduction_factor")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial", "max_concurrent_trials", "custom")
FAILURE_KEYS = ("max_failures",)
SPEC_KEYS = ("choice", "int", "float", "log")

# Metrics a scheduler (and the Optuna search) can optimise, with their natural direction.
METRICS_MIN = (
    "train_loss",
    "recon_error_train_normal",
    "recon_error_val_normal",
    "recon_error_test_normal",
)
METRICS_MAX = (
    "auc",
    "ap",
    "pixel_ap",
    "pixel_auc",
    "best_dice",
    "recon_error_test_abnormal",
    "mean_score_normal",
    "mean_score_abnormal",
    "latent_entropy_gaussian",
    "latent_entropy_knn",
    "latent_effective_rank",
    "latent_participation_ratio",
    "latent_intrinsic_dim",
)

# Keys of an ae4ad.fit config (the harness adds dataset_label, model_label, stratum).
FIT_KEYS = (
    "dataset",
    "dataset_params",
    "model",
    "model_params",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "eval_every",
    "device",
    "threads",
    "score",
    "bf16",
    "channels_last",
)
HARNESS_KEYS = ("dataset_label", "model_label", "stratum")
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 50,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "score": "l2",
    "device": "auto",
}  # eval_every defaults to max(1, epochs // 5)


class SpaceError(ValueError):
    """A search space cannot be used as written: a one-line message naming the file,
    the key path, what is wrong and the offending value."""


# --------------------------------------------------------------------------- value rules


@dataclass(frozen=True)
class _Rule:
    """What one parameter accepts: a type, bounds, or a fixed set of values."""

    type: str  # "int" | "float" | "bool" | "str" | "any"
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    fixed_only: bool = False
    text: str | None = None  # what is expected, when the generic wording does not fit

    @property
    def expected(self) -> str:
        if self.text is not None:
            return self.text
        if self.type == "bool":
            return "expected true or false"
        if self.choices is not None:
            return "expected one of " + ", ".join(repr(c) for c in self.choices)
        if self.type == "str":
            return "expected a string"
        if self.type == "any":
            return "expected a number, string, boolean or null"
        noun = "an integer" if self.type == "int" else "a number"
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"expected {noun} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low == 0 and self.low_open:
            return f"expected a positive {'integer' if self.type == 'int' else 'number'}"
        if self.type == "int" and self.low == 1 and not self.low_open:
            return "expected a positive integer"
        if self.low is not None:
            return f"expected {noun} {'>' if self.low_open else '>='} {_num(self.low)}"
        return f"expected {noun}"

    def coerce(self, value: Any) -> tuple[bool, Any]:
        """(ok, value in canonical type)."""
        if self.type == "bool":
            return isinstance(value, bool), value
        if self.type == "str":
            if not isinstance(value, str):
                return False, value
            if self.choices is not None and value not in self.choices:
                return False, value
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                return False, value
            return True, value
        if self.type == "any":
            return (value is None or isinstance(value, (bool, int, float, str))), value
        if isinstance(value, bool):
            return False, value
        if self.type == "int":
            if not isinstance(value, int):
                return False, value
        else:
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    return False, value
            if not isinstance(value, (int, float)):
                return False, value
            value = float(value)
            if not math.isfinite(value):
                return False, value
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False, value
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False, value
        return True, value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


_POS_INT = _Rule("int", low=1)
_NONNEG_INT = _Rule("int", low=0)
_NONNEG = _Rule("float", low=0)
_POS = _Rule("float", low=0, low_open=True)
_ANY = _Rule("any")

# Model constructor arguments that the harness fills in from the data set.
DATA_DEFINED_PARAMS = ("image_size", "in_channels")

# The model params every model of ae4ad may take, in the order grids are expanded.
MODEL_PARAM_RULES: dict[str, _Rule] = {
    "latent_dim": _POS_INT,
    "hidden_dim": _POS_INT,
    "base_width": _POS_INT,
    "expansion": _POS_INT,
    "encoder_depth": _NONNEG_INT,
    "decoder_depth": _NONNEG_INT,
    "num_blocks": _POS_INT,
    "kl_weight": _NONNEG,
    "mem_size": _POS_INT,
    "shrink_threshold": _NONNEG,
    "entropy_weight": _NONNEG,
    "erase_fraction": _Rule("float", low=0, high=1, high_open=True),
    "constraint_weight": _NONNEG,
}

# The training keys, in the order grids are expanded.
TRAINING_RULES: dict[str, _Rule] = {
    "epochs": _POS_INT,
    "batch_size": _POS_INT,
    "lr": _POS,
    "weight_decay": _NONNEG,
    "eval_every": _POS_INT,
    "score": _Rule("str", choices=SCORES),
    "device": _Rule(
        "str",
        pattern=r"auto|cpu|cuda(:\d+)?",
        fixed_only=True,
        text="expected auto, cpu, cuda or cuda:<index>",
    ),
    "bf16": _Rule("bool"),
    "channels_last": _Rule("bool"),
}


# --------------------------------------------------------------------------- dataclasses


@dataclass
class ParamSpec:
    """One parameter's spec: ``kind`` is "fixed" | "grid" | "choice" | "int" | "float".

    ``values`` holds the value(s) for fixed/grid/choice (``[value]`` when fixed);
    ``low``/``high``/``log`` describe a range.

    >>> ParamSpec("grid", [4, 8]).to_yaml()
    [4, 8]
    >>> ParamSpec("float", low=1e-4, high=1e-2, log=True).to_yaml()
    {'float': [0.0001, 0.01], 'log': True}
    """

    kind: str
    values: list = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def max_value(self) -> Any:
        """The largest value this spec can take (for cost estimates)."""
        return self.high if self.is_range else max(self.values)

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "grid":
            return list(self.values)
        if self.kind == "choice":
            return {"choice": list(self.values)}
        return {self.kind: [self.low, self.high], "log": self.log}


@dataclass
class DatasetSpec:
    """One data set: an ae4ad data source ``name``, its ``label`` in results, fixed
    ``params``, and optional per-data-set ``training`` specs that replace the study's."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, ParamSpec] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """One model: an ae4ad registry ``name``, its ``label`` in results, param specs."""

    name: str
    label: str
    params: dict[str, ParamSpec] = field(default_factory=dict)


@dataclass
class SearchSpec:
    """``type`` grid | optuna; ``sampler``, ``n_trials`` (per stratum) and ``seed`` are
    set for optuna only (None under grid)."""

    type: str = "grid"
    sampler: str | None = None
    n_trials: int | None = None
    seed: int | None = None


@dataclass
class SchedulerSpec:
    """``type`` none | asha. ``metric``/``mode`` are also the Optuna objective."""

    type: str = "none"
    metric: str = "auc"
    mode: str = "max"
    grace_period: int = 10
    reduction_factor: float = 3


@dataclass
class ResourceSpec:
    """Ray resources per trial; ``gpus_per_trial`` is a number or "auto"."""

    cpus_per_trial: float = 1
    gpus_per_trial: float | str = "auto"
    max_concurrent_trials: int | None = None
    custom: dict[str, float] = field(default_factory=dict)

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


@dataclass
class Stratum:
    """A (data set, model) pair; Optuna runs one study per stratum."""

    dataset: DatasetSpec
    model: ModelSpec

    @property
    def key(self) -> str:
        return f"{self.dataset.label}/{self.model.label}"


@dataclass
class Space:
    """A validated search space (see the module docstring and docs/search_spaces.md)."""

    name: str
    description: str
    path: Path | None
    storage_path: Path
    datasets: list[DatasetSpec]
    models: list[ModelSpec]
    training: dict[str, ParamSpec]
    seeds: list[int]
    search: SearchSpec
    scheduler: SchedulerSpec
    resources: ResourceSpec
    max_failures: int = 0

    @property
    def run_dir(self) -> Path:
        return self.storage_path / self.name

    def training_for(self, dataset: DatasetSpec) -> dict[str, ParamSpec]:
        """The training specs of one data set: the study's, replaced key by key by the
        data set's own ``training`` block."""
        return {**self.training, **dataset.training}

    def to_dict(self) -> dict[str, Any]:
        """The resolved space as plain YAML-serialisable data; loads back to an equal
        space."""

        def dataset_dict(d: DatasetSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"name": d.name, "label": d.label, "params": dict(d.params)}
            if d.training:
                out["training"] = {k: s.to_yaml() for k, s in d.training.items()}
            return out

        search: dict[str, Any] = {"type": self.search.type}
        if self.search.type == "optuna":
            search.update(
                sampler=self.search.sampler, n_trials=self.search.n_trials, seed=self.search.seed
            )
        scheduler: dict[str, Any] = {
            "type": self.scheduler.type,
            "metric": self.scheduler.metric,
            "mode": self.scheduler.mode,
        }
        if self.scheduler.type == "asha":
            scheduler.update(
                grace_period=self.scheduler.grace_period,
                reduction_factor=self.scheduler.reduction_factor,
            )
        return {
            "name": self.name,
            "description": self.description,
            "storage_path": str(self.storage_path),
            "datasets": [dataset_dict(d) for d in self.datasets],
            "models": [
                {
                    "name": m.name,
                    "label": m.label,
                    "params": {k: s.to_yaml() for k, s in m.params.items()},
                }
                for m in self.models
            ],
            "training": {k: s.to_yaml() for k, s in self.training.items()},
            "seeds": list(self.seeds),
            "search": search,
            "scheduler": scheduler,
            "resources": {
                "cpus_per_trial": self.resources.cpus_per_trial,
                "gpus_per_trial": self.resources.gpus_per_trial,
                "max_concurrent_trials": self.resources.max_concurrent_trials,
                "custom": dict(self.resources.custom),
            },
            "failure": {"max_failures": self.max_failures},
        }


# --------------------------------------------------------------------------- registries


def _model_registry() -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(model names, per-model {param: default}); the fixed lists until ae4ad.models
    exists. Parameters that come from the data (image size, channels) are left out."""
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


def _rule_for(key: str, default: Any) -> _Rule:
    """The value rule of a model param: the known rule, else one from its default's type."""
    if key in MODEL_PARAM_RULES:
        return MODEL_PARAM_RULES[key]
    if isinstance(default, bool):
        return _Rule("bool")
    if isinstance(default, int):
        return _Rule("int")
    if isinstance(default, float):
        return _Rule("float")
    return _ANY


def _source_registry() -> dict[str, Callable | None]:
    """Data source name -> loader (None when only the fixed list is known)."""
    try:
        registry = dict(getattr(importlib.import_module("ae4ad.data"), "DATA_SOURCES", {}))
    except ImportError:
        registry = {}
    return registry or dict.fromkeys(FALLBACK_SOURCES)


def _loader_signature(loader: Callable | None) -> inspect.Signature | None:
    if loader is None:
        return None
    try:
        return inspect.signature(loader)
    except (TypeError, ValueError):
        return None


def _loader_params(loader: Callable | None) -> list[str] | None:
    """The keyword names a data source loader takes; None when it takes any."""
    sig = _loader_signature(loader)
    if sig is None:
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return names


def _takes_sequence(loader: Callable | None, name: str) -> bool:
    """Whether the loader's parameter ``name`` is annotated as a tuple/list/sequence
    (such a value is one fixed value given as a YAML list, e.g. a (low, high) pair)."""
    sig = _loader_signature(loader)
    if sig is None or name not in sig.parameters:
        return False
    annotation = sig.parameters[name].annotation
    if annotation is inspect.Parameter.empty:
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return re.search(r"\b(tuple|Tuple|list|List|Sequence)\b", text) is not None


# --------------------------------------------------------------------------- YAML reading


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # an unhashable key; construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem


def resolve_space_path(name_or_path: str) -> Path:
    """The YAML file of a space: an existing path, else a bare name (``latent`` or
    ``latent.yaml``) looked up in ./ and in the repository's search_spaces/.

    >>> resolve_space_path("latent").name
    'latent.yaml'
    """
    given = Path(str(name_or_path))
    candidates = [given]
    if given.suffix not in (".yaml", ".yml"):
        candidates.append(given.with_name(given.name + ".yaml"))
    if len(given.parts) == 1:
        names = [c.name for c in candidates]
        for folder in (Path("search_spaces"), SPACES_DIR):
            candidates.extend(folder / n for n in names)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    if given.is_dir():
        raise SpaceError(f"{name_or_path}: is a folder, not a YAML file")
    available = sorted(
        {p.name for folder in (Path("search_spaces"), SPACES_DIR) for p in _yaml_files(folder)}
    )
    raise SpaceError(
        f"{name_or_path}: no such file (looked in ./ and search_spaces/; "
        f"available: {', '.join(available) or 'none'})"
    )


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]


def load_space(
    name_or_path: str, overrides: Sequence[str] = (), *, check_data: bool = True
) -> Space:
    """Read, override and validate a space.

    ``overrides`` are ``key=value`` strings (``training.epochs=5``, ``seeds=[0]``,
    ``models[0].params.latent_dim=[4,8]``), values parsed as YAML. ``check_data=False``
    skips the checks that look at the file system (data roots), for dry runs.

    >>> load_space("latent", ["training.epochs=5"]).training["epochs"].values
    [5]
    """
    path = resolve_space_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path.name}: cannot be read: {exc}") from None
    try:
        raw = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path.name}: not valid YAML: {_yaml_reason(exc)}") from None
    if raw is None:
        raise SpaceError(f"{path.name}: not valid YAML: the file is empty")
    if not isinstance(raw, dict):
        raise SpaceError(
            f"{path.name}: not valid YAML: the top level must be a mapping "
            f"(name: ..., datasets: ..., models: ...), got a {type(raw).__name__}"
        )
    raw = apply_overrides(raw, overrides, file_name=path.name)
    return validate_space(raw, path=path, check_data=check_data)


# --------------------------------------------------------------------------- overrides

_OVERRIDE_PATH = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*)*"
)


def _path_tokens(path: str) -> list[str | int]:
    tokens: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        tokens.append(name)
        if rest:
            tokens.extend(int(i) for i in re.findall(r"\d+", "[" + rest))
    return tokens


def _dotted(tokens: Sequence[str | int]) -> str:
    out = ""
    for t in tokens:
        out += f"[{t}]" if isinstance(t, int) else (f".{t}" if out else str(t))
    return out


def apply_overrides(
    raw: Mapping[str, Any], overrides: Sequence[str], file_name: str = "<space>"
) -> dict[str, Any]:
    """A copy of ``raw`` with each ``key=value`` override set (missing mapping keys are
    created; the validation that follows rejects keys the schema does not know).

    >>> apply_overrides({"training": {"epochs": 60}}, ["training.epochs=5", "seeds=3"])
    {'training': {'epochs': 5}, 'seeds': 3}
    """
    data = copy.deepcopy(dict(raw))
    for override in overrides or ():
        where = f"{file_name}: override {override!r}"
        key, sep, text = str(override).partition("=")
        key = key.strip()
        if not sep or not _OVERRIDE_PATH.fullmatch(key):
            raise SpaceError(
                f"{where}: expected KEY=VALUE with a dotted key path, "
                "e.g. training.epochs=5 or models[0].params.latent_dim=[4,8]"
            )
        try:
            value = _yaml_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SpaceError(f"{where}: the value is not valid YAML: {_yaml_reason(exc)}") from None
        tokens = _path_tokens(key)
        node: Any = data
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            here = _dotted(tokens[: i + 1])
            if isinstance(token, int):
                if not isinstance(node, list):
                    raise SpaceError(f"{where}: {_dotted(tokens[:i])}: is not a list, got {node!r}")
                if token >= len(node):
                    raise SpaceError(
                        f"{where}: {here}: no such entry ({_dotted(tokens[:i])} has "
                        f"{len(node)}), got index {token}"
                    )
            elif isinstance(node, list):
                parent = _dotted(tokens[:i])
                raise SpaceError(
                    f"{where}: {parent}: is a list; give an index like {parent}[0], "
                    f"got key {token!r}"
                )
            elif not isinstance(node, dict):
                raise SpaceError(f"{where}: {_dotted(tokens[:i])}: is not a mapping, got {node!r}")
            if last:
                node[token] = value
            else:
                nxt = tokens[i + 1]
                if isinstance(token, str) and (token not in node or node[token] is None):
                    if isinstance(nxt, int):
                        raise SpaceError(f"{where}: {here}: no such list in the space")
                    node[token] = {}
                node = node[token]
    return data


# --------------------------------------------------------------------------- validation


class _Checker:
    """Raises SpaceError messages of one form: ``<file>: <path>: <what>, got <value>``."""

    def __init__(self, file_name: str) -> None:
        self.file = file_name

    def fail(self, path: str, what: str, value: Any) -> SpaceError:
        return SpaceError(f"{self.file}: {path}: {what}, got {value!r}")

    def missing(self, path: str, what: str) -> SpaceError:
        return SpaceError(f"{self.file}: {path}: missing ({what})")

    def keys(self, mapping: Mapping, allowed: Sequence[str], path: str) -> None:
        for key in mapping:
            if key in allowed:
                continue
            where = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
            raise SpaceError(f"{self.file}: {where}: unknown key; {hint}")

    def mapping(self, value: Any, path: str, what: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping of {what}", value)
        return value


def validate_space(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    file_name: str | None = None,
    check_data: bool = True,
) -> Space:
    """Validate the parsed YAML of a space; ``path`` is the file it came from.

    >>> space = validate_space({"name": "toy", "datasets": [{"name": "phantom"}],
    ...     "models": [{"name": "ae", "params": {"latent_dim": [2, 4]}}]})
    >>> space.models[0].params["latent_dim"]
    ParamSpec(kind='grid', values=[2, 4], low=None, high=None, log=False)
    """
    file = file_name or (path.name if path is not None else "<space>")
    ck = _Checker(file)
    if not isinstance(raw, Mapping):
        raise SpaceError(f"{file}: not valid YAML: the top level must be a mapping")
    ck.keys(raw, TOP_KEYS, "")

    name = raw.get("name", path.stem if path is not None else None)
    if name is None:
        raise ck.missing("name", "a study name made of letters, digits, '_', '.', '-'")
    if (
        not isinstance(name, str)
        or not re.fullmatch(r"[A-Za-z0-9_.-]+", name)
        or name
        in (
            ".",
            "..",
        )
    ):
        raise ck.fail("name", "expected a study name made of letters, digits, '_', '.', '-'", name)
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ck.fail("description", "expected a string", description)
    storage = raw.get("storage_path", "runs")
    if not isinstance(storage, str) or not storage.strip():
        raise ck.fail("storage_path", "expected a folder path", storage)
    storage_path = (Path.cwd() / Path(storage).expanduser()).resolve()

    search = _search(raw.get("search"), ck)
    scheduler = _scheduler(raw.get("scheduler"), ck)
    resources = _resources(raw.get("resources"), ck)
    failure = ck.mapping(raw.get("failure"), "failure", "failure settings")
    ck.keys(failure, FAILURE_KEYS, "failure")
    max_failures = failure.get("max_failures", 0)
    if not _is_int(max_failures) or max_failures < 0:
        raise ck.fail("failure.max_failures", "expected an integer >= 0", max_failures)

    training = _training(raw.get("training"), "training", search.type, ck)
    datasets = _datasets(raw.get("datasets"), search.type, ck, check_data)
    models = _models(raw.get("models"), search.type, ck)
    seeds = _seeds(raw.get("seeds", [0]), ck)

    return Space(
        name=name,
        description=description,
        path=path,
        storage_path=storage_path,
        datasets=datasets,
        models=models,
        training=training,
        seeds=seeds,
        search=search,
        scheduler=scheduler,
        resources=resources,
        max_failures=max_failures,
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _search(raw: Any, ck: _Checker) -> SearchSpec:
    sec = ck.mapping(raw, "search", "search settings")
    ck.keys(sec, SEARCH_KEYS, "search")
    kind = sec.get("type", "grid")
    if kind not in SEARCH_TYPES:
        raise ck.fail("search.type", "unknown search type (allowed: grid, optuna)", kind)
    if kind == "grid":
        for key in ("sampler", "n_trials", "seed"):
            if key in sec:
                raise ck.fail(
                    f"search.{key}",
                    "only used when search.type is optuna (set search.type: optuna)",
                    sec[key],
                )
        return SearchSpec(type="grid")
    sampler = sec.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ck.fail(
            "search.sampler", f"unknown sampler (allowed: {', '.join(SAMPLERS)})", sampler
        )
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ck.fail(
            "search.sampler",
            "the cmaes sampler needs the package 'cmaes' (pip install cmaes)",
            sampler,
        )
    n_trials = sec.get("n_trials", 20)
    if not _is_int(n_trials) or n_trials < 1:
        raise ck.fail(
            "search.n_trials", "expected a positive integer (trials per stratum)", n_trials
        )
    seed = sec.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        raise ck.fail("search.seed", "expected an integer >= 0", seed)
    return SearchSpec(type="optuna", sampler=sampler, n_trials=n_trials, seed=seed)


def _scheduler(raw: Any, ck: _Checker) -> SchedulerSpec:
    sec = ck.mapping(raw, "scheduler", "scheduler settings")
    ck.keys(sec, SCHEDULER_KEYS, "scheduler")
    kind = sec.get("type", "none")
    if kind is None:
        kind = "none"
    if kind not in SCHEDULER_TYPES:
        raise ck.fail("scheduler.type", "unknown scheduler (allowed: none, asha)", kind)
    metric = sec.get("metric", "auc")
    metrics = METRICS_MAX + METRICS_MIN
    if metric not in metrics:
        close = difflib.get_close_matches(str(metric), metrics, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(metrics)
        raise ck.fail("scheduler.metric", f"unknown metric ({hint})", metric)
    mode = sec.get("mode", "min" if metric in METRICS_MIN else "max")
    if mode not in ("max", "min"):
        raise ck.fail("scheduler.mode", "expected max or min", mode)
    spec = SchedulerSpec(type=kind, metric=metric, mode=mode)
    if kind == "none":
        for key in ("grace_period", "reduction_factor"):
            if key in sec:
                raise ck.fail(
                    f"scheduler.{key}",
                    "only used when scheduler.type is asha (set scheduler.type: asha)",
                    sec[key],
                )
        return spec
    grace = sec.get("grace_period", spec.grace_period)
    if not _is_int(grace) or grace < 1:
        raise ck.fail("scheduler.grace_period", "expected a positive integer (epochs)", grace)
    factor = sec.get("reduction_factor", spec.reduction_factor)
    if not _is_number(factor) or factor <= 1:
        raise ck.fail("scheduler.reduction_factor", "expected a number > 1", factor)
    spec.grace_period, spec.reduction_factor = grace, factor
    return spec


def _resources(raw: Any, ck: _Checker) -> ResourceSpec:
    sec = ck.mapping(raw, "resources", "resource settings")
    ck.keys(sec, RESOURCE_KEYS, "resources")
    cpus = sec.get("cpus_per_trial", 1)
    if not _is_number(cpus) or cpus <= 0:
        raise ck.fail("resources.cpus_per_trial", "expected a positive number", cpus)
    gpus = sec.get("gpus_per_trial", "auto")
    if gpus != "auto":
        if not _is_number(gpus) or gpus < 0:
            raise ck.fail("resources.gpus_per_trial", "expected a number >= 0 or auto", gpus)
        if gpus > 1 and not float(gpus).is_integer():
            raise ck.fail(
                "resources.gpus_per_trial", "fractions are allowed only below 1 (Ray)", gpus
            )
    limit = sec.get("max_concurrent_trials")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ck.fail(
            "resources.max_concurrent_trials", "expected a positive integer or null", limit
        )
    custom = ck.mapping(sec.get("custom"), "resources.custom", "custom Ray resources")
    for key, amount in custom.items():
        if not isinstance(key, str) or not key:
            raise ck.fail("resources.custom", "resource names must be strings", key)
        if not _is_number(amount) or amount < 0:
            raise ck.fail(f"resources.custom.{key}", "expected a number >= 0", amount)
    return ResourceSpec(
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        max_concurrent_trials=limit,
        custom=dict(custom),
    )


def _label(value: Any, default: str, path: str, ck: _Checker) -> str:
    label = default if value is None else value
    if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", label):
        raise ck.fail(path, "expected a label made of letters, digits, '_', '.', '+', '-'", label)
    return label


def _unique_label(label: str, seen: dict[str, int], path: str, section: str, ck: _Checker) -> None:
    if label in seen:
        raise ck.fail(
            path,
            f"duplicate label ({section}[{seen[label]}] has it too; give each a distinct label)",
            label,
        )


def _entries(raw: Any, section: str, what: str, ck: _Checker) -> list[dict]:
    if raw is None:
        raise ck.missing(section, f"a list of {what}")
    if not isinstance(raw, list) or not raw:
        raise ck.fail(section, f"expected a non-empty list of {what}", raw)
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ck.fail(
                f"{section}[{i}]", "expected a mapping with name (and label, params)", entry
            )
    return raw


def _datasets(raw: Any, search_type: str, ck: _Checker, check_data: bool) -> list[DatasetSpec]:
    entries = _entries(raw, "datasets", "data sets (each with name and params)", ck)
    sources = _source_registry()
    out: list[DatasetSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        at = f"datasets[{i}]"
        ck.keys(entry, DATASET_KEYS, at)
        if "name" not in entry:
            raise ck.missing(f"{at}.name", "a data source: " + ", ".join(sorted(sources)))
        source = entry["name"]
        if source not in sources:
            raise ck.fail(
                f"{at}.name",
                f"unknown dataset source (allowed: {', '.join(sorted(sources))})",
                source,
            )
        label = _label(entry.get("label"), source, f"{at}.label", ck)
        _unique_label(label, seen, f"{at}.label", "datasets", ck)
        seen[label] = i
        params = ck.mapping(entry.get("params"), f"{at}.params", "data set params")
        accepted = _loader_params(sources[source])
        if accepted is not None:
            ck.keys(params, accepted, f"{at}.params")
        for key, value in params.items():
            if not isinstance(key, str):
                raise ck.fail(f"{at}.params", "param names must be strings", key)
            if isinstance(value, dict) or (
                isinstance(value, list) and not _takes_sequence(sources[source], key)
            ):
                raise ck.fail(
                    f"{at}.params.{key}",
                    "data sets are built once, so their params take one fixed value "
                    "(add another datasets entry to vary it)",
                    value,
                )
        if check_data:
            _check_data_root(source, params, at, ck)
        training = _training(entry.get("training"), f"{at}.training", search_type, ck)
        out.append(DatasetSpec(name=source, label=label, params=dict(params), training=training))
    return out


def _check_data_root(source: str, params: Mapping[str, Any], at: str, ck: _Checker) -> None:
    path = params.get("path")
    if path is not None and (not isinstance(path, str) or not Path(path).expanduser().exists()):
        raise ck.fail(f"{at}.params.path", "no such file or folder", path)
    root = params.get("root")
    if root is not None:
        if not isinstance(root, str) or not Path(root).expanduser().is_dir():
            raise ck.fail(f"{at}.params.root", "no such folder", root)
        return
    if source != "medianomaly":
        return
    env = os.environ.get(DATA_ROOT_ENV)
    if not env:
        raise ck.fail(
            f"{at}.params.root",
            f"medianomaly needs the MedIAnomaly-Data folder: set params.root or the "
            f"environment variable {DATA_ROOT_ENV}",
            None,
        )
    if not Path(env).expanduser().is_dir():
        raise ck.fail(
            f"{at}.params.root", f"the environment variable {DATA_ROOT_ENV} names no folder", env
        )


def _models(raw: Any, search_type: str, ck: _Checker) -> list[ModelSpec]:
    entries = _entries(raw, "models", "models (each with name and params)", ck)
    names, per_model = _model_registry()
    out: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        at = f"models[{i}]"
        ck.keys(entry, MODEL_KEYS, at)
        if "name" not in entry:
            raise ck.missing(f"{at}.name", "a model: " + ", ".join(names))
        model = entry["name"]
        if model not in names:
            raise ck.fail(f"{at}.name", f"unknown model (allowed: {', '.join(names)})", model)
        label = _label(entry.get("label"), model, f"{at}.label", ck)
        _unique_label(label, seen, f"{at}.label", "models", ck)
        seen[label] = i
        params_raw = ck.mapping(entry.get("params"), f"{at}.params", "model params")
        defaults = per_model.get(model, dict.fromkeys(MODEL_PARAM_RULES))
        for key in params_raw:
            if key in DATA_DEFINED_PARAMS:
                raise ck.fail(
                    f"{at}.params.{key}",
                    f"set by the data (give datasets[i].params.{key} instead)",
                    params_raw[key],
                )
        ck.keys(params_raw, list(defaults), f"{at}.params")
        params = {
            key: _param_spec(
                value, f"{at}.params.{key}", _rule_for(key, defaults[key]), search_type, ck
            )
            for key, value in params_raw.items()
        }
        out.append(ModelSpec(name=model, label=label, params=params))
    return out


def _training(raw: Any, at: str, search_type: str, ck: _Checker) -> dict[str, ParamSpec]:
    sec = ck.mapping(raw, at, "training keys")
    ck.keys(sec, list(TRAINING_RULES), at)
    return {
        key: _param_spec(value, f"{at}.{key}", TRAINING_RULES[key], search_type, ck)
        for key, value in sec.items()
    }


def _seeds(raw: Any, ck: _Checker) -> list[int]:
    if _is_int(raw):
        if raw < 1:
            raise ck.fail("seeds", "a count of seeds must be positive", raw)
        return list(range(raw))
    if not isinstance(raw, list) or not raw:
        raise ck.fail(
            "seeds", "expected a non-empty list of integers >= 0, or a count n (seeds 0..n-1)", raw
        )
    for i, seed in enumerate(raw):
        if not _is_int(seed) or seed < 0:
            raise ck.fail(f"seeds[{i}]", "expected an integer >= 0", seed)
        if seed in raw[:i]:
            raise ck.fail(f"seeds[{i}]", "duplicate seed", seed)
    return list(raw)


def _check_value(value: Any, rule: _Rule, path: str, ck: _Checker) -> Any:
    ok, coerced = rule.coerce(value)
    if not ok:
        raise ck.fail(path, rule.expected, value)
    return coerced


def _param_spec(raw: Any, path: str, rule: _Rule, search_type: str, ck: _Checker) -> ParamSpec:
    if rule.fixed_only and isinstance(raw, (list, dict)):
        raise ck.fail(path, "takes one fixed value (no list or range)", raw)
    if isinstance(raw, dict):
        ck.keys(raw, SPEC_KEYS, path)
        kinds = [k for k in ("choice", "int", "float") if k in raw]
        if len(kinds) != 1:
            raise ck.fail(path, "a spec mapping needs exactly one of choice, int, float", raw)
        kind = kinds[0]
        if kind == "choice":
            if "log" in raw:
                raise ck.fail(f"{path}.log", "only used with an int or float range", raw["log"])
            values = _value_list(raw["choice"], f"{path}.choice", rule, ck)
            return ParamSpec("choice", values)
        if search_type != "optuna":
            raise ck.fail(
                path, "a range needs search.type: optuna (under grid give a list of values)", raw
            )
        if kind == "int" and rule.type not in ("int", "any"):
            raise ck.fail(path, f"takes {rule.type} values; an int range does not fit", raw)
        if kind == "float" and rule.type not in ("float", "any"):
            what = "use {int: [low, high]}" if rule.type == "int" else f"takes {rule.type} values"
            raise ck.fail(path, f"a float range does not fit ({what})", raw)
        bounds = raw[kind]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ck.fail(f"{path}.{kind}", "expected [low, high]", bounds)
        range_rule = rule if rule.type != "any" else _Rule(kind)
        if kind == "int":
            for j, b in enumerate(bounds):
                if not _is_int(b):
                    raise ck.fail(f"{path}.{kind}[{j}]", "expected an integer", b)
        low = _check_value(bounds[0], range_rule, f"{path}.{kind}[0]", ck)
        high = _check_value(bounds[1], range_rule, f"{path}.{kind}[1]", ck)
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise ck.fail(f"{path}.log", "expected true or false", log)
        if low > high:
            raise ck.fail(f"{path}.{kind}", "inverted range (low > high)", bounds)
        if low == high:
            raise ck.fail(f"{path}.{kind}", "empty range (low == high; give a fixed value)", bounds)
        if log and low <= 0:
            raise ck.fail(f"{path}.{kind}", "a log range needs low > 0", bounds)
        return ParamSpec(kind, [], low=low, high=high, log=log)
    if isinstance(raw, list):
        return ParamSpec("grid", _value_list(raw, path, rule, ck))
    return ParamSpec("fixed", [_check_value(raw, rule, path, ck)])


def _value_list(raw: Any, path: str, rule: _Rule, ck: _Checker) -> list:
    if not isinstance(raw, list):
        raise ck.fail(path, "expected a list of values", raw)
    if not raw:
        raise ck.fail(path, "empty list (give at least one value)", raw)
    values: list = []
    for j, v in enumerate(raw):
        if isinstance(v, (list, dict)):
            raise ck.fail(f"{path}[{j}]", "list entries must be single values", v)
        value = _check_value(v, rule, f"{path}[{j}]", ck)
        if any(type(value) is type(w) and value == w for w in values):
            raise ck.fail(f"{path}[{j}]", "duplicate value", v)
        values.append(value)
    return values


# --------------------------------------------------------------------------- trials


def strata(space: Space) -> list[Stratum]:
    """Every (data set, model) pair, data sets outermost.

    >>> [s.key for s in strata(load_space("smoke"))]
    ['phantom/ae']
    """
    return [Stratum(d, m) for d in space.datasets for m in space.models]


def _ordered(specs: Mapping[str, ParamSpec], order: Sequence[str]) -> list[tuple[str, ParamSpec]]:
    rank = {k: i for i, k in enumerate(order)}
    return sorted(specs.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _config(
    space: Space,
    stratum: Stratum,
    model_params: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    epochs = training.get("epochs", TRAINING_DEFAULTS["epochs"])
    cfg: dict[str, Any] = {
        "dataset_label": stratum.dataset.label,
        "model_label": stratum.model.label,
        "stratum": stratum.key,
        "dataset": stratum.dataset.name,
        "dataset_params": copy.deepcopy(stratum.dataset.params),
        "model": stratum.model.name,
        "model_params": model_params,
        "epochs": epochs,
        "batch_size": training.get("batch_size", TRAINING_DEFAULTS["batch_size"]),
        "lr": training.get("lr", TRAINING_DEFAULTS["lr"]),
        "weight_decay": training.get("weight_decay", TRAINING_DEFAULTS["weight_decay"]),
        "eval_every": training.get("eval_every", max(1, epochs // 5)),
        "score": training.get("score", TRAINING_DEFAULTS["score"]),
        "device": training.get("device", TRAINING_DEFAULTS["device"]),
        "seed": seed,
        "threads": space.resources.threads,
    }
    for key in ("bf16", "channels_last"):
        if key in training:
            cfg[key] = training[key]
    return cfg


def grid_trials(space: Space) -> list[dict[str, Any]]:
    """The full factorial list of trial configs of a grid space: data sets, then models,
    then params (model params, then training keys, in schema order), seeds innermost.

    >>> configs = grid_trials(load_space("latent"))
    >>> len(configs), [(c["model_params"]["latent_dim"], c["seed"]) for c in configs[:3]]
    (16, [(1, 0), (1, 1), (2, 0)])
    """
    if space.search.type != "grid":
        raise SpaceError(
            f"{space.path.name if space.path else space.name}: search.type: grid_trials needs "
            f"a grid space (optuna spaces are sampled per stratum), got {space.search.type!r}"
        )
    out = []
    for stratum in strata(space):
        model_axes = _ordered(stratum.model.params, list(MODEL_PARAM_RULES))
        train_axes = _ordered(space.training_for(stratum.dataset), list(TRAINING_RULES))
        axes = [("model", k, s) for k, s in model_axes] + [
            ("training", k, s) for k, s in train_axes
        ]
        for combo in itertools.product(*[spec.values for _, _, spec in axes]):
            model_params: dict[str, Any] = {}
            training: dict[str, Any] = {}
            for (section, key, _), value in zip(axes, combo):
                (model_params if section == "model" else training)[key] = value
            for seed in space.seeds:
                out.append(_config(space, stratum, dict(model_params), dict(training), seed))
    return out


def _suggest(trial: Any, name: str, spec: ParamSpec) -> Any:
    if spec.kind == "fixed":
        return spec.values[0]
    if spec.kind in ("grid", "choice"):
        if len(spec.values) == 1:
            return spec.values[0]
        return trial.suggest_categorical(name, list(spec.values))
    if spec.kind == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(name, float(spec.low), float(spec.high), log=spec.log)


def sample_trial(space: Space, stratum: Stratum, optuna_trial: Any) -> dict[str, Any]:
    """One trial config of an Optuna space, drawn from ``optuna_trial`` (an
    optuna.trial.Trial): lists and choices via suggest_categorical, ranges via
    suggest_int/suggest_float, named ``model.<key>`` / ``training.<key>``. The seed
    cycles through ``space.seeds`` by trial number.

    >>> import optuna
    >>> space = load_space("optuna")
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> config = sample_trial(space, strata(space)[0], study.ask())
    >>> 1 <= config["model_params"]["latent_dim"] <= 256
    True
    """
    model_params = {
        key: _suggest(optuna_trial, f"model.{key}", spec)
        for key, spec in _ordered(stratum.model.params, list(MODEL_PARAM_RULES))
    }
    training = {
        key: _suggest(optuna_trial, f"training.{key}", spec)
        for key, spec in _ordered(space.training_for(stratum.dataset), list(TRAINING_RULES))
    }
    seed = space.seeds[optuna_trial.number % len(space.seeds)]
    return _config(space, stratum, model_params, training, seed)


def fit_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a trial config that ae4ad.fit takes (drops the harness's labels).

    >>> sorted(set(grid_trials(load_space("smoke"))[0]) - set(fit_config(
    ...     grid_trials(load_space("smoke"))[0])))
    ['dataset_label', 'model_label', 'stratum']
    """
    return {k: v for k, v in config.items() if k in FIT_KEYS}


def _slug(text: str, limit: int = 24) -> str:
    return re.sub(r"[^A-Za-z0-9_.+]+", "_", str(text))[:limit].strip("_.") or "x"


def trial_id(config: Mapping[str, Any]) -> str:
    """A stable, filesystem-safe id of a trial config: a readable part
    (``<dataset>-<model>-d<latent_dim>-s<seed>``) and 10 hex chars of the sha1 of the
    config's canonical JSON, without device and threads (they do not change results).

    >>> trial_id({"dataset_label": "phantom", "model_label": "ae", "seed": 0,
    ...           "model_params": {"latent_dim": 16}})
    'phantom-ae-d16-s0-883fb33ad9'
    """
    payload = {k: v for k, v in config.items() if k not in ("device", "threads", "trial_id")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    parts = [
        _slug(config.get("dataset_label", config.get("dataset", "data"))),
        _slug(config.get("model_label", config.get("model", "model"))),
    ]
    latent = (config.get("model_params") or {}).get("latent_dim")
    if latent is not None:
        parts.append(f"d{_slug(latent, 12)}")
    if config.get("seed") is not None:
        parts.append(f"s{_slug(config['seed'], 12)}")
    return "-".join(parts + [digest])


def estimate_plan(space: Space) -> dict[str, Any]:
    """What a run of the space costs: trial count, strata, resources, trial-epochs.

    Under optuna, ``trial_epochs`` is an upper bound (every trial at its largest epoch
    count); with ASHA, stopped trials also make it an upper bound.

    >>> plan = estimate_plan(load_space("latent"))
    >>> plan["n_trials"], plan["n_strata"], plan["trial_epochs"]
    (16, 1, 960)
    """
    per_stratum: dict[str, int] = {}
    trial_epochs = 0
    if space.search.type == "grid":
        for cfg in grid_trials(space):
            per_stratum[cfg["stratum"]] = per_stratum.get(cfg["stratum"], 0) + 1
            trial_epochs += cfg["epochs"]
    else:
        for stratum in strata(space):
            n = int(space.search.n_trials or 0)
            per_stratum[stratum.key] = n
            epochs = space.training_for(stratum.dataset).get("epochs")
            max_epochs = epochs.max_value() if epochs else TRAINING_DEFAULTS["epochs"]
            trial_epochs += n * int(max_epochs)
    resources: dict[str, Any] = {
        "cpu": space.resources.cpus_per_trial,
        "gpu": space.resources.gpus_per_trial,
        **space.resources.custom,
    }
    return {
        "study": space.name,
        "search": space.search.type,
        "sampler": space.search.sampler,
        "scheduler": space.scheduler.type,
        "n_trials": sum(per_stratum.values()),
        "n_strata": len(per_stratum),
        "strata": list(per_stratum),
        "trials_per_stratum": per_stratum,
        "seeds": list(space.seeds),
        "resources_per_trial": resources,
        "max_concurrent_trials": space.resources.max_concurrent_trials,
        "trial_epochs": trial_epochs,
        "trial_epochs_upper_bound": space.search.type == "optuna" or space.scheduler.type == "asha",
        "run_dir": str(space.run_dir),
    }


def format_plan(plan: Mapping[str, Any]) -> str:
    """A few readable lines about a plan from :func:`estimate_plan`.

    >>> print(format_plan(estimate_plan(load_space("smoke"))).splitlines()[0])
    study smoke: 2 trials (grid) in 1 stratum
    """
    n_strata = plan["n_strata"]
    search = plan["search"] if plan["search"] == "grid" else f"optuna {plan['sampler']}"
    bound = "at most " if plan["trial_epochs_upper_bound"] else ""
    res = ", ".join(f"{k}={v}" for k, v in plan["resources_per_trial"].items())
    lines = [
        f"study {plan['study']}: {plan['n_trials']} trials ({search}) in {n_strata} "
        f"strat{'um' if n_strata == 1 else 'a'}",
        *(f"  {key}: {n} trials" for key, n in plan["trials_per_stratum"].items()),
        f"seeds: {plan['seeds']}; scheduler: {plan['scheduler']}",
        f"resources per trial: {res}"
        + (
            f"; at most {plan['max_concurrent_trials']} at once"
            if plan["max_concurrent_trials"]
            else ""
        ),
        f"cost: {bound}{plan['trial_epochs']} trial-epochs",
        f"results: {plan['run_dir']}",
    ]
    return "\n".join(lines)
