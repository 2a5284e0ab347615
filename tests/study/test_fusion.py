"""Fused trials in a study (study.fusion): which configs are bundled, and a fused grid
study gives the same tables as the same study run one trial per config.

Tolerance: members agree with separate runs up to float32 summation order. Asserted
here, after 3 epochs on a 32 px phantom: AUC within 2e-3 and AP within 3e-3 (absolute),
training loss and validation reconstruction error within 1e-3 (relative; measured 1.1e-3
absolute on a loss of ~1, i.e. ~2e-4 relative). tests/test_fused.py states the library's
noise it allows (NOISE_FACTOR)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from study.fusion import MEMBERS_KEY, describe, fuse, is_bundle, resources_for
from study.plan import make_plan
from study.runner import RunOptions, run_study
from study.space import load_space

TINY_DATA = {"image_size": 32, "n_train": 64, "n_val": 16, "n_test_normal": 32,
             "n_test_abnormal": 32}  # fmt: skip
TINY_AE = {"num_blocks": 3, "hidden_dim": 32}


def write_space(tmp_path, body):
    body = {"storage_path": str(tmp_path / "runs"), **body}
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def grid(name="fused", latent_dims=(1, 4, 16), seeds=(0, 1), **extra):
    return {
        "name": name,
        "datasets": [{"name": "phantom", "params": TINY_DATA}],
        "models": [{"name": "ae", "params": {"latent_dim": list(latent_dims), **TINY_AE}}],
        "training": {"epochs": 3, "eval_every": 3, "batch_size": 16},
        "seeds": list(seeds),
        **extra,
    }


def plan_of(tmp_path, body, overrides=()):
    return make_plan(load_space(str(write_space(tmp_path, body)), list(overrides)))


# --------------------------------------------------------------------------- planning


def test_auto_bundles_a_stratum_sorted_by_latent_dim(tmp_path):
    plan = plan_of(tmp_path, grid(latent_dims=(16, 1, 4, 2)))
    units = fuse(plan.todo, plan.space, concurrency=2)
    assert all(is_bundle(u) for u in units) and len(units) == 2
    dims = [[m["model_params"]["latent_dim"] for m in u[MEMBERS_KEY]] for u in units]
    assert dims == [[1, 1, 2, 2], [4, 4, 16, 16]]
    members = [m["trial_id"] for u in units for m in u[MEMBERS_KEY]]
    assert sorted(members) == sorted(c["trial_id"] for c in plan.todo)  # each once


@pytest.mark.parametrize(
    "override, reason",
    [
        ("resources.fuse=off", "resources.fuse is off"),
        ("scheduler.type=asha", "early stopping"),
        ("logging.trackers=[tensorboard]", "experiment trackers"),
    ],
)
def test_off_and_asha_run_one_trial_per_config(tmp_path, override, reason):
    plan = plan_of(tmp_path, grid(), [override])
    units = fuse(plan.todo, plan.space, concurrency=2)
    assert units == plan.todo
    assert reason in describe(units, plan.space)


def test_bundle_size_strata_and_checkpointed_members(tmp_path):
    body = grid(latent_dims=(1, 2, 4, 8), seeds=(0,))
    body["datasets"].append({"name": "phantom", "label": "other", "params": TINY_DATA})
    plan = plan_of(tmp_path, body, ["resources.fuse=3"])
    units = fuse(plan.todo, plan.space, concurrency=8)
    sizes = sorted(len(u[MEMBERS_KEY]) if is_bundle(u) else 1 for u in units)
    assert sizes == [1, 1, 3, 3]  # fuse=3 ignores concurrency; strata never mix
    for u in units:
        if is_bundle(u):
            assert len({m["stratum"] for m in u[MEMBERS_KEY]}) == 1
    alone = plan.todo[0]["trial_id"]
    units = fuse(plan.todo, plan.space, concurrency=8, alone=[alone])
    assert alone in [u["trial_id"] for u in units if not is_bundle(u)]


def test_auto_leaves_64_px_models_unfused_on_the_cpu_only(tmp_path):
    body = grid()
    body["datasets"][0]["params"] = {**TINY_DATA, "image_size": 64}
    plan = plan_of(tmp_path, body)
    assert not any(is_bundle(u) for u in fuse(plan.todo, plan.space, concurrency=2))
    assert all(is_bundle(u) for u in fuse(plan.todo, plan.space, concurrency=2, gpu=True))
    forced = plan_of(tmp_path, body, ["resources.fuse=2"])
    assert all(is_bundle(u) for u in fuse(forced.todo, forced.space, concurrency=2))


def test_a_bundle_asks_for_its_members_gpu_share():
    assert resources_for({MEMBERS_KEY: [{}] * 3}, {"CPU": 2.0, "GPU": 0.25}) == {
        "CPU": 2.0,
        "GPU": 0.75,
    }
    assert resources_for({"trial_id": "x"}, {"CPU": 1.0, "GPU": 0.25})["GPU"] == 0.25


def test_unfusable_models_are_not_bundled(tmp_path):
    body = grid()
    body["models"] = [{"name": "vae", "params": {"latent_dim": [1, 4], **TINY_AE}}]
    plan = plan_of(tmp_path, body, ["resources.fuse=4"])
    assert not any(is_bundle(u) for u in fuse(plan.todo, plan.space, concurrency=1))


# --------------------------------------------------------------------------- a study


def run(space, **kw):
    out = io.StringIO()
    result = run_study(space, RunOptions(report=False, progress_interval_s=3600, out=out, **kw))
    return result, out.getvalue()


def test_fused_study_equals_the_unfused_one_and_resumes_only_missing_members(tmp_path, ray_session):
    path = write_space(tmp_path, grid(seeds=(0,)))
    fused, text = run(load_space(str(path), ["resources.fuse=3"]))
    assert "fused: 3 trials in 1 bundle of 3 members" in text
    assert fused.counts["completed"] == 3
    a = pd.read_parquet(fused.run_dir / "trials.parquet").set_index("trial_id")
    # resume with one more seed: only the 3 new members run (fused again)
    more, text = run(load_space(str(path), ["resources.fuse=3", "seeds=[0, 1]"]), resume=True)
    assert more.trials_run == 3 and more.counts["completed"] == 6
    b = pd.read_parquet(more.run_dir / "trials.parquet").set_index("trial_id")
    kept = b.loc[a.index]
    assert (kept["auc"] == a["auc"]).all() and (kept["session"] == 1).all()
    assert b["bundle_id"].nunique() == 2  # one bundle per session

    off, _ = run(load_space(str(path), ["resources.fuse=off", "seeds=[0, 1]", "name=unfused"]))
    c = pd.read_parquet(off.run_dir / "trials.parquet").set_index("trial_id")
    assert sorted(c.index) == sorted(b.index)  # the same trials, the same ids
    assert c["bundle_id"].isna().all() if "bundle_id" in c else True
    # fused and unfused differ by float32 summation order only (bounded from measured
    # noise in tests/test_fused.py); here, where the runs are whole studies, the bound is
    # the noise the study itself shows: a fusion that changed a member's initialisation,
    # batch order or loss would move it by about as much as another seed does, summation
    # order by far less (measured: at most 0.11 of the seed spread, AUC with
    # ATEN_CPU_CAPABILITY=default; 0.004 with the native kernels)
    for key in ("auc", "ap", "train_loss", "recon_error_val_normal"):
        diff = (b[key] - c.loc[b.index, key]).abs().max()
        seeds = c.groupby("latent_dim")[key].agg(lambda v: v.max() - v.min()).median()
        assert diff <= 0.5 * seeds, (key, diff, seeds)
    assert (b["status"] == "completed").all() and (c["status"] == "completed").all()
    best = lambda t: t.groupby("latent_dim")["auc"].mean().idxmax()  # noqa: E731
    assert best(b) == best(c)
    # every member's final model is kept and loads as a trial of its own
    import ae4ad

    for tid, row in b.iterrows():
        assert row["checkpoint_path"] == f"models/{tid}.pt"
        model = ae4ad.load_trained(more.run_dir / row["checkpoint_path"])
        assert model.config["model_params"]["latent_dim"] == row["latent_dim"]
    leftovers = list((more.run_dir / "tune").rglob("checkpoint_*"))
    assert not leftovers, leftovers


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture
def float64():
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


# Metrics are computed on float32 casts of the (float64) models' outputs: runs whose
# float64 numbers agree up to summation order agree in them up to float32 rounding.
EXACT = {"rel": float(np.finfo(np.float32).eps), "abs": 1e-12}


def same_records(expected, got, where, scalars_only=False):
    """Records of float64 runs equal up to rounding (EXACT); timings aside.
    ``scalars_only``: ``got`` holds the scalars only (a checkpoint's records.json)."""
    assert [r["epoch"] for r in expected] == [r["epoch"] for r in got], where
    for a, b in zip(expected, got):
        if scalars_only:
            a = {k: v for k, v in a.items() if not isinstance(v, (list, dict))}
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key, va in a.items():
            if key in ("elapsed_s", "train_time_s", "images_per_s", "examples"):
                continue
            if isinstance(va, float) and va != va:
                assert b[key] != b[key], (where, key)
            elif isinstance(va, (float, list)):
                assert b[key] == pytest.approx(va, **EXACT), (where, key)
            else:
                assert b[key] == va, (where, key)


def test_every_bundle_checkpoint_continues_each_member_exactly(tmp_path, float64, monkeypatch):
    """A bundle of 3 members with 3 evaluations, through the trainable's reporter: every
    checkpoint holds, for every member, its state at that evaluation beside its records up
    to it; continued with fit(start_state=...), it gives the member's uninterrupted
    records; the last checkpoint holds every member's final model."""
    import dataclasses
    import shutil

    import torch
    from ray import tune

    import ae4ad
    import ae4ad.fused
    from ae4ad.fused import fit_many
    from ae4ad.trained import load_checkpoint
    from study.checkpoints import RECORDS_FILE
    from study.trainable import report_bundle

    data = ae4ad.load_dataset("phantom", **TINY_DATA)
    data = dataclasses.replace(
        data, train=data.train.double(), val=data.val.double(), test=data.test.double()
    )
    configs = [
        {"model": "ae", "epochs": 6, "eval_every": 2, "batch_size": 16, "threads": 1,
         "seed": seed, "model_params": {**TINY_AE, "latent_dim": d}}
        for seed, d in ((0, 1), (1, 4), (2, 16))
    ]  # fmt: skip
    ids = [f"member-{k}" for k in range(len(configs))]
    reports: list[tuple[dict, object]] = []
    trained = [0]  # the epoch of the latest record the bundle has yielded
    real_fit_many = ae4ad.fused.fit_many

    def fit_many_watched(*args, **kwargs):
        for i, record in real_fit_many(*args, **kwargs):
            trained[0] = record["epoch"]
            yield i, record

    def report(metrics, checkpoint=None):  # what Tune would get; its checkpoint copied
        # an evaluation reaches Tune before the bundle trains on
        assert metrics["epoch"] == trained[0], (metrics["epoch"], trained[0])
        copy = None
        if checkpoint is not None:
            copy = tmp_path / f"checkpoint_{len(reports)}"
            shutil.copytree(checkpoint.path, copy)
        reports.append((dict(metrics), copy))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(ae4ad.fused, "fit_many", fit_many_watched)
    report_bundle(configs, data, [{"trial_id": t} for t in ids], ("auc", "max"), {})
    checkpoints = [c for _, c in reports if c is not None]
    assert len(checkpoints) == 3  # one per evaluation (epochs 2, 4, 6)
    assert len(reports) == 9

    uninterrupted = [list(ae4ad.fit(config, dataset=data)) for config in configs]
    final_fused: dict[int, dict] = {}  # the bundle's last state of each member
    for _ in fit_many(configs, dataset=data, state_out=lambda i, s, r: final_fused.update({i: s})):
        pass
    for epoch, folder in zip((2, 4, 6), checkpoints):
        assert sorted(p.name for p in folder.iterdir()) == ids, epoch  # every member
        for m, tid in enumerate(ids):
            where = (tid, epoch)
            state = load_checkpoint(folder / tid)
            assert state["epoch"] == epoch, where
            records = json.loads((folder / tid / RECORDS_FILE).read_text())
            done = [r for r in uninterrupted[m] if r["epoch"] <= epoch]
            same_records(done, records, where, scalars_only=True)
            if epoch < 6:
                rest = list(ae4ad.fit(configs[m], dataset=data, start_state=state))
                same_records([r for r in uninterrupted[m] if r["epoch"] > epoch], rest, where)
            else:  # the model the run keeps: the member's final state, bit for bit
                for key, t in final_fused[m]["model"].items():
                    assert torch.equal(state["model"][key], t), (where, key)


# --------------------------------------------------------------------------- progress


def test_progress_estimates_time_left_while_bundles_run(tmp_path, monkeypatch):
    """Two bundles of 8 trials, 60 epochs, evaluated at 30 and 60: the estimate is there
    from the first evaluation on, the summary names the bundles, and the estimate does
    not jump when a bundle's members finish together."""
    from study import progress as progress_module
    from study.progress import Progress

    space = load_space(str(write_space(tmp_path, grid(latent_dims=(1, 2, 4, 8)))))
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    ids = [f"t{k}" for k in range(16)]
    out = io.StringIO()
    progress = Progress(space, 16, {}, {}, out, 3600.0, epochs=dict.fromkeys(ids, 60))
    progress.tick([8, 8])
    assert "running: 2 bundles (16 trials)" in progress.summary()
    assert "estimated after the first evaluation" in progress.summary()
    now[0] = 100.0  # both bundles at epoch 30: half the work in 100 s
    for tid in ids:
        progress.advanced(tid, 30)
    assert "~1:40 left" in progress.summary()
    now[0] = 150.0  # the first bundle done (epoch 60), the second not yet
    for tid in ids[:8]:
        progress.advanced(tid, 60)
    before = progress.summary().rsplit("|", 1)[1]
    for tid in ids[:8]:
        progress.finished({"trial_id": tid, "status": "completed", "stratum": "s", "auc": 0.5})
    after = progress.summary().rsplit("|", 1)[1]
    assert before == after and "~0:50 left" in after, (before, after)
    now[0] = 170.0  # no evaluation since: the estimate counts down, it does not grow
    assert "~0:30 left" in progress.summary()
    progress.tick([8])
    assert "8/16 done, running: 1 bundle (8 trials)" in progress.summary()
    progress.tick([8, 1])
    assert "running: 1 bundle (8 trials), 1 trial" in progress.summary()


# --------------------------------------------------------------------------- the CLI


def test_a_fused_grid_through_the_cli_keeps_every_model_for_predict(tmp_path, ray_session, capsys):
    """Two bundles (two strata) of 3 members, evaluated twice, run by the command line:
    --keep-models all keeps one readable model per trial; predict --trial best and
    best-per-stratum work on the run folder; the run's end names a model that went
    missing and why, and predict says the true cause."""
    import ae4ad
    from study.cli import main

    body = grid(name="fusedcli", latent_dims=(1, 2, 4), seeds=(0,))
    body["models"].append(
        {"name": "ae", "label": "ae-small", "params": {"latent_dim": [1, 2, 4], "num_blocks": 3,
                                                       "hidden_dim": 16}}
    )  # fmt: skip
    body["training"] = {"epochs": 4, "eval_every": 2, "batch_size": 16}
    path = write_space(tmp_path, body)
    base = ["--space", str(path), "--no-report", "--progress-every", "3600"]
    assert main([*base, "--keep-models", "all", "--override", "resources.fuse=3"]) == 0
    printed = capsys.readouterr().out
    assert "fused: 6 trials in 2 bundles of up to 3 members" in printed, printed
    assert "warning" not in printed, printed
    run = tmp_path / "runs" / "fusedcli"
    trials = pd.read_parquet(run / "trials.parquet").set_index("trial_id")
    assert len(trials) == 6 and (trials["status"] == "completed").all()
    assert trials["bundle_id"].nunique() == 2
    assert trials["checkpoint_path"].tolist() == [f"models/{t}.pt" for t in trials.index]
    assert (trials["checkpoint_epoch"] == 4).all()
    assert sorted(p.stem for p in (run / "models").glob("*.pt")) == sorted(trials.index)
    assert "in 6 files" in printed, printed  # the disk line
    for tid, row in trials.iterrows():
        model = ae4ad.load_trained(run, tid)
        assert model.config["model_params"]["latent_dim"] == row["latent_dim"], tid

    images = tmp_path / "images"
    assert main(["export-images", "--run", str(run), "--out", str(images)]) == 0
    for which, n in (("best", 1), ("best-per-stratum", 2)):
        out = tmp_path / which
        argv = ["predict", "--run", str(run), "--trial", which, str(images), "--out", str(out)]
        assert main([*argv, "--no-maps"]) == 0, which
        assert pd.read_csv(out / "scores.csv")["trial_id"].nunique() == n, which

    # a kept model deleted, another one damaged: the run's end says which and why
    gone, damaged = trials.index[0], trials.index[1]
    (run / "models" / f"{gone}.pt").unlink()
    (run / "models" / f"{damaged}.pt").write_bytes(b"not a model")
    capsys.readouterr()
    assert main([*base, "--keep-models", "all", "--resume"]) == 0
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning: trial")]
    assert len(warnings) == 2, printed
    assert f"trial {gone} " in warnings[0] + warnings[1]
    assert any(gone in w and "missing from the run folder" in w for w in warnings), warnings
    assert any(damaged in w and "cannot read" in w for w in warnings), warnings
    assert "models" in printed and "in 5 files" in printed, printed  # the files there
    argv = ["predict", "--run", str(run), "--trial", gone, str(images), "--out", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--keep-models all keeps every completed trial's" in err, err


def test_a_bundle_reports_an_epoch_once_every_live_member_has(monkeypatch):
    """The reporter hands an epoch's records to Tune when every member still training has
    reported (a diverged member is no longer waited for), not one evaluation late."""
    from ray import tune

    from study.trainable import _BundleReporter

    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(
        tune, "report", lambda m, checkpoint=None: sent.append((m["epoch"], m["member"]))
    )
    reporter = _BundleReporter(["a", "b", "c"], ("auc", "max"))
    record = lambda e, m, status="running": {"epoch": e, "member": m, "status": status}  # noqa: E731
    reporter.add(1, record(1, "b", "diverged"), None)  # between evaluations
    assert sent == []  # the others may still report epoch 1
    reporter.add(0, record(2, "a"), None)
    assert sent == [(1, "b")]
    reporter.add(2, record(2, "c"), None)
    assert sent == [(1, "b"), (2, "a"), (2, "c")]  # a and c: all that still train
    reporter.add(0, record(4, "a"), None)
    reporter.add(2, record(4, "c"), None)
    assert sent[-2:] == [(4, "a"), (4, "c")]
