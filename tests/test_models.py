import numpy as np
import pytest
import torch

from ae4ad.models import MODEL_PARAMS, MODELS, ModelError, build_model, count_parameters


def test_paper_ae_parameter_count():
    model = build_model("ae", latent_dim=16, image_size=64, in_channels=1)
    assert count_parameters(model) == 2_351_184


def test_defaults_are_the_papers():
    params = MODEL_PARAMS["ae"]
    assert params["base_width"] == 16
    assert params["expansion"] == 1
    assert params["hidden_dim"] == 1024
    assert params["image_size"] == 64
    assert params["num_blocks"] == 4
    assert MODEL_PARAMS["vae"]["kl_weight"] == 0.005
    assert MODEL_PARAMS["memae"]["mem_size"] == 25
    assert MODEL_PARAMS["memae"]["shrink_threshold"] == 0.0025
    assert MODEL_PARAMS["memae"]["entropy_weight"] == 0.0002
    assert MODEL_PARAMS["ceae"]["erase_fraction"] == pytest.approx(0.024)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes(name, size, channels):
    torch.manual_seed(0)
    model = build_model(name, latent_dim=8, image_size=size, in_channels=channels, hidden_dim=64)
    model.eval()
    out = model(torch.rand(2, channels, size, size) * 2 - 1)
    assert out["x_hat"].shape == (2, channels, size, size)
    latent = 8 * (size // 16) ** 2 if name == "ae_spatial" else 8
    assert out["z"].shape == (2, latent)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_decreases(name):
    torch.manual_seed(0)
    model = build_model(name, latent_dim=4, image_size=32, hidden_dim=64, num_blocks=3)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        model.train()
        loss, _ = model.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_deeper_blocks_add_3x3_layers():
    shallow = build_model("ae", latent_dim=4, image_size=32)
    deep = build_model("ae", latent_dim=4, image_size=32, encoder_depth=2, decoder_depth=2)
    convs = lambda m: sum(  # noqa: E731
        isinstance(l, torch.nn.Conv2d) and l.kernel_size == (3, 3) for l in m.modules()
    )
    assert convs(shallow) == 0
    assert convs(deep) == 8
    assert deep(torch.zeros(2, 1, 32, 32))["x_hat"].shape == (2, 1, 32, 32)


def test_vae_uses_mean_at_evaluation():
    torch.manual_seed(0)
    model = build_model("vae", latent_dim=4, image_size=32, hidden_dim=32).eval()
    x = torch.rand(3, 1, 32, 32)
    a, b = model(x), model(x)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert torch.equal(a["z"], a["mu"])


def test_ceae_erases_about_the_configured_area():
    model = build_model("ceae", latent_dim=4, image_size=64)
    x = torch.ones(8, 1, 64, 64)
    erased = model.erase(x)
    fraction = (erased == -1).float().mean().item()
    assert 0.015 < fraction < 0.035
    assert torch.all((erased == -1) | (erased == 1))


def test_memae_attention_is_sparse_and_normalised():
    torch.manual_seed(0)
    model = build_model("memae", latent_dim=4, image_size=32, hidden_dim=32).eval()
    att = model(torch.rand(5, 1, 32, 32))["attention"]
    assert att.shape == (5, 25)
    assert torch.allclose(att.sum(1), torch.ones(5), atol=1e-5)
    assert torch.all(att >= 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_dim": 0}, "latent_dim must be a positive integer, got 0"),
        ({"latent_dim": "8"}, "latent_dim must be a positive integer, got '8'"),
        ({"image_size": 40}, "image_size 40 must be divisible by 2\\*\\*num_blocks = 16"),
        ({"latnt_dim": 4}, "model 'ae' has no parameter 'latnt_dim'; allowed: latent_dim"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ModelError, match=message):
        build_model("ae", **kwargs)


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'gan'; allowed: ae, ae_spatial, ceae"):
        build_model("gan")


def test_memae_hard_shrinkage_zeroes_the_small_addressing_weights():
    """Addressing weights below the threshold become exactly 0; the rest keep their
    softmax weights, renormalised to sum to 1 (Gong et al. 2019, eq. 7)."""
    torch.manual_seed(0)
    model = build_model("memae", latent_dim=4, image_size=32, num_blocks=3, hidden_dim=32)
    model.eval()
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        soft = torch.softmax(model.encode(x) @ model.memory.t(), dim=1)
        ordered = soft.flatten().sort().values
        middle = len(ordered) // 2  # about half the weights lie below, none on it
        model.shrink_threshold = float(ordered[middle - 1] + ordered[middle]) / 2
        att = model(x)["attention"]
    below = soft < model.shrink_threshold
    assert below.any() and (~below).any()
    assert torch.all(att[below] == 0)
    assert torch.all(att[~below] > 0)
    kept = torch.where(below, torch.zeros_like(soft), soft)
    assert torch.allclose(att, kept / kept.sum(1, keepdim=True), atol=1e-5)
    # without shrinkage no weight is zero
    model.shrink_threshold = 0.0
    with torch.no_grad():
        assert torch.all(model(x)["attention"] > 0)


@pytest.mark.parametrize("kl_weight", [0.0, 0.005, 2.0])
def test_vae_loss_is_mse_plus_kl_weight_times_kl(kl_weight):
    """The training loss against a hand computation: the mean squared error of the
    reconstruction plus kl_weight x KL(N(mu, sigma^2) || N(0, 1)), the KL summed over
    the latent dimensions and averaged over the batch."""
    torch.manual_seed(0)
    model = build_model(
        "vae", latent_dim=3, image_size=32, num_blocks=3, hidden_dim=16, kl_weight=kl_weight
    )
    model.train()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    loss, out = model.training_loss(x)
    x_hat = out["x_hat"].detach().double().numpy()
    mu = out["mu"].detach().double().numpy()
    sigma2 = np.exp(out["log_var"].detach().double().numpy())
    mse = np.mean((x_hat - x.double().numpy()) ** 2)
    # KL of N(mu, s^2) from N(0, 1) per dimension: (s^2 + mu^2 - 1 - ln s^2) / 2
    kl = np.mean(np.sum((sigma2 + mu**2 - 1 - np.log(sigma2)) / 2, axis=1))
    assert kl > 0
    assert loss.item() == pytest.approx(mse + kl_weight * kl, rel=1e-5)
