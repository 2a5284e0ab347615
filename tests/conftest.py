"""Fixtures for the whole suite.

The suite's exact comparisons are CPU facts: the ae4ad-level tests pin ``device: cpu``,
and an embedded Ray that a test starts without declaring GPUs is given none, so that on
a machine with GPUs (which Ray would detect) ``device: auto`` trials still train on the
CPU. Tests that declare GPUs (``tests/study/test_gpu_scheduling.py``) keep them; the
CUDA cases of ``tests/test_device.py`` run where PyTorch sees a GPU
(``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture(scope="session", autouse=True)
def _ray_detects_no_gpus():
    from study import cluster, runner

    start = cluster.start_ray

    def start_without_detected_gpus(options) -> bool:  # noqa: ANN001
        if dataclasses.is_dataclass(options) and options.num_gpus is None:
            options = dataclasses.replace(options, num_gpus=0)
        return start(options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cluster, "start_ray", start_without_detected_gpus)
        patch.setattr(runner, "start_ray", start_without_detected_gpus)
        yield
