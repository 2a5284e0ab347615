"""The paper's autoencoder and its variants, one registry selected by name.

Every model takes images N x C x S x S in [-1, 1] and its ``forward`` returns a dict
with at least ``x_hat`` (same shape as the input) and ``z`` (N x latent size).
``training_loss(x)`` returns ``(loss, out)`` so one training loop serves every model.

Architecture (Cai, Chen, Cheng, MICCAI 2024; reference code caiyu6666/MedIAnomaly,
``reconstruction/networks``): ``num_blocks`` (4) encoder blocks, each
Conv2d(k4, s2, p1, no bias) + BatchNorm + ReLU with widths w, 2w, 4w, 4w
(w = base_width x expansion), optional extra 3x3 conv layers per block
(``encoder_depth`` / ``decoder_depth``, 1 = none); a dense bottleneck
flatten -> Linear(hidden_dim) -> BN1d -> ReLU -> Linear(latent_dim) = z ->
Linear(hidden_dim) -> BN1d -> ReLU -> Linear -> reshape; a mirrored decoder of
ConvTranspose2d(k4, s2, p1, no bias) + BN + ReLU blocks, the last without BN/ReLU.

Example:
    >>> import torch
    >>> from ae4ad.models import build_model, count_parameters
    >>> model = build_model("ae", latent_dim=16)
    >>> count_parameters(model)
    2351184
    >>> out = model.eval()(torch.zeros(2, 1, 64, 64))
    >>> tuple(out["x_hat"].shape), tuple(out["z"].shape)
    ((2, 1, 64, 64), (2, 16))
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn


class ModelError(ValueError):
    """A model cannot be built as configured (unknown name or parameter, bad value)."""


def _conv3x3(channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    ]


def down_block(in_ch: int, out_ch: int, depth: int = 1) -> nn.Sequential:
    """Conv(k4, s2) + BN + ReLU, then ``depth - 1`` extra 3x3 conv layers."""
    layers = [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]
    for _ in range(depth - 1):
        layers += _conv3x3(out_ch)
    return nn.Sequential(*layers)


def up_block(in_ch: int, out_ch: int, depth: int = 1, last: bool = False) -> nn.Sequential:
    """``depth - 1`` extra 3x3 conv layers, then ConvT(k4, s2) + BN + ReLU (last: no BN/ReLU)."""
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += _conv3x3(in_ch)
    layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False))
    if not last:
        layers += [nn.BatchNorm2d(out_ch), nn.ReLU(True)]
    return nn.Sequential(*layers)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(True), nn.Linear(hidden, n_out)
    )


class AE(nn.Module):
    """The paper's convolutional autoencoder with a dense bottleneck (``ae``)."""

    def __init__(
        self,
        latent_dim: int = 16,
        image_size: int = 64,
        in_channels: int = 1,
        base_width: int = 16,
        expansion: int = 1,
        hidden_dim: int = 1024,
        encoder_depth: int = 1,
        decoder_depth: int = 1,
        num_blocks: int = 4,
    ) -> None:
        super().__init__()
        _check_positive(
            latent_dim=latent_dim,
            image_size=image_size,
            in_channels=in_channels,
            base_width=base_width,
            expansion=expansion,
            hidden_dim=hidden_dim,
            encoder_depth=encoder_depth,
            decoder_depth=decoder_depth,
            num_blocks=num_blocks,
        )
        if image_size % (2**num_blocks):
            raise ModelError(
                f"image_size {image_size} must be divisible by 2**num_blocks = {2**num_blocks}"
            )
        self.latent_dim = latent_dim
        self.feature_size = image_size // 2**num_blocks
        w = base_width * expansion
        widths = [w * min(2**i, 4) for i in range(num_blocks)]
        chans = [in_channels, *widths]
        self.encoder = nn.Sequential(
            *[down_block(chans[i], chans[i + 1], encoder_depth) for i in range(num_blocks)]
        )
        self.decoder = nn.Sequential(
            *[
                up_block(chans[i + 1], chans[i], decoder_depth, last=(i == 0))
                for i in reversed(range(num_blocks))
            ]
        )
        self.feature_shape = (widths[-1], self.feature_size, self.feature_size)
        self.build_bottleneck(widths[-1] * self.feature_size**2, hidden_dim, latent_dim)

    def build_bottleneck(self, n_features: int, hidden_dim: int, latent_dim: int) -> None:
        self.to_latent = _mlp(n_features, hidden_dim, latent_dim)
        self.from_latent = _mlp(latent_dim, hidden_dim, n_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_latent(z).view(len(z), *self.feature_shape))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        return {"x_hat": self.decode(z), "z": z}

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(x)
        return F.mse_loss(out["x_hat"], x), out


class SpatialAE(AE):
    """``ae_spatial``: a 1x1-conv bottleneck that keeps the f x f feature map.

    z has ``latent_dim`` channels at every position of the f x f map
    (f = image_size / 2**num_blocks), so its size is latent_dim * f * f.
    """

    def build_bottleneck(self, n_features: int, hidden_dim: int, latent_dim: int) -> None:
        c = self.feature_shape[0]

        def conv_mlp(n_in: int, n_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(n_in, hidden_dim, 1, bias=False),
                nn.BatchNorm2d(hidden_dim),
                nn.ReLU(True),
                nn.Conv2d(hidden_dim, n_out, 1, bias=False),
            )

        self.to_latent = conv_mlp(c, latent_dim)
        self.from_latent = conv_mlp(latent_dim, c)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z_map = self.to_latent(self.encoder(x))
        x_hat = self.decoder(self.from_latent(z_map))
        return {"x_hat": x_hat, "z": z_map.flatten(1)}


class VAE(AE):
    """``vae``: reparameterised bottleneck; loss = MSE + kl_weight x KL; z = mu at evaluation."""

    def __init__(self, *args, kl_weight: float = 0.005, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kl_weight = kl_weight

    def build_bottleneck(self, n_features: int, hidden_dim: int, latent_dim: int) -> None:
        self.to_latent = _mlp(n_features, hidden_dim, 2 * latent_dim)
        self.from_latent = _mlp(latent_dim, hidden_dim, n_features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, log_var = self.to_latent(self.encoder(x).flatten(1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        return {"x_hat": self.decode(z), "z": mu, "mu": mu, "log_var": log_var}

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(x)
        mu, log_var = out["mu"], out["log_var"]
        kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=1).mean()
        return F.mse_loss(out["x_hat"], x) + self.kl_weight * kl, out


class MemAE(AE):
    """``memae``: the latent is re-expressed as a sparse mix of ``mem_size`` memory slots.

    Attention = softmax(z M^T), hard-shrunk at ``shrink_threshold`` and L1-renormalised;
    loss = MSE + entropy_weight x mean entropy of the attention (Gong et al. 2019).
    """

    def __init__(
        self,
        *args,
        mem_size: int = 25,
        shrink_threshold: float = 0.0025,
        entropy_weight: float = 0.0002,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_positive(mem_size=mem_size)
        self.shrink_threshold = shrink_threshold
        self.entropy_weight = entropy_weight
        bound = 1.0 / math.sqrt(self.latent_dim)
        self.memory = nn.Parameter(torch.empty(mem_size, self.latent_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        att = torch.softmax(z @ self.memory.t(), dim=1)
        if self.shrink_threshold > 0:
            lam = self.shrink_threshold
            att = F.relu(att - lam) * att / ((att - lam).abs() + 1e-12)
            att = F.normalize(att, p=1, dim=1)
        z_hat = att @ self.memory
        return {"x_hat": self.decode(z_hat), "z": z, "z_hat": z_hat, "attention": att}

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(x)
        att = out["attention"]
        entropy = -(att * torch.log(att + 1e-12)).sum(dim=1).mean()
        return F.mse_loss(out["x_hat"], x) + self.entropy_weight * entropy, out


class CeAE(AE):
    """``ceae``: context encoding. Training inputs have one random square erased
    (``erase_fraction`` of the image area, filled with -1); the target is the whole image."""

    def __init__(self, *args, erase_fraction: float = 0.024, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 < erase_fraction < 1:
            raise ModelError(f"erase_fraction must be in (0, 1), got {erase_fraction!r}")
        self.erase_fraction = erase_fraction

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        n, _, s, _ = x.shape
        side = max(1, round(s * math.sqrt(self.erase_fraction)))
        top = torch.randint(0, s - side + 1, (n,), device=x.device)
        left = torch.randint(0, s - side + 1, (n,), device=x.device)
        rows = torch.arange(s, device=x.device)
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + side)[:, None])
        in_cols = (rows[None] >= left[:, None]) & (rows[None] < (left + side)[:, None])
        hole = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        return x.masked_fill(hole, -1.0)

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(self.erase(x))
        return F.mse_loss(out["x_hat"], x), out


class ConstrainedAE(AE):
    """``constrained_ae``: adds constraint_weight x ||z - E(D(z))||^2 to the loss, so the
    reconstruction's latent matches the input's."""

    def __init__(self, *args, constraint_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.constraint_weight = constraint_weight

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(x)
        z_rec = self.encode(out["x_hat"])
        latent = F.mse_loss(z_rec, out["z"])
        return F.mse_loss(out["x_hat"], x) + self.constraint_weight * latent, out


MODELS: dict[str, type[AE]] = {
    "ae": AE,
    "ae_spatial": SpatialAE,
    "vae": VAE,
    "memae": MemAE,
    "ceae": CeAE,
    "constrained_ae": ConstrainedAE,
}


def model_params(name: str) -> dict[str, object]:
    """The parameters a model accepts, with their defaults (``image_size`` and
    ``in_channels`` included; training sets those from the data)."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    params: dict[str, object] = {}
    for cls in reversed(MODELS[name].__mro__):
        if cls is nn.Module or not issubclass(cls, nn.Module):
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and p.name != "self"):
                params[p.name] = p.default
    return params


MODEL_PARAMS: dict[str, dict[str, object]] = {name: model_params(name) for name in MODELS}


def build_model(name: str, **params) -> AE:
    """Build a model by registry name, e.g. ``build_model("vae", latent_dim=8)``."""
    allowed = model_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ModelError(
            f"model {name!r} has no parameter {unknown[0]!r}; allowed: {', '.join(allowed)}"
        )
    return MODELS[name](**params)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{key} must be a positive integer, got {value!r}")
