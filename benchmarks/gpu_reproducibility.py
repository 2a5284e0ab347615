"""Same seed, same numbers? Reruns of one training on one device compared bit for bit,
with and without ``deterministic: true``; a resume against the uninterrupted run; a
bf16-trained model scored again through ``load_trained`` (what ``predict`` does); fused
bundles with channels_last and bf16 against the same bundle channels-first. Used by
benchmarks/gpu_check.sh; prints one line per check.

Usage: python benchmarks/gpu_reproducibility.py [--device cuda] [--image-size 64]
       python benchmarks/gpu_reproducibility.py --device cpu --image-size 16 --n-train 64
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import ae4ad
from ae4ad.fused import fit_many
from ae4ad.trained import save_checkpoint

TIMINGS = ("elapsed_s", "train_time_s", "images_per_s")


def differences(a: list[dict], b: list[dict]) -> tuple[bool, float, float]:
    """(records identical, largest |score difference|, largest |train_loss difference|)."""
    same = [{k: v for k, v in r.items() if k not in TIMINGS} for r in a] == [
        {k: v for k, v in r.items() if k not in TIMINGS} for r in b
    ]
    scores = np.abs(np.subtract(a[-1]["scores"], b[-1]["scores"])).max()
    loss = max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a, b))
    return same, float(scores), float(loss)


def line(label: str, a: list[dict], b: list[dict]) -> None:
    same, scores, loss = differences(a, b)
    speed = " / ".join(f"{r[-1]['images_per_s']:.0f}" for r in (a, b))
    print(
        f"{label}: bit-identical {same}; largest |score diff| {scores:.2e}, "
        f"|train_loss diff| {loss:.2e}; training images/s {speed}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=256, help="training images")
    args = parser.parse_args()
    t0 = time.perf_counter()
    size = args.image_size
    data = ae4ad.load_dataset(
        "phantom", image_size=size, n_train=args.n_train, n_val=32, n_test_normal=64,
        n_test_abnormal=64,
    )  # fmt: skip
    blocks = 4 if size >= 64 else 2
    base = {
        "model": "ae", "epochs": args.epochs, "eval_every": max(1, args.epochs // 2),
        "batch_size": 64, "device": args.device, "seed": 0,
        "model_params": {"latent_dim": 16, "num_blocks": blocks},
    }  # fmt: skip

    for deterministic in (False, True):
        config = {**base, "deterministic": deterministic}
        runs = [list(ae4ad.fit(config, dataset=data)) for _ in range(2)]
        line(f"same seed twice, deterministic {deterministic}", *runs)

    config = {**base, "deterministic": True}
    states: list[dict] = []
    full = list(ae4ad.fit(config, dataset=data, state_out=lambda s, r: states.append(s)))
    again = list(ae4ad.fit(config, dataset=data, start_state=states[0]))
    line(f"resume from epoch {states[0]['epoch']} vs uninterrupted, deterministic", full[1:], again)

    states = []
    bf16 = {**config, "bf16": True, "channels_last": True}
    run = list(ae4ad.fit(bf16, dataset=data, state_out=lambda s, r: states.append(s)))
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, states[-1])
        scores = ae4ad.load_trained(folder, device=args.device).score(data.test)["scores"]
    same = scores.tolist() == run[-1]["scores"]
    print(f"bf16 + channels_last run, scored again by load_trained: bit-identical {same}")

    members = [
        {**config, "seed": s, "model_params": {**base["model_params"], "latent_dim": d}}
        for s, d in zip(range(4), (1, 4, 16, 64))
    ]
    plain = list(fit_many(members, dataset=data))
    fast = list(fit_many([{**m, "bf16": True, "channels_last": True} for m in members], data))
    cl = list(fit_many([{**m, "channels_last": True} for m in members], dataset=data))
    final = lambda pairs: [r for _, r in pairs if r["is_final"]]  # noqa: E731
    auc = lambda a, b: max(abs(x["auc"] - y["auc"]) for x, y in zip(final(a), final(b)))  # noqa: E731
    statuses = sorted({r["status"] for r in final(fast)})
    print(
        f"fused K=4, channels_last + bf16: statuses {statuses}; largest AUC difference vs "
        f"fp32 channels-first {auc(plain, fast):.2e}; fp32 channels_last vs channels-first "
        f"{auc(plain, cl):.2e}",
        flush=True,
    )
    print(f"reproducibility checks took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
