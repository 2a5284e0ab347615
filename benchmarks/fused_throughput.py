"""Training images/s of K fused members (``ae4ad.fused.FusedAE``) vs K separate models.

Both sides do the same work: K models of one shape (latent_dim cycling through
latent.yaml's 1, 2, 4, ..., 128), one Adam step each on its own batch of synthetic
images, as ``fit`` / ``fit_many`` step. Separate: the K models step one after another;
fused: one step of the fused module. Prints images/s of each and the ratio.

Models: the latent.yaml AE (32 px, base_width 8, hidden_dim 256, num_blocks 3, batch
32) and the paper's AE (64 px, base_width 16, hidden_dim 1024, num_blocks 4, batch 64).

With ``--end-to-end-epochs N`` it also times latent.yaml's 16 trials (N epochs each)
through the library, ``fit`` one after another vs ``fit_many``, evaluation included.

With ``--study SPACE`` it runs ``python run_study.py --space SPACE`` twice from the
command line, fused (the space's ``resources.fuse``, default auto) and with
``--override resources.fuse=off``, in a fresh temporary storage folder each, and prints
both wall times, their ratio, each run's verdict lines and the largest AUC difference
between the two runs' trials (``--skip-kernels`` leaves out the per-step figures).

Usage:
    python benchmarks/fused_throughput.py [--ks 4 8 16] [--threads 1 2] [--seconds 3] [--repeats 3]
        [--end-to-end-epochs 5] [--study latent.yaml [--fuse 8]] [--skip-kernels]
    python benchmarks/fused_throughput.py --device cuda --ks 1 8 32 --models paper  # GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def separate(params: dict, batch: int, k: int, device: torch.device) -> Callable[[], None]:
    """One training step of K separate models, each on its own batch."""
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

    return step


def fused(params: dict, batch: int, k: int, device: torch.device) -> Callable[[], None]:
    """One training step of the same K models fused into one module."""
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

    return step


def images_per_s(step: Callable[[], None], images: int, seconds: float, device) -> float:
    steps, elapsed = _timed(step, seconds, device)
    return steps * images / elapsed


def end_to_end(epochs: int, threads: int) -> None:
    """latent.yaml's 16 trials (latent_dim 1..128 x seeds 0, 1) at ``epochs`` epochs through
    the library: ``fit`` one after another vs ``fit_many`` (one bundle of 16; two bundles
    of 8 grouped by latent_dim, which masks less). Wall time including evaluation."""
    import yaml

    import ae4ad
    from ae4ad.fused import fit_many

    with open("search_spaces/latent.yaml", encoding="utf-8") as f:
        space = yaml.safe_load(f)
    data = ae4ad.load_dataset("phantom", **space["datasets"][0]["params"])
    params = dict(space["models"][0]["params"])
    dims = params.pop("latent_dim")
    training = {k: v for k, v in space["training"].items() if k != "eval_every"}
    base = {**training, "epochs": epochs, "eval_every": epochs, "threads": threads}
    configs = [
        {**base, "seed": seed, "model_params": {**params, "latent_dim": d}}
        for d in dims
        for seed in space["seeds"]
    ]
    t0 = time.perf_counter()
    for config in configs:
        for _ in ae4ad.fit(config, dataset=data):
            pass
    sequential = time.perf_counter() - t0
    runs = {"one bundle of 16": [configs], "two bundles of 8": [configs[:8], configs[8:]]}
    for label, bundles in runs.items():
        t0 = time.perf_counter()
        for bundle in bundles:
            for _ in fit_many(bundle, dataset=data):
                pass
        fused = time.perf_counter() - t0
        print(
            f"latent.yaml 16 trials x {epochs} epochs, {threads} thread(s): fit one after "
            f"another {sequential:.1f} s, fit_many {label} {fused:.1f} s, "
            f"ratio {sequential / fused:.2f}",
            flush=True,
        )


def study(space: str, fuse: str) -> None:
    """Wall time of ``run_study.py --space SPACE`` fused vs unfused, and how the results
    agree."""
    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    runs, walls, text = {}, {}, {}
    for label, setting in (("fused", fuse), ("off", "off")):
        storage = tempfile.mkdtemp(prefix=f"ae4ad-fuse-{label}-")
        cmd = [sys.executable, str(root / "run_study.py"), "--space", space, "--override",
               f"storage_path={storage}", "--override", f"resources.fuse={setting}"]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=os.environ)
        walls[label] = time.perf_counter() - t0
        text[label] = done.stdout + done.stderr
        if done.returncode != 0:
            print(text[label][-3000:])
            raise SystemExit(f"{label} run failed with exit code {done.returncode}")
        runs[label] = pd.read_parquet(next(Path(storage).rglob("trials.parquet")))
    for label in walls:
        lines = [ln for ln in text[label].splitlines() if ln.startswith(("fused:", "verdict"))]
        print(f"{space} {label}: {walls[label]:.1f} s")
        for line in lines:
            print(f"    {line}")
    a = runs["fused"].set_index("trial_id").sort_index()
    b = runs["off"].set_index("trial_id").sort_index()
    same = list(a.index) == list(b.index)
    diff = (a["auc"] - b.loc[a.index, "auc"]).abs().max() if same else float("nan")
    best = [t.groupby("latent_dim")["auc"].mean().idxmax() for t in (a, b)]
    print(
        f"{space}: unfused / fused wall time = {walls['off'] / walls['fused']:.2f}x; same trial "
        f"ids: {same}; largest AUC difference {diff:.2e}; best latent_dim fused {best[0]}, "
        f"unfused {best[1]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per figure")
    parser.add_argument(
        "--models", nargs="+", choices=["latent", "paper"], default=["latent", "paper"]
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--no-separate", action="store_true", help="fused figures only (separate: nan)"
    )
    parser.add_argument(
        "--end-to-end-epochs",
        type=int,
        default=0,
        help="also time latent.yaml's 16 trials at this many epochs, fit vs fit_many (0: skip)",
    )
    parser.add_argument("--study", help="also run this space fused and unfused, end to end")
    parser.add_argument("--fuse", default="auto", help="resources.fuse of the fused run")
    parser.add_argument("--skip-kernels", action="store_true", help="no per-step figures")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.skip_kernels:
        args.models = []
    if args.models:
        print(
            f"images/s, best of {args.repeats} interleaved {args.seconds:g} s runs; "
            "ratio = fused / separate (of the best runs, and of the medians)"
        )
        header = ("model", "threads", "K", "separate", "fused", "ratio", "median")
        print("{:24s} {:>7s} {:>3s} {:>10s} {:>10s} {:>6s} {:>6s}".format(*header))
    for key in args.models:
        name = next(n for n in MODELS if n.startswith(key))
        params, batch = MODELS[name]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for k in args.ks:
                torch.manual_seed(0)
                sep = separate(params, batch, k, device) if not args.no_separate else None
                fus = fused(params, batch, k, device)
                a_runs, b_runs = [], []
                for _ in range(args.repeats):  # interleaved: load changes hit both sides
                    if sep is not None:
                        a_runs.append(images_per_s(sep, k * batch, args.seconds, device))
                    b_runs.append(images_per_s(fus, k * batch, args.seconds, device))
                a = max(a_runs) if a_runs else float("nan")
                b = max(b_runs)
                med = statistics.median(b_runs) / statistics.median(a_runs) if a_runs else b / a
                print(
                    f"{name:24s} {threads:7d} {k:3d} {a:10.0f} {b:10.0f} {b / a:6.2f} {med:6.2f}",
                    flush=True,
                )
    if args.end_to_end_epochs:
        for threads in args.threads:
            end_to_end(args.end_to_end_epochs, threads)
    if args.study:
        study(args.study, args.fuse)


if __name__ == "__main__":
    main()
