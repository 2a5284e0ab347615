"""Checks of a validated space that look past its schema, run when the space is loaded
(and so by ``--dry-run``, before Ray starts): the training device against the GPUs a
trial is given (:func:`device_check`), and every distinct model config built once,
cheaply.

A model that cannot be built for its data set (``image_size: 30`` with
``num_blocks: 3``) would make every one of its trials error; the preflight catches it
first and reports the model's own message as a :class:`~study.space.SpaceError`. Models
are built on PyTorch's ``meta`` device (no memory, no data; a few ms each, once per
process); image size and channels come from the data set's params (or its loader's
defaults), so no data is read. No forward pass is run: the first one on the meta device
costs seconds of imports, and ae4ad's models check their configuration when built.

Example:
    >>> from study.space import load_space, validate_space
    >>> len(model_checks(load_space("latent")))
    8
    >>> validate_space({"name": "t", "datasets": [{"name": "phantom",
    ...     "params": {"image_size": 30}}], "models": [{"name": "ae",
    ...     "params": {"num_blocks": 3}}]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    study.schema.SpaceError: <space>: models[0].params: cannot be built for datasets[0] \
('phantom', image_size 30): image_size 30 must be divisible by 2**num_blocks = 8, got ...
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from study.schema import DatasetSpec, Space

__all__ = ["ModelCheck", "device_check", "model_checks", "preflight"]

MAX_COMBINATIONS = 256  # per (data set, model): beyond, each value is tried on its own


@dataclass(frozen=True)
class ModelCheck:
    """One model build to try: ``model`` with ``params`` (data-defined ones included),
    and where it comes from (``models[model_index]`` for ``datasets[dataset_index]``)."""

    model: str
    params: tuple[tuple[str, Any], ...]
    model_index: int
    dataset_index: int


def _data_shape(dataset: DatasetSpec, sources: Mapping[str, Callable | None]) -> dict[str, Any]:
    """image_size and in_channels of a data set's images, from its params or its loader's
    defaults (no data is read); only what is known."""
    defaults: dict[str, Any] = {}
    loader = sources.get(dataset.name)
    if loader is not None:
        try:
            for p in inspect.signature(loader).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    defaults[p.name] = p.default
        except (TypeError, ValueError):
            pass
    params = {**defaults, **dataset.params}
    shape: dict[str, Any] = {}
    if isinstance(params.get("image_size"), int):
        shape["image_size"] = params["image_size"]
    shape["in_channels"] = 3 if params.get("rgb") is True else 1
    return shape


def _combinations(specs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the specs' candidate values (a range: its two ends); past
    MAX_COMBINATIONS, the first values with each other value changed one at a time."""
    keys = list(specs)
    values = [specs[k].candidates() for k in keys]
    n = 1
    for v in values:
        n *= len(v)
    if n <= MAX_COMBINATIONS:
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    base = {k: v[0] for k, v in zip(keys, values)}
    return [base] + [{**base, k: x} for k, v in zip(keys, values) for x in v[1:]]


def model_checks(space: Space) -> list[ModelCheck]:
    """The distinct model builds of a space, in trial order (each once)."""
    from study.schema import _source_registry

    sources = _source_registry()
    seen: set = set()
    out: list[ModelCheck] = []
    for j, dataset in enumerate(space.datasets):
        shape = _data_shape(dataset, sources)
        for i, model in enumerate(space.models):
            for combo in _combinations(model.params):
                params = tuple(sorted({**combo, **shape}.items(), key=lambda kv: kv[0]))
                if (model.name, params) not in seen:
                    seen.add((model.name, params))
                    out.append(ModelCheck(model.name, params, i, j))
    return out


@lru_cache(maxsize=4096)
def _build_error(build_model: Callable, model: str, params: tuple) -> str | None:
    """Why ``build_model(model, **params)`` fails on the meta device, or None."""
    import torch

    try:
        with torch.device("meta"):
            build_model(model, **dict(params))
    except Exception as exc:  # noqa: BLE001  (any failure is the model's own message)
        if type(exc).__name__ == "ModelError":
            return str(exc)
        return f"{type(exc).__name__}: {exc}"
    return None


def device_check(space: Space, file: str | None = None) -> None:
    """Raise SpaceError when ``training.device`` asks for GPUs that
    ``resources.gpus_per_trial`` does not give a trial (:mod:`study.devices`).

    >>> from study.space import load_space
    >>> load_space("smoke", ["training.device=cuda", "resources.gpus_per_trial=0"])
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    study.schema.SpaceError: smoke.yaml: training.device: cuda needs a GPU, but ...
    """
    from study.devices import device_resource_error
    from study.schema import SpaceError

    spec = space.training.get("device")
    devices = [str(v) for v in spec.candidates()] if spec is not None else []
    for device in devices:
        reason = device_resource_error(device, space.resources.gpus_per_trial)
        if reason is not None:
            file = file or (space.path.name if space.path is not None else "<space>")
            raise SpaceError(f"{file}: training.device: {reason}")


def preflight(space: Space, file: str | None = None) -> None:
    """Check ``training.device`` against the resources (:func:`device_check`), then build
    every distinct model config of ``space`` once on the meta device, for its data set's
    image size and channels; a config that fails raises SpaceError with the model's own
    message. The builds are skipped when ae4ad.models has no ``build_model`` (a stand-in
    registry)."""
    from study.schema import SpaceError

    device_check(space, file)
    try:
        build_model = getattr(importlib.import_module("ae4ad.models"), "build_model", None)
    except ImportError:
        build_model = None
    if build_model is None:
        return
    file = file or (space.path.name if space.path is not None else "<space>")
    for check in model_checks(space):
        reason = _build_error(build_model, check.model, check.params)
        if reason is None:
            continue
        dataset = space.datasets[check.dataset_index]
        params = {k: v for k, v in check.params if k not in ("image_size", "in_channels")}
        size = dict(check.params).get("image_size")
        data = f"{dataset.label!r}" + (f", image_size {size}" if size is not None else "")
        message = (
            f"{file}: models[{check.model_index}].params: cannot be built for "
            f"datasets[{check.dataset_index}] ({data}): {reason}, got {params!r}"
        )
        raise SpaceError(" ".join(message.split()))
