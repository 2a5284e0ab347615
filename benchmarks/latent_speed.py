"""Time ``latent_statistics`` and ``image_intrinsic_dimension`` on random data.

Run: ``python benchmarks/latent_speed.py`` (prints one line per case: the best of 3
wall-clock times in seconds).
"""

from __future__ import annotations

import time

import numpy as np

from ae4ad.latent import image_intrinsic_dimension, latent_statistics


def best_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    for n, d in [(1000, 16), (1000, 256), (5000, 16), (5000, 64), (5000, 256)]:
        z = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d))).astype(np.float32)
        t = best_time(lambda z=z: latent_statistics(z))
        print(f"latent_statistics n={n:5d} d={d:3d}: {t:.3f} s")
    for n, shape in [(2000, (1, 64, 64)), (2000, (3, 64, 64)), (5000, (1, 128, 128))]:
        images = rng.uniform(-1, 1, size=(n, *shape)).astype(np.float32)
        t = best_time(lambda images=images: image_intrinsic_dimension(images), repeats=1)
        print(f"image_intrinsic_dimension n={n} shape={shape}: {t:.3f} s")


if __name__ == "__main__":
    main()
