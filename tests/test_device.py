"""Devices and precision in plain ae4ad, tested on the CPU: device checks (torch.cuda
mocked), deterministic mode, float32 evaluation of a bf16-trained model, channels-last
on the CPU (fit and fit_many), the CUDA memory fraction and its out-of-memory message,
and a resume whose CUDA RNG states cannot be restored.

Tests parametrized by ``DEVICES`` also run on CUDA where PyTorch sees a GPU
(``benchmarks/gpu_check.sh``): same seed, same numbers in deterministic mode; predict
reproduces a bf16 run's scores; fused channels-last bf16 bundles train.
"""

from __future__ import annotations

import dataclasses
import math
import os
from unittest import mock

import pytest
import torch

import ae4ad
from ae4ad import ConfigError, TrainedModelError, fit, load_trained
from ae4ad.device import (
    apply_memory_fraction,
    deterministic_mode,
    out_of_memory_message,
    resolve_device,
)
from ae4ad.fused import FusedAE, fit_many
from ae4ad.models import build_model
from ae4ad.train import TrainConfig
from ae4ad.trained import save_checkpoint

DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
TIMINGS = ("elapsed_s", "train_time_s", "images_per_s")
BASE = {
    "model": "ae",
    "epochs": 4,
    "eval_every": 2,
    "batch_size": 16,
    "threads": 1,
    "device": "cpu",
    "model_params": {"num_blocks": 3, "hidden_dim": 32, "base_width": 4},
}


@pytest.fixture(scope="module")
def phantom():
    return ae4ad.load_dataset(
        "phantom", image_size=32, n_train=96, n_val=16, n_test_normal=32, n_test_abnormal=32
    )


@pytest.fixture(scope="module")
def phantom64(phantom):
    return dataclasses.replace(
        phantom, train=phantom.train.double(), test=phantom.test.double(), val=phantom.val.double()
    )


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def members(seeds=(0, 1, 2), dims=(1, 4, 16), **training):
    return [
        BASE | training | {"seed": s, "model_params": BASE["model_params"] | {"latent_dim": d}}
        for s, d in zip(seeds, dims)
    ]


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def fit_with_states(config, data) -> list[tuple[dict, dict]]:
    """(state, record) of each evaluation of ``fit(config, data)``."""
    pairs: list[tuple[dict, dict]] = []
    list(fit(config, data, state_out=lambda state, record: pairs.append((state, record))))
    return pairs


def fused_records(configs, data):
    pairs = list(fit_many(configs, dataset=data))
    return [[r for i, r in pairs if i == m] for m in range(len(configs))]


# --------------------------------------------------------------------------- device checks


def test_resolve_device_names_what_the_machine_lacks():
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match=r"device: 'cuda', but PyTorch sees no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="use cpu or auto"):
            next(fit({**BASE, "dataset": "phantom", "device": "cuda:0"}))
    with (
        mock.patch.object(torch.cuda, "is_available", return_value=True),
        mock.patch.object(torch.cuda, "device_count", return_value=2),
    ):
        assert resolve_device("auto") == torch.device("cuda")
        assert resolve_device("cuda:1") == torch.device("cuda:1")
        with pytest.raises(ConfigError, match=r"sees 2 GPU\(s\).*allowed: cuda, cuda:0, cuda:1"):
            resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:<index>, got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"deterministic": 1}, "deterministic: expected true or false, got 1"),
        ({"bf16": "yes"}, "bf16: expected true or false"),
        ({"gpu_memory_fraction": 0}, r"gpu_memory_fraction: expected a number in \(0, 1\]"),
        ({"gpu_memory_fraction": 1.5}, "gpu_memory_fraction: expected a number"),
    ],
)
def test_bad_device_settings_are_config_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**BASE, **change})


def test_load_trained_and_predict_devices(tmp_path, phantom):
    states = []
    list(
        fit(
            {**BASE, "dataset": "phantom", "epochs": 2},
            phantom,
            state_out=lambda s, r: states.append(s),
        )
    )
    save_checkpoint(tmp_path / "model", states[-1])
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert load_trained(tmp_path / "model", device="auto").device == torch.device("cpu")
        with pytest.raises(TrainedModelError, match="'cuda', but PyTorch sees no CUDA GPU"):
            load_trained(tmp_path / "model", device="cuda")
    with pytest.raises(TrainedModelError, match="got 'tpu'"):
        load_trained(tmp_path / "model", device="tpu")


def test_predict_device_errors_are_one_line_exit_2(tmp_path, capsys):
    from study.cli import main

    argv = ["predict", "--run", str(tmp_path), "--trial", "best", str(tmp_path)]
    argv += ["--out", str(tmp_path / "out")]
    with mock.patch.object(torch.cuda, "is_available", return_value=False):
        assert main([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--device: 'cuda', but PyTorch sees no CUDA GPU" in err
        assert main([*argv, "--device", "auto"]) == 2  # auto is fine: the run folder is not
        assert "not a run folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- deterministic


def _switches() -> list:
    """cuDNN determinism and autotuner, the TF32 switches, deterministic algorithms and
    CUBLAS_WORKSPACE_CONFIG, in that order."""
    from ae4ad.device import _PRECISION_KNOBS, _tf32_knobs

    knobs = [getattr(m, n) for m, n, _ in [*_PRECISION_KNOBS, *_tf32_knobs()]]
    return [*knobs, torch.are_deterministic_algorithms_enabled(),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG")]  # fmt: skip


def test_deterministic_mode_sets_every_switch_and_restores_them(monkeypatch):
    from ae4ad.device import _PRECISION_KNOBS, _tf32_knobs

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _switches()
    with deterministic_mode():
        inside = _switches()
    assert _switches() == before
    wanted = [value for _, _, value in [*_PRECISION_KNOBS, *_tf32_knobs()]]
    assert inside == [*wanted, True, ":4096:8"]
    assert "ieee" in wanted or False in wanted  # TF32 off, in either spelling
    with deterministic_mode(False):
        assert _switches() == before


def test_fit_trains_in_deterministic_mode_when_asked(monkeypatch, phantom):
    import ae4ad.train

    seen = []
    train_epoch = ae4ad.train._train_epoch

    def spy(*args):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return train_epoch(*args)

    monkeypatch.setattr(ae4ad.train, "_train_epoch", spy)
    list(fit({**BASE, "epochs": 2, "deterministic": True}, phantom))
    assert seen == [(True, False)] * 2
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    list(fit({**BASE, "epochs": 1, "eval_every": 1}, phantom))
    assert seen[-1][0] is False


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_numbers_in_deterministic_mode(device, phantom):
    config = {**BASE, "dataset": "phantom", "device": device, "deterministic": True}
    a, b = strip(fit(config, phantom)), strip(fit(config, phantom))
    assert a == b


# --------------------------------------------------------------------------- bf16, fp32 evaluation


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_run_is_evaluated_in_float32_so_predict_reproduces_it(
    device, channels_last, tmp_path, phantom
):
    config = {**BASE, "dataset": "phantom", "device": device, "deterministic": True}
    config["channels_last"] = channels_last  # load_trained evaluates in the run's layout
    states = []
    bf16 = list(fit({**config, "bf16": True}, phantom, state_out=lambda s, r: states.append(s)))
    fp32 = list(fit(config, phantom))
    assert bf16[0]["train_loss"] != fp32[0]["train_loss"]  # bf16 autocast did train
    save_checkpoint(tmp_path / "bf16", states[-1])
    trained = load_trained(tmp_path / "bf16", device=device)
    scores = trained.score(phantom.test)["scores"]
    assert scores.tolist() == bf16[-1]["scores"]  # bit for bit


def test_load_trained_scores_with_the_runs_deterministic_setting(tmp_path, phantom, monkeypatch):
    import ae4ad.train

    seen = []
    evaluate = ae4ad.train.evaluate_images
    monkeypatch.setattr(
        ae4ad.train,
        "evaluate_images",
        lambda *a, **k: (
            seen.append(torch.are_deterministic_algorithms_enabled()) or evaluate(*a, **k)
        ),
    )
    for deterministic in (True, False):
        config = {**BASE, "epochs": 2, "deterministic": deterministic}
        *_, (state, _) = fit_with_states(config, phantom)
        save_checkpoint(tmp_path / str(deterministic), state)
        seen.clear()
        load_trained(tmp_path / str(deterministic)).score(phantom.test[:4])
        assert seen == [deterministic]


# --------------------------------------------------------------------------- channels last


def _spy_channels_last(monkeypatch) -> list[bool]:
    """Record, at each fused forward pass, whether the module's 4-d weights are
    channels-last (and so not contiguous in the default layout)."""
    seen: list[bool] = []
    encode = FusedAE.encode

    def spy(self, x):
        convs = [p for p in self.parameters() if p.dim() == 4 and p.shape[-1] > 1]
        seen.append(
            all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
            and not all(p.is_contiguous() for p in convs)
        )
        return encode(self, x)

    monkeypatch.setattr(FusedAE, "encode", spy)
    return seen


def test_fit_many_channels_last_on_the_cpu_equals_channels_first_in_float64(
    phantom64, float64, monkeypatch
):
    configs = members(epochs=2, eval_every=2)
    first = fused_records(configs, phantom64)
    seen = _spy_channels_last(monkeypatch)
    last = fused_records([c | {"channels_last": True} for c in configs], phantom64)
    assert seen and all(seen)  # channels-last was applied on the CPU
    for a, b in zip(first, last, strict=True):
        assert strip(a) == strip(b)  # measured: bit for bit


def test_fit_channels_last_on_the_cpu_equals_channels_first_in_float64(
    phantom64, float64, monkeypatch
):
    import ae4ad.train

    built = []
    monkeypatch.setattr(
        ae4ad.train, "build_model", lambda *a, **k: built.append(build_model(*a, **k)) or built[-1]
    )
    config = members(seeds=(0,), dims=(4,), epochs=2)[0]
    first = strip(fit(config, phantom64))
    last = strip(fit(config | {"channels_last": True}, phantom64))
    convs = [p for p in built[-1].parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # applied on the CPU
    assert first == last


# Float32 channels-last runs other kernels on the CPU (oneDNN), so its records depart from
# channels-first ones by more than fusion does (tests/test_fused.py). Measured with these
# settings (phantom 32 px, 96 training and 64 test images, batch 16, 4 epochs, latent_dim
# 1, 4, 16, seeds 0..17 = 18 members in bundles of 3, both evaluations): the largest
# difference between channels-last and channels-first bundle records, and, for scale,
# between channels-first bundles at 1 and at 2 torch threads (ordinary float32 noise):
#   auc 5.9e-3 (threads 5.9e-3), ap 3.1e-3 (2.7e-3), train_loss 1.9e-3 rel (4.9e-4),
#   recon_error_* <= 1.0e-3 rel (1.4e-4), latent_entropy_gaussian 1.4e-2 rel (1.8e-2),
#   latent_effective_rank 2.5e-2 (2.6e-2), latent_participation_ratio 2.8e-2 (1.7e-2).
# Tolerances: about twice the larger of the two figures. AUC / AP absolute, the rest
# relative. Seeds 3, 4, 5 are the bundle with the largest train_loss difference.
FLOAT32_TOLERANCE = {
    "train_loss": 4e-3,
    "auc": 1.2e-2,
    "ap": 6e-3,
    "recon_error_train_normal": 2e-3,
    "recon_error_test_normal": 2e-3,
    "recon_error_test_abnormal": 2e-3,
    "latent_entropy_gaussian": 4e-2,
    "latent_effective_rank": 5e-2,
    "latent_participation_ratio": 6e-2,
}


def test_fit_many_channels_last_matches_channels_first_in_float32(phantom):
    configs = members(seeds=(3, 4, 5))
    first = fused_records(configs, phantom)
    last = fused_records([c | {"channels_last": True} for c in configs], phantom)
    for a_records, b_records in zip(first, last, strict=True):
        for a, b in zip(a_records, b_records, strict=True):
            assert set(a) == set(b)
            for key, tol in FLOAT32_TOLERANCE.items():
                if key in ("auc", "ap"):
                    assert b[key] == pytest.approx(a[key], abs=tol), key
                else:
                    assert b[key] == pytest.approx(a[key], rel=tol), key


def test_a_channels_last_bundle_members_scores_are_what_load_trained_gives(tmp_path, phantom):
    configs = members(channels_last=True, epochs=2, eval_every=2)
    states: dict[int, dict] = {}
    pairs = list(fit_many(configs, phantom, state_out=lambda i, s, r: states.setdefault(i, s)))
    for i, record in pairs:
        save_checkpoint(tmp_path / str(i), states[i])
        trained = load_trained(tmp_path / str(i))
        assert trained.score(phantom.test)["scores"].tolist() == record["scores"]


def test_a_diverged_member_of_a_channels_last_bundle_is_reset(phantom64, float64, monkeypatch):
    import ae4ad.fused

    def build(name, **params):
        model = build_model(name, **params)
        if params["latent_dim"] == 4:
            with torch.no_grad():
                model.to_latent[0].weight[0, 0] = float("inf")
        return model

    configs = members(epochs=2, eval_every=2)
    first = fused_records(configs, phantom64)
    monkeypatch.setattr(ae4ad.fused, "build_model", build)
    last = fused_records([c | {"channels_last": True} for c in configs], phantom64)
    assert [r["status"] for r in last[1]] == ["diverged"]
    for m in (0, 2):
        assert strip(first[m]) == strip(last[m])


@pytest.mark.parametrize("device", DEVICES)
def test_fused_channels_last_bf16_bundles_train(device, phantom):
    configs = members(device=device, channels_last=True, bf16=True, epochs=2, eval_every=2)
    records = fused_records(configs, phantom)
    assert [r[-1]["status"] for r in records] == ["completed"] * 3
    assert all(math.isfinite(r[-1]["auc"]) for r in records)


# --------------------------------------------------------------------------- GPU memory


def test_the_memory_fraction_is_set_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d))
    )
    cfg = TrainConfig.from_dict({**BASE, "gpu_memory_fraction": 0.25})
    apply_memory_fraction(cfg, torch.device("cuda:0"))
    apply_memory_fraction(cfg, torch.device("cpu"))
    apply_memory_fraction(TrainConfig.from_dict(BASE), torch.device("cuda:0"))
    assert calls == [(0.25, torch.device("cuda:0"))]


def _out_of_memory(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("runner", ["fit", "fit_many"])
def test_out_of_memory_names_the_share_and_what_to_change(runner, monkeypatch, phantom):
    import ae4ad.fused
    import ae4ad.train

    monkeypatch.setattr(ae4ad.train, "_train_epoch", _out_of_memory)
    monkeypatch.setattr(ae4ad.fused._Bundle, "train_epoch", _out_of_memory)
    configs = members(gpu_memory_fraction=0.25)
    run = (
        (lambda: fit(configs[0], phantom))
        if runner == "fit"
        else (lambda: fit_many(configs, phantom))
    )
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        list(run())
    text = str(info.value)
    assert "\n" not in text
    for part in ("gpu_memory_fraction 0.25", "batch_size (16)", "resources.gpus_per_trial",
                 "training.gpu_memory_fraction", "Tried to allocate 2.00 GiB"):  # fmt: skip
        assert part in text, part
    assert "no memory limit of its own" in out_of_memory_message(
        TrainConfig.from_dict(BASE), torch.device("cuda:0"), RuntimeError("x")
    )


# --------------------------------------------------------------------------- resume


def test_a_resume_that_cannot_restore_the_cuda_rng_says_so(phantom):
    config = {**BASE, "dataset": "phantom", "model": "vae", "epochs": 6}
    states = []
    full = strip(fit(config, phantom, state_out=lambda s, r: states.append(s)))
    state = states[0]
    quiet = strip(fit(config, phantom, start_state=state))
    assert quiet == full[1:] and all("resume_note" not in r for r in quiet)
    # a state written on a node with 2 GPUs, resumed where this process sees another number
    seen_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    saved = seen_here + 2
    other = {**state, "rng": {**state["rng"], "cuda": [torch.get_rng_state()] * saved}}
    with pytest.warns(RuntimeWarning, match="the CUDA RNG stream was not restored"):
        again = strip(fit(config, phantom, start_state=other))
    assert f"states of {saved} GPU(s), this process sees {seen_here}" in again[0]["resume_note"]
    assert "resume_note" not in again[1]
    assert [{k: v for k, v in r.items() if k != "resume_note"} for r in again] == full[1:]


def test_a_state_written_before_the_device_settings_existed_resumes(phantom):
    states = []
    full = strip(
        fit({**BASE, "dataset": "phantom"}, phantom, state_out=lambda s, r: states.append(s))
    )
    old = {**states[0], "config": {
        k: v for k, v in states[0]["config"].items()
        if k not in ("deterministic", "gpu_memory_fraction")
    }}  # fmt: skip
    assert strip(fit({**BASE, "dataset": "phantom"}, phantom, start_state=old)) == full[1:]
