"""The YAML search space of a study: read, validate, expand into trial configs.

A space names the data sets, the models and their parameter specs, the training
settings, the seeds, the search (grid or Optuna), the scheduler and the resources per
trial. Everything is checked before anything runs, by a pydantic schema (every section
rejects unknown keys) and by building each distinct model once (:mod:`study.preflight`); a
mistake raises :class:`SpaceError` with a one-line message
``<file>: <key path>: <what is wrong>, got <value>``.

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
import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ae4ad.train import TrainConfig, default_eval_every
from study.params import _dotted
from study.schema import (
    AUTO_GPUS,
    DATA_DEFINED_PARAMS,
    DATA_ROOT_ENV,
    MODEL_PARAM_RULES,
    TRAINING_RULES,
    DatasetSpec,
    FailureSpec,
    ModelSpec,
    ParamSpec,
    ResourceSpec,
    SchedulerSpec,
    SearchSpec,
    Space,
    SpaceError,
    Stratum,
    parse_space,
)

__all__ = [
    "AUTO_GPUS",
    "DATA_DEFINED_PARAMS",
    "DATA_ROOT_ENV",
    "DatasetSpec",
    "FIT_KEYS",
    "FailureSpec",
    "MODEL_PARAM_RULES",
    "ModelSpec",
    "ParamSpec",
    "ResourceSpec",
    "SchedulerSpec",
    "SearchSpec",
    "Space",
    "SpaceError",
    "Stratum",
    "TRAINING_DEFAULTS",
    "TRAINING_RULES",
    "apply_overrides",
    "estimate_plan",
    "fit_config",
    "format_plan",
    "grid_trials",
    "load_space",
    "resolve_space_path",
    "sample_trial",
    "shipped_spaces_dir",
    "strata",
    "trial_id",
    "validate_space",
]

REPO_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

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
    "deterministic",
    "gpu_memory_fraction",
)
HARNESS_KEYS = ("dataset_label", "model_label", "stratum")
# The training defaults are ae4ad's (TrainConfig; eval_every: default_eval_every(epochs),
# written into every trial's config).
TRAINING_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(TrainConfig)
    if f.name in ("epochs", "batch_size", "lr", "weight_decay", "score", "device")
}


# --------------------------------------------------------------------------- validation


def validate_space(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    file_name: str | None = None,
    check_data: bool = True,
    preflight: bool = True,
) -> Space:
    """Validate the parsed YAML of a space; ``path`` is the file it came from.
    ``check_data=False`` skips the checks that look at the file system (data roots);
    ``preflight=False`` skips building each distinct model once
    (:func:`study.preflight.preflight`).

    >>> space = validate_space({"name": "toy", "datasets": [{"name": "phantom"}],
    ...     "models": [{"name": "ae", "params": {"latent_dim": [2, 4]}}]})
    >>> space.models[0].params["latent_dim"]
    ParamSpec(kind='grid', values=[2, 4], low=None, high=None, log=False)
    """
    space = parse_space(raw, path=path, file_name=file_name, check_data=check_data)
    if preflight:
        from study.preflight import preflight as check_models

        check_models(space, file_name)
    return space


# --------------------------------------------------------------------------- files


def shipped_spaces_dir() -> Path:
    """The folder of the spaces shipped with ae4ad-study: package data of ``study``
    (``study/spaces/`` in a wheel; in the repository a link to ``search_spaces/``)."""
    shipped = Path(str(importlib.resources.files("study") / "spaces"))
    return shipped if shipped.is_dir() else REPO_SPACES_DIR


SPACES_DIR = shipped_spaces_dir()


def _space_folders() -> list[Path]:
    return [Path("search_spaces"), shipped_spaces_dir()]


def resolve_space_path(name_or_path: str) -> Path:
    """The YAML file of a space: an existing path, else a bare name (``latent`` or
    ``latent.yaml``) looked up in ./, ./search_spaces/ and the shipped spaces.

    >>> resolve_space_path("latent").name
    'latent.yaml'
    """
    given = Path(str(name_or_path))
    candidates = [given]
    if given.suffix not in (".yaml", ".yml"):
        candidates.append(given.with_name(given.name + ".yaml"))
    if len(given.parts) == 1:
        names = [c.name for c in candidates]
        for folder in _space_folders():
            candidates.extend(folder / n for n in names)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    if given.is_dir():
        raise SpaceError(f"{name_or_path}: is a folder, not a YAML file")
    available = sorted({p.name for folder in _space_folders() for p in _yaml_files(folder)})
    raise SpaceError(
        f"{name_or_path}: no such file (looked in ./ and search_spaces/; "
        f"available: {', '.join(available) or 'none'})"
    )


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]


def load_space(
    name_or_path: str,
    overrides: Sequence[str] = (),
    *,
    check_data: bool = True,
    preflight: bool = True,
) -> Space:
    """Read, override and validate a space.

    ``overrides`` are ``key=value`` strings (``training.epochs=5``, ``seeds=[0]``,
    ``models[0].params.latent_dim=[4,8]``), values parsed as YAML. ``check_data=False``
    skips the checks that look at the file system (data roots), for dry runs;
    ``preflight=False`` skips building each distinct model once (see
    :func:`validate_space`).

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
    return validate_space(raw, path=path, check_data=check_data, preflight=preflight)


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
        "eval_every": training.get("eval_every", default_eval_every(epochs)),
        "score": training.get("score", TRAINING_DEFAULTS["score"]),
        "device": training.get("device", TRAINING_DEFAULTS["device"]),
        "seed": seed,
        "threads": space.resources.threads,
    }
    for key in ("bf16", "channels_last", "deterministic", "gpu_memory_fraction"):
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
    config's canonical JSON, without device, threads and gpu_memory_fraction (they do not
    change results).

    >>> trial_id({"dataset_label": "phantom", "model_label": "ae", "seed": 0,
    ...           "model_params": {"latent_dim": 16}})
    'phantom-ae-d16-s0-883fb33ad9'
    """
    skip = ("device", "threads", "gpu_memory_fraction", "trial_id")  # results do not change
    payload = {k: v for k, v in config.items() if k not in skip}
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
