"""Time the phantom generator: 3,000 images (2,000 train, 200 val, 400 + 400 test).

Prints the median wall time of a few runs, images per second and the median CPU time of
the process (the generator is single-threaded, so CPU time is the better figure on a
shared, busy machine), per image size.

    python benchmarks/phantom_speed.py            # 32 and 64 px, 5 runs each
    python benchmarks/phantom_speed.py --sizes 32 --repeats 3 --variant chest
"""

from __future__ import annotations

import argparse
import statistics
import time

from ae4ad.data.phantom import load_phantom

SPLITS = dict(n_train=2000, n_val=200, n_test_normal=400, n_test_abnormal=400)


def time_phantom(
    image_size: int, repeats: int, variant: str = "brain"
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``repeats`` generations of 3,000 images at ``image_size``.

    >>> wall, cpu = time_phantom(16, 1)
    >>> len(wall), len(cpu)
    (1, 1)
    """
    load_phantom(image_size=image_size, variant=variant, n_train=8, n_test_abnormal=8)  # warm up
    wall, cpu = [], []
    for seed in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        load_phantom(image_size=image_size, variant=variant, seed=seed, **SPLITS)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", default="brain", choices=["brain", "chest"])
    args = parser.parse_args()
    n = sum(SPLITS.values())
    print(f"phantom ({args.variant}): {n} images per run, median of {args.repeats} runs")
    for size in args.sizes:
        wall, cpu = time_phantom(size, args.repeats, args.variant)
        med = statistics.median(wall)
        print(
            f"  {size:>3} x {size:<3}  median {med:6.3f} s wall (min {min(wall):.3f}, "
            f"max {max(wall):.3f}), {statistics.median(cpu):6.3f} s CPU, "
            f"{n / med:7.0f} images/s"
        )


if __name__ == "__main__":
    main()
