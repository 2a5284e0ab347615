"""Fixtures shared by the study tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    """An embedded Ray with 2 CPUs for one test module (loopback only, token auth: the
    environment is set before Ray is first imported); stopped at the module's end."""
    from study import runner

    runner.prepare_environment(local=True)
    import ray

    started = runner.start_ray(runner.RunOptions(num_cpus=2))
    yield ray
    if started:
        ray.shutdown()
