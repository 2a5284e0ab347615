"""Fused trials in a study: a grid's trial configs that differ only in ``latent_dim`` and
``seed`` run as bundles, one Ray Tune trial each, trained together by
:func:`ae4ad.fused.fit_many`; every member is still a trial of its own in the tables.

``resources.fuse`` decides: ``off`` (one Tune trial per config), ``K`` (bundles of up to
K members) or ``auto`` (the default). ``auto`` fuses a grid without early stopping when
it pays, as measured (docs/performance.md): always for trials that get a GPU; on the CPU
only for models of images up to 32 px (latent.yaml's AE: 1.1-1.9x faster per step; the
paper's 64 px AE is 0.4-0.7x as fast fused, grouped convolutions of that width lose to
dense ones). Its bundle size spreads each group over the trials that can run at once,
at most :data:`AUTO_MAX` members. An Optuna search and ASHA run unfused (both decide
trial by trial as results come in), and so do studies that log to experiment trackers
(their Ray Tune callbacks log one run per Tune trial).

Members are sorted by ``latent_dim`` before they are cut into bundles, so a bundle's
shared latent width (the largest member's) wastes little work on masked units. A member
with a checkpoint from an earlier session (``--resume``) is left out of bundles and
continues alone from it with ``ae4ad.fit``; a bundle itself restarts from scratch.

Example:
    >>> from study.space import load_space
    >>> from study.plan import make_plan
    >>> plan = make_plan(load_space("latent"))
    >>> units = fuse(plan.todo, plan.space, concurrency=2)
    >>> [len(u["members"]) for u in units], units[0]["trial_id"][:7]
    ([8, 8], 'bundle-')
    >>> [m["model_params"]["latent_dim"] for m in units[0]["members"]]
    [1, 1, 2, 2, 4, 4, 8, 8]
    >>> len(fuse(plan.todo, load_space("latent", ["resources.fuse=off"]), concurrency=2))
    16
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from study.schema import Space

__all__ = [
    "AUTO_MAX",
    "MEMBERS_KEY",
    "describe",
    "fuse",
    "fuse_size",
    "is_bundle",
    "preview",
    "resources_for",
    "why_unfused",
]

AUTO_MAX = 8
"""The most members ``fuse: auto`` puts in one bundle."""
AUTO_MAX_CPU_IMAGE_SIZE = 32
"""On the CPU, ``fuse: auto`` fuses models of images up to this size (see above)."""
MEMBERS_KEY = "members"
"""A bundle's config: the member trial configs under this key."""
_MEMBER_VARY = ("trial_id", "seed")


def is_bundle(config: Mapping[str, Any]) -> bool:
    return MEMBERS_KEY in config


def why_unfused(space: Space) -> str | None:
    """Why ``space``'s trials run one per Tune trial (None when they may fuse)."""
    setting = _setting(space)
    if setting == "off":
        return "resources.fuse is off"
    if space.search.type != "grid":
        return "an Optuna search asks for one trial at a time"
    if space.scheduler.type != "none":
        return "early stopping (ASHA) decides trial by trial"
    if space.logging.trackers:
        return "experiment trackers log one run per Ray Tune trial"
    return None


def _setting(space: Space) -> str | int:
    return getattr(space.resources, "fuse", "auto")


def _group_key(config: Mapping[str, Any]) -> str:
    shared = {k: v for k, v in config.items() if k not in _MEMBER_VARY}
    shared["model_params"] = {
        k: v for k, v in config.get("model_params", {}).items() if k != "latent_dim"
    }
    return json.dumps(shared, sort_keys=True, default=str)


def _auto_pays(config: Mapping[str, Any], gpu: bool) -> bool:
    if gpu:
        return True
    size = (config.get("dataset_params") or {}).get("image_size")
    return size is not None and int(size) <= AUTO_MAX_CPU_IMAGE_SIZE


def fuse_size(space: Space, n: int, concurrency: int) -> int:
    """Members per bundle for a group of ``n`` fusable configs."""
    setting = _setting(space)
    if isinstance(setting, int):
        return setting
    return max(1, min(AUTO_MAX, math.ceil(n / max(1, concurrency))))


def fuse(
    todo: Sequence[Mapping[str, Any]],
    space: Space,
    concurrency: int,
    gpu: bool = False,
    alone: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The Tune trials of a grid's ``todo`` configs: single configs and bundles
    (``{"trial_id": "bundle-...", "members": [configs], ...}``), in the order of the
    first config of each. ``alone``: trial ids never bundled (they continue from a
    checkpoint); ``gpu``: whether trials get a GPU (``auto`` fuses every size then)."""
    from ae4ad.fused import fusable
    from study.space import fit_config

    if why_unfused(space) is not None:
        return [dict(c) for c in todo]
    auto, alone = _setting(space) == "auto", set(alone)
    groups: dict[str, list[dict[str, Any]]] = {}
    units: list[Any] = []
    for config in todo:
        ok = config["trial_id"] not in alone and (not auto or _auto_pays(config, gpu))
        if ok and fusable([fit_config(config)]) is None:
            key = _group_key(config)
            if key not in groups:
                groups[key] = []
                units.append(groups[key])
            groups[key].append(dict(config))
        else:
            units.append(dict(config))
    out: list[dict[str, Any]] = []
    for unit in units:
        if isinstance(unit, dict):
            out.append(unit)
            continue
        members = sorted(unit, key=lambda c: (c["model_params"].get("latent_dim", 0), c["seed"]))
        k = fuse_size(space, len(members), concurrency)
        for start in range(0, len(members), k):
            chunk = members[start : start + k]
            out.append(chunk[0] if len(chunk) == 1 else _bundle(chunk))
    return out


def _bundle(members: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [m["trial_id"] for m in members]
    digest = hashlib.sha1(",".join(ids).encode()).hexdigest()[:10]
    first = members[0]
    labels = {k: first[k] for k in ("dataset_label", "model_label", "stratum") if k in first}
    return {"trial_id": f"bundle-{digest}", **labels, MEMBERS_KEY: members}


def resources_for(config: Mapping[str, Any], per_trial: Mapping[str, float]) -> dict[str, float]:
    """The resources of one Tune trial: a bundle asks for its members' GPU share (K x
    ``gpus_per_trial``, at most one GPU) and one trial's CPUs (it is one process).

    >>> resources_for({"members": [{}] * 4}, {"CPU": 1.0, "GPU": 0.125})
    {'CPU': 1.0, 'GPU': 0.5}
    >>> resources_for({"members": [{}] * 16}, {"CPU": 1.0, "GPU": 0.25})["GPU"]
    1.0
    """
    out = {k: float(v) for k, v in per_trial.items()}
    if is_bundle(config) and out.get("GPU"):
        out["GPU"] = min(1.0, out["GPU"] * len(config[MEMBERS_KEY]))
    return out


def describe(units: Sequence[Mapping[str, Any]], space: Space) -> str:
    """One line on how the trials are fused.

    >>> from study.space import load_space
    >>> space = load_space("latent")
    >>> describe([{"members": [{}] * 8}, {"members": [{}] * 8}], space)
    'fused: 16 trials in 2 bundles of up to 8 members, 0 alone (resources.fuse auto)'
    """
    reason = why_unfused(space)
    if reason is not None:
        return f"fused: no ({reason})"
    bundles = [u for u in units if is_bundle(u)]
    if not bundles:
        return (
            f"fused: no (resources.fuse {_setting(space)}: nothing to fuse; auto fuses on the "
            f"CPU only images up to {AUTO_MAX_CPU_IMAGE_SIZE} px)"
        )
    n = sum(len(u[MEMBERS_KEY]) for u in bundles)
    most = max(len(u[MEMBERS_KEY]) for u in bundles)
    shape = f"{len(bundles)} bundles of up to {most} members"
    if len(bundles) == 1:
        shape = f"1 bundle of {most} members"
    return (
        f"fused: {n} trials in {shape}, "
        f"{len(units) - len(bundles)} alone (resources.fuse {_setting(space)})"
    )


def preview(space: Space) -> str:
    """How a run of ``space`` on this machine's CPUs would fuse (``--dry-run``)."""
    import os

    from study.plan import make_plan

    reason = why_unfused(space)
    if reason is not None:
        return f"fused: no ({reason})"
    cpus = os.cpu_count() or 1
    at_once = max(1, int(cpus // space.resources.cpus_per_trial))
    if space.resources.max_concurrent_trials:
        at_once = min(at_once, space.resources.max_concurrent_trials)
    plan = make_plan(space)
    line = describe(fuse(plan.todo, space, at_once), space)
    return f"{line}; as on this machine ({cpus} CPUs, no GPU): a cluster may bundle otherwise"
