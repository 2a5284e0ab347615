"""Training images/s of the paper AE (64x64, batch 64, synthetic tensors) on one GPU,
with N training processes sharing it, and each process's peak GPU memory. Used by
benchmarks/gpu_check.sh.

Timing window: every process warms up (and compiles, with ``--compile``) first, then
waits at a barrier; all start their timed window together, when the last one is ready,
and each times the same number of seconds. So no process is timed while another is
still warming up (and leaves it the GPU to itself).

``--device cpu`` with small ``--image-size``/``--batch`` checks the script end to end on
a machine without a GPU (the figures then mean nothing).

Usage: python benchmarks/gpu_throughput.py --procs 4 [--bf16] [--compile] [--seconds 15]
       python benchmarks/gpu_throughput.py --device cpu --procs 2 --seconds 1 --image-size 16
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ae4ad import build_model

WARMUP_STEPS = 30
N_IMAGES = 2048


def worker(rank: int, args: argparse.Namespace, results: mp.Queue, ready: mp.Barrier) -> None:
    torch.manual_seed(rank)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    size, batch = args.image_size, args.batch
    model = build_model("ae", latent_dim=16, image_size=size).to(device)
    model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = (torch.rand(N_IMAGES, 1, size, size, device=device) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )
    n_batches = N_IMAGES // batch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i: int) -> None:
        x = data[(i % n_batches) * batch : (i % n_batches + 1) * batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.mse_loss(step_model(x)["x_hat"].float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(WARMUP_STEPS):  # warm-up (and compilation)
        step(i)
    sync()
    ready.wait()  # the timed window starts when every process is warm
    n, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        step(i)
        i += 1
        n += batch
        if i % 8 == 0:
            sync()  # keep the queue short, so the window ends near `seconds`
    sync()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    results.put((n / elapsed, peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per process")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--header", action="store_true", help="print the column names first")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but PyTorch sees no CUDA GPU (use --device cpu)")
    if args.header:
        print(
            f"{'procs':>5} {'bf16':>5} {'compile':>7} {'total img/s':>12} {'per-proc img/s':>14} "
            f"{'peak MiB/proc':>13}"
        )
    ctx = mp.get_context("spawn")
    results, ready = ctx.Queue(), ctx.Barrier(args.procs)
    procs = [ctx.Process(target=worker, args=(r, args, results, ready)) for r in range(args.procs)]
    for p in procs:
        p.start()
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    total = sum(rate for rate, _ in out)
    peak = max(mib for _, mib in out)
    print(
        f"{args.procs:>5} {str(args.bf16):>5} {str(args.compile):>7} "
        f"{total:>12.0f} {total / args.procs:>14.0f} {peak:>13.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
