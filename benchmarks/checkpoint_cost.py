"""What checkpointing costs a trial, at the shipped spaces' evaluation frequency.

A study reports a Ray Tune checkpoint at every evaluation (every ``eval_every``
epochs, see study.trainable.train_trial). One checkpoint is:

1. capture: ``ae4ad.train.training_state`` copies the weights, the optimiser state and
   the RNG states to the CPU;
2. write: ``ae4ad.trained.save_checkpoint`` (model.pt + training_state.pt) and
   records.json into a temporary folder;
3. persist: Tune copies the folder into the run's storage (pyarrow.fs, as Tune does)
   and deletes the checkpoint that falls out of "last and best".

For each shipped space and model (at its largest configuration: the biggest
checkpoint) this prints the checkpoint's size, the time of each step (median of
``--repeats``), the training time of one evaluation interval (``eval_every`` epochs of
the space's training set, measured over ``--epochs`` epochs, plus one evaluation) and
the share of trial time spent checkpointing: target <= 3 %. Phantom spaces are timed
on their own data; MedIAnomaly spaces (no data needed) on random images of their size
with ``--real-n-train`` training images (default 1000, about BrainTumor's, the
smallest of the four: the worst case).

Usage:
    python benchmarks/checkpoint_cost.py [--spaces latent optuna paper methods smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import torch
import yaml

import ae4ad
from ae4ad import AnomalyDataset
from ae4ad.train import TrainConfig, evaluate_images, seed_everything, training_state
from ae4ad.trained import save_checkpoint

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def largest(spec):
    """The largest value a parameter spec of a space file can take."""
    if isinstance(spec, dict):
        if "choice" in spec:
            return max(spec["choice"])
        for kind in ("int", "float"):
            if kind in spec:
                return spec[kind][1]
    if isinstance(spec, list):
        return max(spec)
    return spec


def synthetic(n_train: int, size: int) -> AnomalyDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_train, 1, size, size, generator=g) * 2 - 1
    test = torch.rand(256, 1, size, size, generator=g) * 2 - 1
    return AnomalyDataset("random", "uniform noise", x, test, torch.tensor([0, 1] * 128))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_checkpoint(model_name, params, data, training, repeats) -> dict:
    """Sizes and median times of one checkpoint of a model after one training step."""
    cfg = TrainConfig.from_dict(
        {"model": model_name, "model_params": params, "epochs": 1, "lr": training["lr"]}
    )
    generator = seed_everything(0)
    full = {"image_size": data.image_size, "in_channels": data.in_channels, **params}
    model = ae4ad.build_model(model_name, **full)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss, _ = model.training_loss(data.train[:8])
    loss.backward()
    optimizer.step()  # the optimiser state exists, as at any evaluation
    spec = {"name": model_name, "params": full}
    data_spec = {"name": data.name, "image_size": data.image_size, "in_channels": 1,
                 "value_range": [-1.0, 1.0], "source": "x", "params": {}}  # fmt: skip
    records = [{"epoch": e, "auc": 0.5, "train_loss": 0.1} for e in range(1, 25)]
    fs = pafs.LocalFileSystem()
    times = {"capture": [], "write": [], "persist": []}
    size = 0
    with tempfile.TemporaryDirectory() as storage:
        for i in range(repeats):
            t0 = time.perf_counter()
            timers = {"train_time_s": 1.0, "images_seen": 1, "elapsed_s": 1.0}
            state = training_state(1, cfg, model, optimizer, generator, timers, spec, data_spec)
            t1 = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(folder, state, extra={"trial_id": "x"})
                (Path(folder) / "records.json").write_text(json.dumps(records))
                t2 = time.perf_counter()
                target = f"{storage}/checkpoint_{i:06d}"
                fs.create_dir(target)
                pafs.copy_files(folder, target, source_filesystem=fs, destination_filesystem=fs)
                if i >= 2:  # num_to_keep: the oldest one goes
                    fs.delete_dir(f"{storage}/checkpoint_{i - 2:06d}")
                t3 = time.perf_counter()
                size = folder_bytes(Path(folder))
            times["capture"].append(t1 - t0)
            times["write"].append(t2 - t1)
            times["persist"].append(t3 - t2)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["total"] = sum(out.values())
    out["bytes"] = size
    out["model_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return out


def time_training(model_name, params, data, training, epochs, threads) -> tuple[float, float]:
    """Seconds per training epoch and per evaluation of ae4ad.fit on ``data``."""
    config = {
        "model": model_name, "model_params": params, "epochs": epochs, "eval_every": epochs,
        "batch_size": int(training.get("batch_size", 64)), "lr": training["lr"], "seed": 0,
        "threads": threads,
    }  # fmt: skip
    record = list(ae4ad.fit(config, dataset=data))[-1]
    per_epoch = record["train_time_s"] / epochs
    model = ae4ad.build_model(model_name, image_size=data.image_size, **params)
    t0 = time.perf_counter()
    for images in (data.train, data.test) + ((data.val,) if data.val is not None else ()):
        evaluate_images(model, images, "l2", 256, torch.device("cpu"), keep_maps=True)
    return per_epoch, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=["latent", "optuna", "paper", "methods",
                                                        "smoke"])  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per model")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoints timed per model")
    parser.add_argument("--real-n-train", type=int, default=1000)
    args = parser.parse_args()

    header = (
        f"{'space/model':<22} {'params':>9} {'ckpt size':>10} {'capture':>8} {'write':>8} "
        f"{'persist':>8} {'per ckpt':>9} {'eval_every':>10} {'interval':>9} {'share':>7}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in args.spaces:
        raw = yaml.safe_load((SPACES / f"{name}.yaml").read_text())
        training = {k: largest(v) for k, v in (raw.get("training") or {}).items()}
        training.setdefault("lr", 1e-3)
        epochs = int(training.get("epochs", 50))
        eval_every = int(training.get("eval_every", max(1, epochs // 5)))
        threads = max(1, int((raw.get("resources") or {}).get("cpus_per_trial", 1)))
        torch.set_num_threads(threads)
        dataset = raw["datasets"][0]
        if dataset["name"] == "phantom":
            data = ae4ad.load_dataset("phantom", **dataset.get("params", {}))
        else:
            data = synthetic(args.real_n_train, int(dataset["params"].get("image_size", 64)))
        for model in raw["models"]:
            params = {k: largest(v) for k, v in (model.get("params") or {}).items()}
            ckpt = time_checkpoint(model["name"], params, data, training, args.repeats)
            per_epoch, eval_s = time_training(
                model["name"], params, data, training, min(args.epochs, epochs), threads
            )
            interval = eval_every * per_epoch + eval_s
            share = ckpt["total"] / (interval + ckpt["total"])
            worst = max(worst, share) if name != "smoke" else worst
            n_params = sum(
                t.numel()
                for t in ae4ad.build_model(
                    model["name"], image_size=data.image_size, **params
                ).parameters()
            )
            label = f"{name}/{model.get('label', model['name'])}"
            print(
                f"{label:<22} {n_params:>9,} {ckpt['bytes'] / 1e6:>7.2f} MB "
                f"{ckpt['capture'] * 1e3:>6.1f}ms {ckpt['write'] * 1e3:>6.1f}ms "
                f"{ckpt['persist'] * 1e3:>6.1f}ms {ckpt['total'] * 1e3:>7.1f}ms "
                f"{eval_every:>10} {interval:>8.1f}s {share * 100:>6.2f}%",
                flush=True,
            )
    print(
        f"\nworst share over the spaces that train (smoke, a 2-epoch pipeline check, aside): "
        f"{worst * 100:.2f} % (target <= 3 %)"
    )


if __name__ == "__main__":
    main()
