"""Synthetic run folders for the report's tests, benchmarks and previews.

Trial configs are shaped like the space's trial configs, the records like the records of
``ae4ad.fit`` (``tests/study/test_report.py`` checks both shapes against the real ones),
and the tables are written by ``study.results.RunTables`` itself: a change of the results
schema shows up here, not silently in the report.

Preview a report from a checkout:
``python -m tests.helpers.synthetic /tmp/demo && python -m study.report /tmp/demo``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import yaml

from study.results import (
    EXAMPLES_FILE,
    HISTORY_FILE,
    SCORES_FILE,
    SPACE_FILE,
    RunTables,
    TrialTiming,
    atomic_write_text,
    update_meta,
)

__all__ = ["make_synthetic_run", "synthetic_config", "synthetic_records"]


def make_synthetic_run(
    run_dir: Path | str,
    *,
    datasets: Sequence[str] = ("phantom-k6", "RSNA"),
    models: Sequence[str] = ("ae",),
    latent_dims: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
    seeds: Iterable[int] = (0, 1, 2),
    status: str = "finished",
    epochs: int = 50,
    eval_every: int = 10,
    n_test: int = 60,
    image_size: int = 32,
    masks: bool = True,
    history: bool = True,
    scores: bool = True,
    examples: bool = True,
    optuna_db: bool = False,
    extra_statuses: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic run folder with the harness's tables: AUC is an inverted U in
    log2(latent_dim) peaking at a data-set-specific d*, latent entropy grows with
    latent_dim, reconstruction errors fall with it. The last data set has masks.

    ``extra_statuses`` adds trials with other statuses (``early-stopped`` after their
    first evaluation, ``errored``, ``diverged``), e.g. ``{"early-stopped": 3}``;
    ``history``, ``scores``, ``examples`` False leave those tables out. Returns ``run_dir``.
    """
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    dims = sorted(int(d) for d in latent_dims)
    tables = RunTables(run_dir)
    shape = dict(epochs=epochs, eval_every=eval_every, image_size=image_size, n_test=n_test)
    finished: list[tuple[dict, list[dict]]] = []
    for i, ds in enumerate(datasets):
        peak = _peak_for(dims, i)
        with_masks = masks and i == len(datasets) - 1
        for k, model in enumerate(models):
            for d in dims:
                for s in seeds:
                    config = synthetic_config(ds, model, d, s, epochs, eval_every, image_size)
                    records, wall_s = synthetic_records(
                        rng, config, peak, k, with_masks, examples and s == seeds[0], scores,
                        **shape,
                    )  # fmt: skip
                    tid = f"{i}{k}{d:04d}{s:03d}"
                    tables.add_trial(config, records, trial_id=tid, study=run_dir.name,
                                     timing=_timing(wall_s))  # fmt: skip
                    finished.append((config, records))
    for st, count in (extra_statuses or {}).items():
        for j in range(count):
            config, records = finished[j % len(finished)]
            _add_stopped(tables, config, records, st, f"x{st[:2]}{j:04d}", run_dir.name)
    tables.flush()
    for wanted, name in ((history, HISTORY_FILE), (scores, SCORES_FILE), (examples, EXAMPLES_FILE)):
        if not wanted:
            (run_dir / name).unlink()
    _write_space(run_dir, datasets, models, dims, seeds, epochs, eval_every, image_size, optuna_db)
    update_meta(
        run_dir,
        status=status,
        created_at="2024-01-01T00:00:00+00:00",
        started_at="2024-01-01T00:00:00+00:00",
        finished_at=None if status != "finished" else "2024-01-01T02:00:00+00:00",
        hostname="node-1",
        python="3.11",
        git=dict(commit="0" * 40, dirty=False),
        packages=dict(torch="2.13", ray="2.60", optuna="5.0", plotly="7.1", pandas="3.1"),
        sessions=[dict(started_at="2024-01-01T00:00:00+00:00", trials=len(tables.rows()))],
    )
    if optuna_db:
        _synthetic_optuna(run_dir / "optuna.db", tables.trials_frame())
    return run_dir


def synthetic_config(
    dataset: str, model: str, latent_dim: int, seed: int, epochs: int, eval_every: int,
    image_size: int,
) -> dict[str, Any]:  # fmt: skip
    """A trial config shaped like the space's (``study.space.grid_trials``)."""
    return {
        "dataset_label": dataset,
        "model_label": model,
        "stratum": f"{dataset}/{model}",
        "dataset": "phantom",
        "dataset_params": {"image_size": image_size},
        "model": model,
        "model_params": {"latent_dim": latent_dim, "hidden_dim": 1024, "base_width": 32},
        "epochs": epochs,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "eval_every": eval_every,
        "score": "l2",
        "device": "auto",
        "seed": seed,
        "threads": 1,
    }


def synthetic_records(
    rng: np.random.Generator,
    config: dict[str, Any],
    peak: int,
    k: int,
    with_masks: bool,
    with_examples: bool,
    with_scores: bool = True,
    *,
    epochs: int,
    eval_every: int,
    image_size: int,
    n_test: int,
) -> tuple[list[dict[str, Any]], float]:
    """The records ``ae4ad.fit`` would yield for one trial (one per evaluation, the last
    with per-image scores, image intrinsic dimensions and examples), and its wall time."""
    d = config["model_params"]["latent_dim"]
    gap = math.log2(d) - math.log2(peak)
    auc = 0.92 - 0.035 * k - 0.03 * gap**2 * (0.6 if gap > 0 else 1.4)
    auc = float(np.clip(auc + 0.008 * rng.standard_normal(), 0.3, 0.999))
    ap = float(np.clip(auc - 0.04 + 0.01 * rng.standard_normal(), 0.2, 0.999))
    ent = 1.4 * math.log(d) + 3 * (1 - math.exp(-d / 16)) + 0.1 * rng.normal()
    err_n = 0.01 + 0.2 / (1 + (d / peak) ** 1.6) + 0.002 * rng.random()
    err_a = err_n * (1.2 + 1.6 / (1 + (d / (4 * peak)) ** 1.2))
    intrinsic = peak * 0.7 + 0.3
    pixel_ap = float(0.3 + 0.1 * auc * rng.random()) if with_masks else None
    best_dice = float(0.35 + 0.1 * auc * rng.random()) if with_masks else None
    final = {
        "auc": auc,
        "ap": ap,
        "mean_score_normal": err_n,
        "mean_score_abnormal": err_a,
        "recon_error_train_normal": err_n * 0.9,
        "recon_error_test_normal": err_n,
        "recon_error_test_abnormal": err_a,
        "recon_error_val_normal": err_n * 1.02,
        "pixel_ap": pixel_ap,
        "pixel_auc": pixel_ap + 0.5 if with_masks else None,
        "best_dice": best_dice,
        "dice_threshold": 0.05 if with_masks else None,
        "dice_threshold_source": "test-optimal" if with_masks else None,
        "latent_entropy_gaussian": ent,
        "latent_entropy_knn": ent * 0.9 + 0.2 * rng.normal(),
        "latent_effective_rank": min(d, peak * 1.5) * (0.8 + 0.1 * rng.random()),
        "latent_participation_ratio": min(d, peak) * (0.6 + 0.1 * rng.random()),
        "latent_intrinsic_dim": min(d, intrinsic) * (0.9 + 0.1 * rng.random()),
        "latent_statistics_reason": None,
        "latent_size": d,
    }
    twonn = intrinsic + 0.2 * rng.normal()
    elapsed = float(30 + d * 0.2 + 5 * rng.random())
    wall_s = float(35 + d * 0.2 + 5 * rng.random())
    base = {"device": "cuda:0" if config["seed"] % 2 == 0 else "cpu", "n_parameters": 2_351_184}
    records = [
        {**base, **record, **final, **_progress(e, epochs, auc, ap, err_n, elapsed)}
        for e, record in _evaluations(epochs, eval_every)
    ]
    last = records[-1]
    if with_scores:
        last["scores"], last["labels"] = _scores(rng, auc, n_test)
    last["image_intrinsic_dim_twonn"] = twonn
    last["image_intrinsic_dim_mle"] = intrinsic * 1.1
    last["known_dim"] = None  # the data set does not know its dimension (as the default phantom)
    if with_examples:
        yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
        last["examples"] = _synthetic_examples(rng, xx, yy, d, peak, with_masks)
    return records, wall_s


def _evaluations(epochs: int, eval_every: int) -> list[tuple[int, dict[str, Any]]]:
    """The epochs evaluated (every ``eval_every`` and the last) with their status keys."""
    return [
        (
            e,
            {
                "epoch": e,
                "status": "completed" if e == epochs else "running",
                "is_final": e == epochs,
            },
        )
        for e in sorted({*range(eval_every, epochs + 1, eval_every), epochs})
    ]


def _progress(e: int, epochs: int, auc: float, ap: float, err_n: float, elapsed: float) -> dict:
    """What changes over training: loss, AUC and AP approach their final values."""
    frac = e / epochs
    rise = 1 - math.exp(-4 * frac)
    return {
        "train_loss": err_n * (1 + 2 * math.exp(-4 * frac)),
        "train_time_s": 0.9 * elapsed * frac,
        "images_per_s": 1000.0,
        "auc": 0.5 + (auc - 0.5) * rise,
        "ap": 0.5 + (ap - 0.5) * rise,
        "elapsed_s": elapsed * frac,
    }


def _peak_for(dims: Sequence[int], i: int) -> int:
    return int(dims[min(len(dims) - 1, 2 + (i % max(1, len(dims) - 3)))])


def _scores(rng: np.random.Generator, auc: float, n_test: int) -> tuple[list, list]:
    """Equal-variance normal scores of n_test / 2 normal and abnormal images:
    AUC = Phi(sep / sqrt(2))."""
    n_half = n_test // 2
    sep = math.sqrt(2) * NormalDist().inv_cdf(min(auc, 0.999))
    sc = np.concatenate([rng.normal(0, 1, n_half), rng.normal(sep, 1, n_half)])
    return [float(v) for v in sc], [int(v) for v in np.repeat([0, 1], n_half)]


def _timing(wall_s: float) -> TrialTiming:
    return TrialTiming(
        started_at="2024-01-01T00:00:00+00:00",
        finished_at="2024-01-01T00:01:00+00:00",
        wall_s=wall_s,
        hostname="node-1",
        node_ip="10.0.0.1",
        session=1,
    )


def _add_stopped(
    tables: RunTables, config: dict, records: list[dict], status: str, tid: str, study: str
) -> None:
    """A trial stopped after its first evaluation: early-stopped, errored or diverged."""
    first = {k: v for k, v in records[0].items() if k not in ("scores", "labels", "examples")}
    error = None
    if status == "errored":
        error = "RuntimeError: CUDA out of memory"
    elif status == "diverged":
        first.update(status="diverged", is_final=True, auc=math.nan, ap=math.nan,
                     error=f"training loss became nan at epoch {first['epoch']}")  # fmt: skip
    elif status != "early-stopped":
        raise ValueError(f"extra_statuses: unknown status {status!r}")
    tables.add_trial(config, [first], trial_id=tid, study=study, error=error, timing=_timing(5.0))


def _write_space(run_dir, datasets, models, dims, seeds, epochs, eval_every, image_size, optuna):
    space = dict(
        name=run_dir.name,
        description="Synthetic run: an inverted U of AUC over latent_dim.",
        storage_path=str(run_dir.parent),
        datasets=[
            dict(name="phantom", label=ds, params=dict(image_size=image_size)) for ds in datasets
        ],
        models=[
            dict(name=m, label=m, params=dict(latent_dim=dims, hidden_dim=1024)) for m in models
        ],
        training=dict(epochs=epochs, lr=1e-3, eval_every=eval_every),
        seeds=seeds,
        search=dict(type="optuna" if optuna else "grid"),
    )
    atomic_write_text(run_dir / SPACE_FILE, yaml.safe_dump(space, sort_keys=False))


def _synthetic_examples(rng, xx, yy, d, peak, with_masks, n=3) -> dict:
    """What ``ae4ad.fit`` puts in a final record's ``examples``: n normal and n abnormal
    test images with reconstructions, anomaly maps and masks."""
    inputs, recons, maps, masks, labels = [], [], [], [], []
    blur = min(1.0, d / (2 * peak))
    for j in range(2 * n):
        abnormal = j >= n
        cx, cy = 0.3 + 0.4 * rng.random(), 0.3 + 0.4 * rng.random()
        img = np.sin(6 * xx + j) * np.cos(5 * yy) * 0.6
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.012).astype(np.float32) if abnormal else 0 * xx
        x = np.clip(img + 0.9 * mask, -1, 1)
        rec = np.clip(img * (0.6 + 0.4 * blur) + 0.9 * mask * blur**2, -1, 1)
        inputs.append(x[None])
        recons.append(rec[None])
        maps.append(((x - rec) ** 2)[None])
        masks.append(mask[None])
        labels.append(int(abnormal))
    r = lambda a: np.round(np.asarray(a, dtype=np.float32), 3).tolist()  # noqa: E731
    return dict(
        index=list(range(2 * n)),
        labels=labels,
        inputs=r(inputs),
        reconstructions=r(recons),
        anomaly_maps=r(maps),
        masks=r(masks) if with_masks else None,
    )


def _synthetic_optuna(path: Path, trials: pd.DataFrame) -> None:
    """optuna.db with one study per stratum holding its completed trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path.resolve()}"
    done = trials[trials["status"] == "completed"]
    for stratum, g in done.groupby("stratum", sort=False):
        study = optuna.create_study(
            study_name=str(stratum), storage=url, direction="maximize", load_if_exists=True
        )
        dims = sorted(int(d) for d in g["latent_dim"].unique())
        dist = {
            "model.latent_dim": CategoricalDistribution(dims),
            "training.lr": FloatDistribution(1e-4, 1e-2, log=True),
        }
        rng = np.random.default_rng(0)
        study.add_trials(
            [
                optuna.trial.create_trial(
                    params={
                        "model.latent_dim": int(r.latent_dim),
                        "training.lr": float(10 ** rng.uniform(-4, -2)),
                    },
                    distributions=dist,
                    value=float(r.auc),
                )
                for r in g.itertuples()
            ]
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.helpers.synthetic RUN_DIR")
    out = make_synthetic_run(sys.argv[1], extra_statuses={"early-stopped": 3, "errored": 1})
    print(f"wrote a synthetic run to {out}; its report: python -m study.report {out}")
