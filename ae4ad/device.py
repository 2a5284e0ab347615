"""Where and how a training run computes: the device a config names (checked against
what the machine has), PyTorch's deterministic settings, the CUDA memory fraction of a
process on a shared GPU and the wording of its out-of-memory error.
:func:`training_process` puts them together around one run of :func:`ae4ad.fit` or
:func:`ae4ad.fused.fit_many`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ae4ad.train import TrainConfig

__all__ = [
    "CUBLAS_WORKSPACE",
    "DEVICE_PATTERN",
    "DEVICE_RULE",
    "apply_memory_fraction",
    "deterministic_mode",
    "out_of_memory_message",
    "resolve_device",
    "training_process",
]

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
"""The devices a config may name; :data:`DEVICE_RULE` says it in words."""
DEVICE_RULE = "expected auto, cpu, cuda or cuda:<index>"


def resolve_device(name: str) -> torch.device:
    """The torch device a config's ``device`` names: ``auto`` is ``cuda`` when PyTorch
    sees a GPU, else ``cpu``. Raises :class:`ConfigError` (one line) for a device this
    machine lacks, instead of PyTorch's errors at the first tensor moved there.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    ae4ad.train.ConfigError: device: expected auto, cpu, cuda or cuda:<index>, got 'gpu'
    """
    from ae4ad.train import ConfigError  # (ae4ad.train imports this module)

    if not (isinstance(name, str) and re.fullmatch(DEVICE_PATTERN, name)):
        raise ConfigError(f"device: {DEVICE_RULE}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        cuda = torch.version.cuda
        built = f"built with CUDA {cuda}" if cuda else "a CPU-only build"
        raise ConfigError(
            f"device: {name!r}, but PyTorch sees no CUDA GPU on this machine (torch "
            f"{torch.__version__}, {built}); use cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "all GPUs visible"
        raise ConfigError(
            f"device: {name!r}, but this process sees {count} GPU(s) ({seen}); "
            f"allowed: cuda, {', '.join(f'cuda:{i}' for i in range(count))}, cpu or auto"
        )
    return device


_PRECISION_KNOBS = (  # (module, attribute, the value deterministic mode sets)
    (torch.backends.cudnn, "deterministic", True),
    (torch.backends.cudnn, "benchmark", False),
)


def _tf32_knobs() -> list[tuple[object, str, object]]:
    """The switches that keep float32 convolutions and matrix products in full float32
    (no TF32): PyTorch >= 2.9 spells them ``fp32_precision = "ieee"``, older ones
    ``allow_tf32 = False`` (the two APIs must not be mixed)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return [
            (torch.backends.cudnn.conv, "fp32_precision", "ieee"),
            (torch.backends.cudnn.rnn, "fp32_precision", "ieee"),
            (torch.backends.cuda.matmul, "fp32_precision", "ieee"),
        ]
    return [
        (torch.backends.cudnn, "allow_tf32", False),
        (torch.backends.cuda.matmul, "allow_tf32", False),
    ]


CUBLAS_WORKSPACE = ":4096:8"
"""``CUBLAS_WORKSPACE_CONFIG`` in deterministic mode (what cuBLAS needs for deterministic
results; set before the process's first cuBLAS call, which is why a trial sets it
before it trains)."""


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Run the body with PyTorch's deterministic settings: cuDNN deterministic, its
    autotuner (benchmark) off, TF32 off for convolutions and matrix products,
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an operation without a
    deterministic implementation warns) and ``CUBLAS_WORKSPACE_CONFIG``; the previous
    settings come back afterwards. ``enabled=False`` changes nothing.

    >>> with deterministic_mode():
    ...     torch.are_deterministic_algorithms_enabled()
    True
    >>> torch.are_deterministic_algorithms_enabled()
    False
    """
    if not enabled:
        yield
        return
    knobs = [*_PRECISION_KNOBS, *_tf32_knobs()]
    saved = [getattr(module, name) for module, name, _ in knobs]
    algorithms = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        for module, name, value in knobs:
            setattr(module, name, value)
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        for (module, name, _), value in zip(knobs, saved):
            setattr(module, name, value)
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def apply_memory_fraction(cfg: TrainConfig, device: torch.device) -> None:
    """Cap what this process's caching allocator may take of the GPU at
    ``cfg.gpu_memory_fraction`` (``torch.cuda.set_per_process_memory_fraction``); nothing
    on the CPU or without a fraction."""
    if device.type == "cuda" and cfg.gpu_memory_fraction is not None:
        torch.cuda.set_per_process_memory_fraction(float(cfg.gpu_memory_fraction), device)


def out_of_memory_message(cfg: TrainConfig, device: torch.device, exc: BaseException) -> str:
    """One line for a CUDA out-of-memory error: the trial's share of the GPU and what to
    change, then PyTorch's own first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if cfg.gpu_memory_fraction is not None:
        share = f"its share of {device}: gpu_memory_fraction {cfg.gpu_memory_fraction:g}"
        if device.type == "cuda" and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(device).total_memory / 2**30
            share += f" = {cfg.gpu_memory_fraction * total:.1f} of {total:.1f} GiB"
    else:
        share = f"no memory limit of its own on {device} (it shares the GPU with what else runs)"
    return (
        f"out of GPU memory with {share}; lower batch_size ({cfg.batch_size}) or "
        f"eval_batch_size ({cfg.eval_batch_size}), give each trial a larger share "
        "(resources.gpus_per_trial; fewer trials per GPU) or set "
        f"training.gpu_memory_fraction. PyTorch: {first[:300]}"
    )


@contextlib.contextmanager
def training_process(cfg: TrainConfig) -> Iterator[torch.device]:
    """The process settings one training run asks for, around its body: torch threads,
    the device (checked, see :func:`resolve_device`), its CUDA memory fraction and
    :func:`deterministic_mode`; a CUDA out-of-memory error is raised again with
    :func:`out_of_memory_message`. Yields the device."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    apply_memory_fraction(cfg, device)
    with deterministic_mode(cfg.deterministic):
        try:
            yield device
        except torch.cuda.OutOfMemoryError as exc:
            raise torch.cuda.OutOfMemoryError(out_of_memory_message(cfg, device, exc)) from exc
