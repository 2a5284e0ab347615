"""Training and evaluation throughput of ae4ad on this machine.

1. Training images/s of ``ae4ad.fit`` (the library's loop) vs a bare PyTorch loop
   over the same model, batch size, optimiser and in-memory data (target ratio >= 0.95).
2. Batched evaluation (``evaluate_images``, batch 256, inference mode) vs batch size 1
   as the reference code evaluates (one image at a time under no_grad).

Usage:
    python benchmarks/train_throughput.py [--image-size 64] [--threads 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ae4ad import AnomalyDataset, build_model, fit
from ae4ad.train import evaluate_images


def synthetic(n: int, size: int, seed: int = 0) -> AnomalyDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    labels = torch.tensor([0, 1] * (n // 4))
    return AnomalyDataset("synthetic", "uniform noise", x, x[: n // 2], labels)


def bare_loop(data: AnomalyDataset, params: dict, epochs: int, batch: int) -> float:
    """Images/s of the plainest PyTorch loop: same model, Adam, randperm batches."""
    torch.manual_seed(0)
    model = build_model("ae", image_size=data.image_size, **params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = data.train
    n_batches = len(x_all) // batch
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=g)
        for b in range(n_batches):
            x = x_all[order[b * batch : (b + 1) * batch]]
            loss = F.mse_loss(model(x)["x_hat"], x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epochs * n_batches * batch / (time.perf_counter() - t0)


def library_loop(data: AnomalyDataset, params: dict, epochs: int, batch: int) -> float:
    config = {
        "model": "ae",
        "model_params": params,
        "epochs": epochs,
        "eval_every": epochs,
        "batch_size": batch,
        "seed": 0,
    }
    final = list(fit(config, dataset=data))[-1]
    return final["images_per_s"]


def eval_one_by_one(model: torch.nn.Module, images: torch.Tensor) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(len(images)):
            x = images[i : i + 1]
            ((x - model(x)["x_hat"]) ** 2).mean()
    return len(images) / (time.perf_counter() - t0)


def eval_batched(model: torch.nn.Module, images: torch.Tensor, batch: int) -> float:
    t0 = time.perf_counter()
    evaluate_images(model, images, "l2", batch, torch.device("cpu"))
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 64, Adam 1e-3")
    print(f"{'size':>4} {'bare img/s':>11} {'ae4ad img/s':>12} {'ratio':>6} "
          f"{'eval bs1 img/s':>15} {'eval bs256 img/s':>17} {'speed-up':>9}")  # fmt: skip
    for size in args.image_size:
        data = synthetic(args.n_train, size)
        params = {"latent_dim": 16}
        bare, lib = [], []
        for _ in range(args.repeats):  # interleave so drift hits both alike
            bare.append(bare_loop(data, params, args.epochs, 64))
            lib.append(library_loop(data, params, args.epochs, 64))
        model = build_model("ae", image_size=size, latent_dim=16)
        images = data.test[:512]
        one = statistics.median(eval_one_by_one(model, images) for _ in range(args.repeats))
        batched = statistics.median(eval_batched(model, images, 256) for _ in range(args.repeats))
        b, l = statistics.median(bare), statistics.median(lib)
        print(f"{size:>4} {b:>11.0f} {l:>12.0f} {l / b:>6.3f} {one:>15.0f} {batched:>17.0f} "
              f"{batched / one:>8.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
