"""Training images/s of K fused members (``ae4ad.fused.FusedAE``) vs K separate models.

Both sides do the same work: K models of one shape (latent_dim cycling through
latent.yaml's 1, 2, 4, ..., 128), one Adam step each on its own batch of synthetic
images, as ``fit`` / ``fit_many`` step. Separate: the K models step one after another;
fused: one step of the fused module. Prints images/s of each and the ratio.

Models: the latent.yaml AE (32 px, base_width 8, hidden_dim 256, num_blocks 3, batch
32) and the paper's AE (64 px, base_width 16, hidden_dim 1024, num_blocks 4, batch 64).

Usage:
    python benchmarks/fused_throughput.py [--ks 4 8 16] [--threads 1 2] [--seconds 4]
    python benchmarks/fused_throughput.py --device cuda --ks 1 8 32 --models paper  # GPU
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ae4ad import build_model
from ae4ad.fused import FusedAE

MODELS = {
    "latent.yaml AE (32 px)": (
        {"image_size": 32, "base_width": 8, "hidden_dim": 256, "num_blocks": 3},
        32,
    ),
    "paper AE (64 px)": (
        {"image_size": 64, "base_width": 16, "hidden_dim": 1024, "num_blocks": 4},
        64,
    ),
}
LATENT_DIMS = (1, 2, 4, 8, 16, 32, 64, 128)


def _timed(step, seconds: float, device: torch.device, warmup: int = 3) -> tuple[int, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    sync()
    return steps, time.perf_counter() - t0


def separate(params: dict, batch: int, k: int, seconds: float, device: torch.device) -> float:
    """Images/s of K separate models, each stepping on its own batch."""
    models = [
        build_model("ae", latent_dim=LATENT_DIMS[i % 8], **params).to(device) for i in range(k)
    ]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    size = params["image_size"]
    xs = torch.rand(k, batch, 1, size, size, device=device) * 2 - 1

    def step() -> None:
        for m, opt, x in zip(models, opts, xs):
            loss = F.mse_loss(m(x)["x_hat"], x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    steps, elapsed = _timed(step, seconds, device)
    return steps * k * batch / elapsed


def fused(params: dict, batch: int, k: int, seconds: float, device: torch.device) -> float:
    """Images/s of the same K models fused into one module."""
    models = [build_model("ae", latent_dim=LATENT_DIMS[i % 8], **params) for i in range(k)]
    model = FusedAE(models).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    size = params["image_size"]
    x = torch.rand(batch, k, 1, size, size, device=device) * 2 - 1

    def step() -> None:
        loss = model.member_losses(x, models[0]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps, elapsed = _timed(step, seconds, device)
    return steps * k * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per figure")
    parser.add_argument(
        "--models", nargs="+", choices=["latent", "paper"], default=["latent", "paper"]
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-separate", action="store_true", help="fused figures only (separate: nan)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{'model':24s} {'threads':>7s} {'K':>3s} {'separate':>10s} {'fused':>10s} {'ratio':>6s}")
    for key in args.models:
        name = next(n for n in MODELS if n.startswith(key))
        params, batch = MODELS[name]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for k in args.ks:
                torch.manual_seed(0)
                a = float("nan")
                if not args.no_separate:
                    a = separate(params, batch, k, args.seconds, device)
                b = fused(params, batch, k, args.seconds, device)
                print(
                    f"{name:24s} {threads:7d} {k:3d} {a:10.0f} {b:10.0f} {b / a:6.2f}", flush=True
                )


if __name__ == "__main__":
    main()
