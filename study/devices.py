"""Which device a trial trains on, from the GPUs Ray assigned it, and which device
settings a space's resources cannot give (checked before Ray starts).

Inside a trial, ``device: auto`` means the GPUs Ray assigned (``ray.get_gpu_ids()``) and
the CPU when it assigned none, whatever ``CUDA_VISIBLE_DEVICES`` says (Ray >= 2.x leaves
that variable alone for a worker given 0 GPUs, so PyTorch would see every GPU of the
node). Ray normally narrows ``CUDA_VISIBLE_DEVICES`` to the assigned GPUs, so the
trial's first GPU is ``cuda:0``; with ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` it
does not, and the assigned id is looked up among the visible devices instead.

Example:
    >>> trial_device("auto", [], None)
    'cpu'
    >>> trial_device("auto", ["3"], "3")
    'cuda:0'
    >>> trial_device("cuda", ["5"], "2,5,7", noset=True)
    'cuda:1'
    >>> device_resource_error("cuda:1", 0.25)
    'cuda:1 needs 2 GPUs per trial, but gpus_per_trial is 0.25 (a trial sees 1 GPU: \
cuda, cuda:0)'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from ae4ad.train import ConfigError

__all__ = [
    "NOSET_ENV",
    "device_resource_error",
    "memory_fraction",
    "noset_visible_devices",
    "trial_device",
]

NOSET_ENV = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


def noset_visible_devices(environ: Mapping[str, str] | None = None) -> bool:
    """Whether Ray leaves ``CUDA_VISIBLE_DEVICES`` alone (its NOSET variable is 1/true)."""
    value = (os.environ if environ is None else environ).get(NOSET_ENV, "")
    return value.lower() in ("1", "true")


def _index(requested: str) -> int:
    return int(requested.split(":")[1]) if ":" in requested else 0


def trial_device(
    requested: str, gpu_ids: Sequence[str | int], visible: str | None, noset: bool = False
) -> str:
    """The device a trial trains on: ``requested`` (the config's ``device``) given the
    GPU ids Ray assigned the trial (``gpu_ids``) and the process's
    ``CUDA_VISIBLE_DEVICES`` (``visible``; None when unset).

    ``cpu`` stays ``cpu``; ``auto`` is ``cpu`` without assigned GPUs, else like ``cuda``;
    ``cuda`` / ``cuda:<i>`` is the trial's first / i-th assigned GPU as this process
    numbers it. Raises :class:`ae4ad.ConfigError` for a CUDA device the assignment lacks.
    """
    if requested == "cpu" or (requested == "auto" and not gpu_ids):
        return "cpu"
    ids = [str(g) for g in gpu_ids]
    index = _index(requested)
    if index >= len(ids):
        raise ConfigError(
            f"device: {requested!r}, but Ray assigned this trial {len(ids)} GPU(s) "
            f"({', '.join(ids) or 'none'}); raise resources.gpus_per_trial or use device auto"
        )
    if not noset:
        return f"cuda:{index}"  # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned ids
    order = [v.strip() for v in visible.split(",")] if visible else None
    target = ids[index]
    if order is None:
        return f"cuda:{int(target)}"
    if target not in order:
        raise ConfigError(
            f"device: Ray assigned GPU {target}, which CUDA_VISIBLE_DEVICES={visible} "
            f"does not show ({NOSET_ENV} is set)"
        )
    return f"cuda:{order.index(target)}"


def memory_fraction(device: str, gpus_per_trial: float, setting: float | None) -> float | None:
    """The CUDA memory fraction a trial's process may take: ``setting`` (the space's
    ``training.gpu_memory_fraction``) when given, else its GPU share when that is below
    one GPU; None (no limit) on the CPU or for whole GPUs.

    >>> memory_fraction("cuda:0", 0.25, None), memory_fraction("cuda:0", 0.25, 0.5)
    (0.25, 0.5)
    >>> memory_fraction("cpu", 0.25, None), memory_fraction("cuda:0", 1, None)
    (None, None)
    """
    if not device.startswith("cuda"):
        return None
    if setting is not None:
        return float(setting)
    return float(gpus_per_trial) if 0 < gpus_per_trial < 1 else None


def device_resource_error(device: str, gpus_per_trial: float | str) -> str | None:
    """Why a trial with ``device`` cannot run with ``gpus_per_trial`` GPUs (a number, or
    ``"auto"``: a fraction of one GPU, or none on a cluster without GPUs); None when it
    can or when only the cluster can tell (``cuda`` with ``auto``)."""
    if not device.startswith("cuda"):
        return None
    if gpus_per_trial == "auto":
        if _index(device) > 0:
            return (
                f"{device} needs {_index(device) + 1} GPUs per trial, but "
                "gpus_per_trial is auto (a fraction of one GPU: a trial sees 1 GPU: cuda, "
                "cuda:0)"
            )
        return None
    gpus = float(gpus_per_trial)
    if gpus <= 0:
        return (
            f"{device} needs a GPU, but gpus_per_trial is 0 (Ray gives the trial no "
            "GPU); set gpus_per_trial > 0 or device auto / cpu"
        )
    seen = max(1, math.ceil(gpus))
    if _index(device) >= seen:
        allowed = ", ".join(["cuda"] + [f"cuda:{i}" for i in range(seen)])
        return (
            f"{device} needs {_index(device) + 1} GPUs per trial, but gpus_per_trial "
            f"is {gpus:g} (a trial sees {seen} GPU{'s' if seen > 1 else ''}: {allowed})"
        )
    return None
