"""Ray for a study: the environment Ray reads when it starts, the embedded Ray or a
cluster, and the resources one trial asks for, checked against the cluster's nodes
before any trial is submitted.

Example:
    >>> from study.space import load_space
    >>> space = load_space("smoke")
    >>> bundle = check_resources(space, [{"CPU": 2.0}])
    >>> bundle, concurrency(space, bundle, [{"CPU": 2.0}])
    ({'CPU': 1.0}, 2)
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from study.plan import StudyError

if TYPE_CHECKING:
    from study.schema import Space

__all__ = [
    "LOCAL_ENV",
    "RAY_ENV",
    "check_resources",
    "concurrency",
    "live_nodes",
    "prepare_environment",
    "quiet_libraries",
    "start_ray",
]

# Environment every Ray process of a study gets (set before Ray starts).
RAY_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials keep the driver's working directory
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # the run's own tables are the results
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C stops the study at once
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no experiment banner or status tables
}
# Only for the embedded (local) Ray: advertise and bind 127.0.0.1, never an external
# address. Read by Ray when it is imported, so set before `import ray`.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# --------------------------------------------------------------------------- environment


def prepare_environment(local: bool = True) -> None:
    """Set the environment Ray reads when it starts; call before the first ``import
    ray`` for ``local`` so that the embedded Ray binds 127.0.0.1 only.

    The embedded Ray also gets token authentication with a fresh random token in the
    environment (unless ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` are
    set), so Ray does not write a token file into the home folder."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if local:
        os.environ.update(LOCAL_ENV)
        auth_keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
        if not any(k in os.environ for k in auth_keys):
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        if "ray" in sys.modules:  # imported earlier: make its node address loopback too
            import ray._private.ray_constants as ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False


def quiet_libraries() -> None:
    for name in ("ray", "ray.train", "ray.data", "ray.air", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune logs every trial's traceback; the study prints one line per errored trial
    # (the traceback stays in <run dir>/tune/session-<n>/<trial id>/error.txt)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module=r"ray\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"optuna\..*")


def start_ray(options: Any) -> bool:
    """Connect to a cluster or start the embedded Ray; True when this call started it.

    ``options``: a :class:`study.runner.RunOptions` (``address``, ``dashboard``,
    ``num_cpus``, ``num_gpus``)."""
    import ray

    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS")
    prepare_environment(local=not address)
    common: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "configure_logging": True,
    }
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StudyError(f"cannot join the Ray cluster at {address}: {exc}") from None
        return True
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=options.dashboard,
        dashboard_host="127.0.0.1",
        num_cpus=options.num_cpus,
        num_gpus=options.num_gpus,
        **common,
    )
    return True


# --------------------------------------------------------------------------- resources


def check_resources(space: Space, nodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The resource bundle of one trial, checked against the cluster's nodes.

    ``nodes``: the resources of each live node (``ray.nodes()[i]["Resources"]``).
    Raises :class:`StudyError` when no node can hold one trial (Ray would leave such
    trials pending forever, silently).

    >>> from study.space import load_space
    >>> check_resources(load_space("smoke"), [{"CPU": 2.0}])
    {'CPU': 1.0}
    >>> try:
    ...     check_resources(load_space("smoke", ["resources.gpus_per_trial=1"]), [{"CPU": 2.0}])
    ... except StudyError as exc:
    ...     print(str(exc)[:60])
    resources.gpus_per_trial: 1 GPU per trial, but the cluster h
    """
    res = space.resources
    cluster_gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    gpus = res.resolve_gpus(cluster_gpus)
    bundle: dict[str, float] = {"CPU": float(res.cpus_per_trial)}
    if gpus > 0:
        bundle["GPU"] = float(gpus)
    for key, value in (res.custom or {}).items():
        bundle[str(key)] = float(value)

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if not nodes:
        raise StudyError("the Ray cluster has no live node")
    most_cpus = max(float(n.get("CPU", 0)) for n in nodes)
    if bundle["CPU"] > most_cpus:
        raise StudyError(
            f"resources.cpus_per_trial: {fmt(bundle['CPU'])} CPUs per trial, but the largest "
            f"node has {fmt(most_cpus)}"
        )
    if gpus > 0:
        if cluster_gpus <= 0:
            raise StudyError(
                f"resources.gpus_per_trial: {fmt(gpus)} GPU per trial, but the cluster has "
                "no GPU (set gpus_per_trial: 0 or auto)"
            )
        most_gpus = max(float(n.get("GPU", 0)) for n in nodes)
        if gpus > most_gpus:
            raise StudyError(
                f"resources.gpus_per_trial: {fmt(gpus)} GPUs per trial, but the largest node "
                f"has {fmt(most_gpus)}"
            )
    _check_device(space, gpus, cluster_gpus)
    for key in res.custom or {}:
        have = [float(n.get(key, 0)) for n in nodes]
        if max(have) <= 0:
            known = sorted(
                {k for n in nodes for k in n if not k.startswith("node:")}
                - {"CPU", "GPU", "memory", "object_store_memory"}
            )
            raise StudyError(
                f"resources.custom.{key}: no node of the cluster has this resource "
                f"(custom resources there: {', '.join(known) or 'none'})"
            )
        if bundle[key] > max(have):
            raise StudyError(
                f"resources.custom.{key}: {fmt(bundle[key])} per trial, but the most a node "
                f"has is {fmt(max(have))}"
            )
    if not any(all(float(n.get(k, 0)) >= v for k, v in bundle.items()) for n in nodes):
        raise StudyError(
            "resources: no single node has everything one trial asks for "
            + ", ".join(f"{k}={fmt(v)}" for k, v in bundle.items())
        )
    return bundle


def _check_device(space: Space, gpus: float, cluster_gpus: float) -> None:
    """``training.device`` against the GPUs a trial gets on this cluster (what the
    preflight could not tell for ``gpus_per_trial: auto``)."""
    from study.devices import device_resource_error

    spec = space.training.get("device")
    for device in [str(v) for v in spec.candidates()] if spec is not None else []:
        reason = device_resource_error(device, gpus)
        if reason is not None:
            how = f"{gpus:g} GPUs per trial on a cluster with {cluster_gpus:g} GPUs"
            raise StudyError(f"training.device: {reason} ({how})")


def concurrency(space: Space, bundle: Mapping[str, float], nodes: Sequence[Mapping]) -> int:
    """How many trials can run at once on these nodes."""
    total = 0
    for node in nodes:
        fits = [math.floor(float(node.get(k, 0)) / v + 1e-9) for k, v in bundle.items() if v > 0]
        total += min(fits) if fits else 0
    limit = space.resources.max_concurrent_trials
    return max(1, min(total, limit) if limit else total)


def live_nodes() -> list[dict[str, float]]:
    """The resources of each live node of the Ray cluster this process is connected to."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]
