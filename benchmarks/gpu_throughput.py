"""Training images/s of the paper AE (64x64, batch 64, synthetic tensors) on one GPU,
with N training processes sharing it. Used by benchmarks/gpu_check.sh.

Usage: python benchmarks/gpu_throughput.py --procs 4 [--bf16] [--compile] [--seconds 15]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ae4ad import build_model


def worker(rank: int, args: argparse.Namespace, results: mp.Queue, start: mp.Event) -> None:
    torch.manual_seed(rank)
    device = torch.device("cuda")
    model = build_model("ae", latent_dim=16, image_size=64).to(device)
    model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = (torch.rand(2048, 1, 64, 64, device=device) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )

    def step(x: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.mse_loss(step_model(x)["x_hat"].float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(30):  # warm-up (and compilation)
        step(data[(i % 32) * 64 : (i % 32 + 1) * 64])
    torch.cuda.synchronize()
    start.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for i in range(32):
            step(data[i * 64 : (i + 1) * 64])
        n += 32 * 64
    torch.cuda.synchronize()
    results.put(n / (time.perf_counter() - t0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results, start = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(r, args, results, start)) for r in range(args.procs)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    rates = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    total = sum(rates)
    print(
        f"{args.procs:>5} {str(args.bf16):>5} {str(args.compile):>7} "
        f"{total:>12.0f} {total / args.procs:>14.0f}"
    )


if __name__ == "__main__":
    main()
