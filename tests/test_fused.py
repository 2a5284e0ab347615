"""fit_many (fused trials) against separate fit runs.

In float64 the fused bundle gives the separate runs' records exactly (every metric is
computed on float32 casts; measured difference 0.0). In float32 the grouped and batched
kernels add in another order, and the differences grow with training; the float32 test
states the tolerances measured on this phantom (see FLOAT32_TOLERANCE).
"""

import dataclasses
import math

import pytest
import torch

import ae4ad
from ae4ad import ConfigError, fit
from ae4ad.fused import BatchedLinear, FusedAE, fit_many, fusable
from ae4ad.models import build_model

LATENT_DIMS = (1, 4, 16)
BASE = {
    "model": "ae",
    "epochs": 4,
    "eval_every": 2,
    "batch_size": 16,
    "threads": 1,
    "device": "cpu",  # exact comparisons are CPU facts (CUDA: tests/test_device.py)
    "model_params": {"num_blocks": 3, "hidden_dim": 32, "base_width": 4},
}
TIMINGS = ("elapsed_s", "train_time_s", "images_per_s")


def member_configs(model="ae", seeds=(0, 1, 2), latent_dims=LATENT_DIMS, **training):
    return [
        BASE | training | {"model": model, "seed": s}
        | {"model_params": BASE["model_params"] | {"latent_dim": d}}
        for s, d in zip(seeds, latent_dims)
    ]  # fmt: skip


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


def by_member(pairs, k):
    return [[r for i, r in pairs if i == m] for m in range(k)]


def assert_same_records(separate, fused, rel=0.0, abs_=0.0):
    assert [r["epoch"] for r in separate] == [r["epoch"] for r in fused]
    for a, b in zip(separate, fused):
        assert set(a) == set(b), set(a) ^ set(b)
        for key in a:
            if key in TIMINGS:
                continue
            va, vb = a[key], b[key]
            if isinstance(va, float) and math.isnan(va):
                assert math.isnan(vb), key
            elif isinstance(va, float):
                assert vb == pytest.approx(va, rel=rel, abs=abs_), key
            elif key == "scores":
                assert vb == pytest.approx(va, rel=rel, abs=abs_), key
            elif key != "examples":
                assert va == vb, key


@pytest.mark.parametrize(
    "model, training", [("ae", {}), ("constrained_ae", {"weight_decay": 1e-3})]
)
def test_fused_equals_separate_fit_in_float64(phantom64, float64, model, training):
    configs = member_configs(model, **training)
    separate = [list(fit(c, dataset=phantom64)) for c in configs]
    fused = by_member(list(fit_many(configs, dataset=phantom64)), len(configs))
    for m in range(len(configs)):
        assert [r["latent_size"] for r in fused[m]] == [LATENT_DIMS[m]] * 2
        assert fused[m][-1]["status"] == "completed"
        # metrics are computed on float32 casts of float64 models: bit-equal here
        assert_same_records(separate[m], fused[m], rel=1e-9, abs_=1e-12)


def test_member_states_continue_as_separate_fit_runs(phantom64, float64):
    configs = member_configs(latent_dims=(1, 16), seeds=(0, 1))
    states: dict[int, list[dict]] = {0: [], 1: []}
    fused = by_member(
        list(fit_many(configs, dataset=phantom64, state_out=lambda i, s, r: states[i].append(s))),
        2,
    )
    assert [[s["epoch"] for s in states[m]] for m in (0, 1)] == [[2, 4], [2, 4]]
    for m in (0, 1):
        again = list(fit(configs[m], dataset=phantom64, start_state=states[m][0]))
        # what the member's own run yields after epoch 2
        assert_same_records(fused[m][1:], again, rel=1e-9, abs_=1e-12)
        assert (
            states[m][0]["model_spec"]["params"]["latent_dim"]
            == configs[m]["model_params"]["latent_dim"]
        )


# Measured with these settings (phantom 32 px, 96 training and 64 test images, batch 16,
# 4 epochs, latent_dim 1, 4, 16, seeds 0..17 = 18 members, both evaluations): the largest
# float32 difference between fused and separate records, and, for scale, between the same
# separate run at 1 and at 2 torch threads (another summation order, no fusion):
#   auc 9.8e-4 (threads 6.8e-3), ap 1.4e-3 (3.1e-3), train_loss 5.8e-5 rel (4.6e-4),
#   recon_error_* <= 7.1e-5 rel (2.6e-4), latent_entropy_gaussian 2.3e-3 rel (2.1e-2),
#   latent_effective_rank 3.9e-3 (3.0e-2), latent_participation_ratio 4.9e-3 (2.2e-2),
#   latent_entropy_knn 2.5e-2 (2.4e-2), latent_intrinsic_dim 0.19 (0.27; TwoNN on a
#   1-d latent, not checked here: the float64 test checks it exactly).
# Tolerances: about twice the fused figures. AUC / AP absolute, the rest relative.
FLOAT32_TOLERANCE = {
    "train_loss": 2e-4,
    "auc": 2e-3,
    "ap": 3e-3,
    "recon_error_train_normal": 3e-4,
    "recon_error_val_normal": 3e-4,
    "recon_error_test_normal": 3e-4,
    "recon_error_test_abnormal": 3e-4,
    "latent_entropy_gaussian": 1e-2,
    "latent_effective_rank": 1e-2,
    "latent_participation_ratio": 1e-2,
    "latent_entropy_knn": 5e-2,
}


def test_fused_matches_separate_fit_in_float32_within_tolerance(phantom):
    configs = member_configs(seeds=(3, 4, 5))
    separate = [list(fit(c, dataset=phantom)) for c in configs]
    fused = by_member(list(fit_many(configs, dataset=phantom)), len(configs))
    for m in range(len(configs)):
        for a, b in zip(separate[m], fused[m], strict=True):
            assert set(a) == set(b)
            for key, tol in FLOAT32_TOLERANCE.items():
                if key in ("auc", "ap"):
                    assert b[key] == pytest.approx(a[key], abs=tol), (m, key)
                else:
                    assert b[key] == pytest.approx(a[key], rel=tol), (m, key)


def test_a_diverged_member_is_masked_out_and_the_others_go_on(phantom64, float64, monkeypatch):
    import ae4ad.fused

    def build(name, **params):
        model = build_model(name, **params)
        if params["latent_dim"] == 4:
            with torch.no_grad():
                model.to_latent[0].weight[0, 0] = float("inf")
        return model

    monkeypatch.setattr(ae4ad.fused, "build_model", build)
    configs = member_configs()
    fused = by_member(list(fit_many(configs, dataset=phantom64)), len(configs))
    assert [r["status"] for r in fused[1]] == ["diverged"]
    assert fused[1][0]["epoch"] == 1 and "training loss became nan" in fused[1][0]["error"]
    for m in (0, 2):
        assert_same_records(list(fit(configs[m], dataset=phantom64)), fused[m], rel=1e-9)


def test_masked_latent_weights_take_no_part_and_get_no_gradient():
    members = [
        build_model("ae", latent_dim=d, image_size=16, num_blocks=2, hidden_dim=8, base_width=2)
        for d in (1, 5)
    ]
    fused = FusedAE(members)
    x = torch.randn(6, 2, 1, 16, 16)
    before = fused.member_losses(x, members[0])
    with torch.no_grad():  # garbage where the mask is zero changes nothing
        for layer in (fused.to_latent[3], fused.from_latent[0]):
            layer.weight[layer.weight_mask == 0] = 7.0
            layer.bias[layer.bias_mask == 0] = 7.0
    assert torch.equal(fused.member_losses(x, members[0]), before)
    # (no weight decay here: it would shrink the garbage; fit_many's masked entries are 0)
    opt = torch.optim.Adam(fused.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        fused.member_losses(x, members[0]).sum().backward()
        for layer in (fused.to_latent[3], fused.from_latent[0]):
            assert isinstance(layer, BatchedLinear) and layer.masked
            hidden = layer.weight_mask == 0
            assert (layer.weight.grad[hidden] == 0).all()
        opt.step()
    out, back = fused.to_latent[3], fused.from_latent[0]
    assert (out.weight[0, 1:] == 7).all() and (out.bias[0, 1:] == 7).all()  # unused, unmoved
    assert (back.weight[0, :, 1:] == 7).all()
    assert (fused(x)["z"][0, :, 1:] == 0).all()


def test_member_weights_round_trip():
    members = [build_model("ae", latent_dim=d, image_size=16, num_blocks=2) for d in (3, 7)]
    fused = FusedAE(members)
    for i, m in enumerate(members):
        state = fused.member_state(i, m)
        assert set(state) == set(m.state_dict())
        for key, t in m.state_dict().items():
            assert torch.equal(state[key], t), key


def test_what_cannot_be_fused_is_refused_with_the_reason():
    assert fusable(member_configs()) is None
    assert "lr differs" in fusable(member_configs()[:1] + member_configs(lr=0.01)[1:])
    assert "model 'vae' is not fused" in fusable(member_configs("vae"))
    wider = member_configs()
    wider[1] = wider[1] | {"model_params": wider[1]["model_params"] | {"hidden_dim": 64}}
    assert "model_params.hidden_dim differs" in fusable(wider)
    with pytest.raises(ConfigError, match="fit_many: lr differs"):
        next(fit_many(member_configs()[:1] + member_configs(lr=0.01)[1:]))
