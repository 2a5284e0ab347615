"""Fused trials: train K autoencoders of one shape as one module (horizontal fusion).

A latent-dimension study trains many small models that differ only in ``latent_dim``
and ``seed``. :func:`fit_many` stacks K such configurations into one module and trains
them together; every member is the same computation as its own :func:`ae4ad.fit` run:

- convolutions become grouped convolutions (``groups = K``), each BatchNorm one
  BatchNorm over K x C channels (per-channel batch statistics are per member), the
  dense bottleneck batched matrix products (``baddbmm``) over K weight matrices;
- members with ``latent_dim`` below the widest one use a fixed zero mask on the latent
  rows / columns, applied in the forward pass: the masked weights take no part and get
  a zero gradient;
- each member's initial weights are those of the separate model built with its own seed
  (copied in), and each member draws its own batch order from its own generator;
- the loss is the sum of the members' losses, so each member's gradient is that of its
  own loss; Adam (with or without L2 weight decay) is elementwise, so one Adam over the
  fused parameters is K Adams (all members step together, so their step counts agree);
- a member whose loss becomes NaN or infinite is marked ``diverged`` (the same record
  :func:`ae4ad.fit` yields), its weights and optimiser state are zeroed and its loss is
  masked out; the others go on;
- evaluation copies a member's weights back into a plain model and runs the evaluation
  code of :func:`ae4ad.fit`, so records have the same keys and meaning.

Results agree with separate runs up to floating-point summation order (grouped and
batched kernels add in another order): in float64 to rounding, in float32 within the
noise that another thread count or another CPU's kernels bring to a separate run
(``tests/test_fused.py`` measures it and bounds the fused run's error by it).
Speed (``benchmarks/fused_throughput.py``): on the CPU fusion pays for small models
(latent.yaml's 32 px AE, per-operator overhead dominates) and costs for the paper's
64 px AE (grouped convolutions of that width are slower than dense ones).

Fusable models: ``ae`` and ``constrained_ae`` (any depth, width, image size). ``vae``,
``ceae`` (random draws in training), ``memae`` (memory attention) and ``ae_spatial``
are not fused; :func:`fusable` says why.

Example:
    >>> import ae4ad
    >>> from ae4ad.fused import fit_many
    >>> data = ae4ad.load_dataset("phantom", image_size=32, n_train=64, n_val=16,
    ...                           n_test_normal=16, n_test_abnormal=16)
    >>> base = {"model": "ae", "epochs": 2, "eval_every": 2, "batch_size": 16,
    ...         "model_params": {"num_blocks": 3, "hidden_dim": 32}}
    >>> configs = [base | {"seed": s, "model_params": base["model_params"] | {"latent_dim": d}}
    ...            for s, d in [(0, 1), (1, 4), (0, 16)]]
    >>> records = list(fit_many(configs, dataset=data))
    >>> [(k, r["epoch"], r["status"], r["latent_size"]) for k, r in records]
    [(0, 2, 'completed', 1), (1, 2, 'completed', 4), (2, 2, 'completed', 16)]
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ae4ad.data import AnomalyDataset, load_dataset
from ae4ad.device import training_process
from ae4ad.models import AE, ConstrainedAE, build_model
from ae4ad.train import (
    ConfigError,
    TrainConfig,
    _autocaster,
    _batching,
    _Clock,
    _diverged_record,
    _evaluation_record,
    dataset_spec,
    seed_everything,
    training_state,
)

FUSED_MODELS = ("ae", "constrained_ae")
"""Models :func:`fit_many` fuses."""

# Config keys members may differ in; everything else must be equal.
_MEMBER_KEYS = ("seed",)
_MEMBER_MODEL_PARAMS = ("latent_dim",)


def _as_config(config: dict | TrainConfig) -> TrainConfig:
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg.validate()
    return cfg


def fusable(configs: Sequence[dict | TrainConfig]) -> str | None:
    """Why ``configs`` cannot be trained as one fused bundle, or None when they can.

    Example:
        >>> fusable([{"model": "ae", "seed": 0}, {"model": "ae", "seed": 1}]) is None
        True
        >>> fusable([{"model": "ae", "lr": 1e-3}, {"model": "ae", "lr": 1e-2}])
        'lr differs between members (0.001 vs 0.01); only seed and latent_dim may'
    """
    cfgs = [_as_config(c) for c in configs]
    if not cfgs:
        return "no configs"
    first = cfgs[0]
    if first.model not in FUSED_MODELS:
        return f"model {first.model!r} is not fused; fused models: {', '.join(FUSED_MODELS)}"
    shared = lambda c: {  # noqa: E731  (eval_every resolved: None may equal a number)
        k: v
        for k, v in (vars(c) | {"eval_every": c.eval_interval}).items()
        if k not in _MEMBER_KEYS
    }
    shape = lambda c: {  # noqa: E731
        k: v for k, v in c.model_params.items() if k not in _MEMBER_MODEL_PARAMS
    }
    for cfg in cfgs[1:]:
        a, b = shared(first), shared(cfg)
        for key in a:
            if key == "model_params":
                pa, pb = shape(first), shape(cfg)
                for p in sorted(set(pa) | set(pb)):
                    if pa.get(p) != pb.get(p):
                        return (
                            f"model_params.{p} differs between members ({pa.get(p)!r} vs "
                            f"{pb.get(p)!r}); only seed and latent_dim may"
                        )
            elif a[key] != b[key]:
                return (
                    f"{key} differs between members ({a[key]!r} vs {b[key]!r}); "
                    "only seed and latent_dim may"
                )
    return None


# --- the fused module --------------------------------------------------------------------


class BatchedLinear(nn.Module):
    """K linear layers as one: ``x`` is K x B x in, the result K x B x out.

    Member k uses ``weight[k, :out_k, :in_k]`` and ``bias[k, :out_k]``; the rest is
    multiplied by a fixed zero mask in the forward pass, so it takes no part and
    gets no gradient.
    """

    def __init__(self, members: Sequence[nn.Linear]) -> None:
        super().__init__()
        k = len(members)
        n_out = max(m.out_features for m in members)
        n_in = max(m.in_features for m in members)
        weight = torch.zeros(k, n_out, n_in)
        bias = torch.zeros(k, n_out)
        mask = torch.zeros(k, n_out, n_in)
        for i, m in enumerate(members):
            weight[i, : m.out_features, : m.in_features] = m.weight.detach()
            bias[i, : m.out_features] = m.bias.detach()
            mask[i, : m.out_features, : m.in_features] = 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.masked = bool((mask == 0).any())
        self.register_buffer("weight_mask", mask, persistent=False)
        self.register_buffer("bias_mask", mask[:, :, 0].clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.masked:
            weight, bias = weight * self.weight_mask, bias * self.bias_mask
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class BatchedBatchNorm1d(nn.BatchNorm1d):
    """K BatchNorm1d layers as one BatchNorm1d over K x C features; ``x`` is K x B x C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b, c = x.shape
        y = super().forward(x.transpose(0, 1).reshape(b, k * c))
        return y.view(b, k, c).transpose(0, 1)


def _stack_first(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Member tensors stacked along their first dimension (the grouped layout)."""
    return torch.cat([t.detach() for t in tensors], dim=0).clone()


def _fuse_layer(layers: Sequence[nn.Module]) -> nn.Module:
    """One grouped / widened layer computing K members' ``layers`` side by side on
    channel-stacked inputs (member k owns channels k*C ... (k+1)*C - 1)."""
    first, k = layers[0], len(layers)
    if isinstance(first, nn.Conv2d):
        fused: nn.Module = nn.Conv2d(
            k * first.in_channels, k * first.out_channels, first.kernel_size, first.stride,
            first.padding, groups=k * first.groups, bias=first.bias is not None,
        )  # fmt: skip
    elif isinstance(first, nn.ConvTranspose2d):
        fused = nn.ConvTranspose2d(
            k * first.in_channels, k * first.out_channels, first.kernel_size, first.stride,
            first.padding, groups=k * first.groups, bias=first.bias is not None,
        )  # fmt: skip
    elif isinstance(first, nn.BatchNorm2d):
        fused = nn.BatchNorm2d(k * first.num_features, first.eps, first.momentum)
    elif isinstance(first, nn.ReLU):
        return nn.ReLU(inplace=first.inplace)
    elif isinstance(first, nn.Sequential):
        return nn.Sequential(*[_fuse_layer([m[i] for m in layers]) for i in range(len(first))])
    else:
        raise TypeError(f"cannot fuse a {type(first).__name__}")
    with torch.no_grad():
        for name, t in list(fused.named_parameters()) + list(fused.named_buffers()):
            member = [getattr(m, name) for m in layers]
            if name == "num_batches_tracked":
                t.copy_(member[0])
            else:
                t.copy_(_stack_first(member))
    return fused


class FusedAE(nn.Module):
    """K models of :class:`ae4ad.models.AE`'s shape (dense bottleneck) as one module.

    ``forward(x)`` takes B x K x C x H x W (member k's batch at ``x[:, k]``) and returns
    ``x_hat`` of the same shape and ``z`` K x B x D (D the widest latent; member k's
    latent is ``z[k, :, :latent_dim_k]``, the rest is zero).

    Example:
        >>> import torch
        >>> from ae4ad.models import build_model
        >>> members = [build_model("ae", latent_dim=d, image_size=32, num_blocks=3,
        ...                        hidden_dim=16) for d in (2, 8)]
        >>> fused = FusedAE(members)
        >>> out = fused(torch.zeros(4, 2, 1, 32, 32))
        >>> tuple(out["x_hat"].shape), tuple(out["z"].shape)
        ((4, 2, 1, 32, 32), (2, 4, 8))
    """

    def __init__(self, members: Sequence[AE]) -> None:
        super().__init__()
        first = members[0]
        self.n_members = len(members)
        self.latent_dims = [m.latent_dim for m in members]
        self.feature_shape = first.feature_shape
        self.encoder = _fuse_layer([m.encoder for m in members])
        self.decoder = _fuse_layer([m.decoder for m in members])
        self.to_latent = self._fuse_mlp([m.to_latent for m in members])
        self.from_latent = self._fuse_mlp([m.from_latent for m in members])

    @staticmethod
    def _fuse_mlp(mlps: Sequence[nn.Sequential]) -> nn.Sequential:
        bns = [m[1] for m in mlps]
        bn = BatchedBatchNorm1d(len(mlps) * bns[0].num_features, bns[0].eps, bns[0].momentum)
        with torch.no_grad():
            for name, t in list(bn.named_parameters()) + list(bn.named_buffers()):
                member = [getattr(b, name) for b in bns]
                t.copy_(member[0] if name == "num_batches_tracked" else _stack_first(member))
        return nn.Sequential(
            BatchedLinear([m[0] for m in mlps]),
            bn,
            nn.ReLU(inplace=True),
            BatchedLinear([m[3] for m in mlps]),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """B x K x C x H x W -> K x B x D."""
        b, k = x.shape[:2]
        h = self.encoder(x.reshape(b, k * x.shape[2], *x.shape[3:]))
        # reshape, not view: a channels-last h is not contiguous in (C, H, W) order
        return self.to_latent(h.reshape(b, k, -1).transpose(0, 1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """K x B x D -> B x K x C x H x W."""
        k, b = z.shape[:2]
        c, f, _ = self.feature_shape
        h = self.from_latent(z).transpose(0, 1).reshape(b, k * c, f, f)
        y = self.decoder(h)
        return y.view(b, k, -1, *y.shape[2:])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encode(x)
        return {"x_hat": self.decode(z), "z": z}

    def member_losses(self, x: torch.Tensor, model: AE) -> torch.Tensor:
        """Each member's training loss (K values), as ``model.training_loss`` defines it."""
        out = self(x)
        losses = (out["x_hat"] - x).pow(2).mean(dim=(0, 2, 3, 4))
        if isinstance(model, ConstrainedAE):
            z_rec = self.encode(out["x_hat"])
            widths = torch.tensor(self.latent_dims, dtype=losses.dtype, device=losses.device)
            latent = (z_rec - out["z"]).pow(2).sum(dim=(1, 2)) / (widths * x.shape[0])
            losses = losses + model.constraint_weight * latent
        return losses

    def member_state(
        self, i: int, template: AE, of: Callable[[torch.Tensor], torch.Tensor | None] | None = None
    ) -> dict[str, torch.Tensor]:
        """Member ``i``'s weights and buffers as a state dict of ``template``'s shape.

        ``of``: slice ``of(fused_tensor)`` instead of the tensor itself (e.g. its Adam
        moments); entries where it returns None are left out."""
        k = self.n_members
        state: dict[str, torch.Tensor] = {}
        fused_modules = dict(self.named_modules())
        for name, module in template.named_modules():
            fused = fused_modules[name]
            if fused is self or (list(fused.children()) and not isinstance(fused, BatchedLinear)):
                continue
            tensors = list(fused.named_parameters(recurse=False))
            tensors += list(fused.named_buffers(recurse=False))
            for key, t in tensors:
                if key in ("weight_mask", "bias_mask"):
                    continue
                source = t if of is None else of(t)
                if source is None:
                    continue
                if isinstance(fused, BatchedLinear):
                    o, n = module.out_features, module.in_features
                    part = source[i, :o, :n] if key == "weight" else source[i, :o]
                elif key == "num_batches_tracked":
                    part = source
                else:
                    part = source.view(k, -1, *source.shape[1:])[i]
                state[f"{name}.{key}"] = part
        return state

    def member_optimizer_state(
        self, i: int, template: AE, optimizer: torch.optim.Optimizer
    ) -> dict:
        """Member ``i``'s share of ``optimizer`` (an Adam over this module's parameters) as
        the state dict of an Adam over ``template.parameters()``."""
        names = [name for name, _ in template.named_parameters()]
        per_key: dict[str, dict[str, torch.Tensor]] = {}
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            moment = lambda t, key=key: optimizer.state.get(t, {}).get(key)  # noqa: E731
            per_key[key] = self.member_state(i, template, moment)
        fused = dict(self.named_parameters())
        state = {}
        for index, name in enumerate(names):
            if fused[name] not in optimizer.state:
                continue
            entry = {"step": optimizer.state[fused[name]]["step"].clone()}
            for key, sliced in per_key.items():
                if name in sliced:
                    entry[key] = sliced[name].clone()
            state[index] = entry
        group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(names)))}]}

    @torch.no_grad()
    def reset_member(self, i: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero member ``i``'s weights, buffers (running variance 1) and Adam state, so a
        diverged member computes finite zeros and no longer moves."""
        k = self.n_members
        for module in self.modules():
            if list(module.children()) and not isinstance(module, BatchedLinear):
                continue
            tensors = list(module.named_parameters(recurse=False))
            tensors += list(module.named_buffers(recurse=False))
            for key, t in tensors:
                if key in ("num_batches_tracked", "weight_mask", "bias_mask"):
                    continue
                batched = isinstance(module, BatchedLinear)
                member = (  # noqa: E731 (split dim 0 only: valid for channels-last weights)
                    (lambda x: x[i]) if batched else (lambda x: x.view(k, -1, *x.shape[1:])[i])
                )
                member(t).fill_(1.0 if key == "running_var" else 0.0)
                if optimizer is not None and isinstance(t, nn.Parameter):
                    for s in optimizer.state.get(t, {}).values():
                        if isinstance(s, torch.Tensor) and s.shape == t.shape:
                            member(s).zero_()


# --- training ----------------------------------------------------------------------------


def fit_many(
    configs: Sequence[dict | TrainConfig],
    dataset: AnomalyDataset | None = None,
    *,
    state_out: Callable[[int, dict, dict], None] | None = None,
) -> Iterator[tuple[int, dict]]:
    """Train K configs that differ only in ``seed`` and ``model_params.latent_dim`` as one
    fused module; yield ``(member_index, record)`` pairs, with the records
    :func:`ae4ad.fit` yields for that member (the same keys and, up to floating-point
    summation order, the same values).

    At every evaluation epoch the members' records come in member order; a member that
    diverges yields its ``diverged`` record and nothing after it, while the others go on.
    Timings are the bundle's: ``train_time_s`` is the bundle's training time and
    ``images_per_s`` the member's images over it (their sum is the bundle's throughput).

    ``state_out(i, state, record)``: called at every evaluation of member ``i`` (not for
    a diverged one) right before that record is yielded (so the state that came last
    before member ``i``'s record is that record's; the next member's state comes before
    the next member's record), with the state its own :func:`ae4ad.fit` run would give
    its ``state_out`` (weights, its share of Adam, its RNG states, timers):
    ``fit(configs[i], start_state=state)`` continues that member alone. A fused bundle
    does not restart from states; an interrupted bundle's members continue separately.

    Raises :class:`ae4ad.ConfigError` when the configs cannot be fused (see
    :func:`fusable`).
    """
    cfgs = [_as_config(c) for c in configs]
    reason = fusable(cfgs)
    if reason is not None:
        raise ConfigError(f"fit_many: {reason}")
    with training_process(cfgs[0]) as device:  # threads, device, deterministic, memory
        yield from _fit_bundle(cfgs, device, dataset, state_out)


def _fit_bundle(
    cfgs: list[TrainConfig],
    device: torch.device,
    dataset: AnomalyDataset | None,
    state_out: Callable[[int, dict, dict], None] | None,
) -> Iterator[tuple[int, dict]]:
    """:func:`fit_many`'s body, run inside :func:`ae4ad.device.training_process`."""
    cfg0 = cfgs[0]
    data = dataset if dataset is not None else load_dataset(cfg0.dataset, **cfg0.dataset_params)
    bundle = _build_bundle(cfgs, data, device)
    train = data.train.to(device)
    batch, n_batches = _batching(len(train), cfg0.batch_size)
    clock = _Clock(started=time.perf_counter())
    for epoch in range(1, cfg0.epochs + 1):
        t0 = time.perf_counter()
        mean_losses = bundle.train_epoch(train, batch, n_batches)
        clock.train_time += time.perf_counter() - t0
        clock.images_seen += n_batches * batch
        yield from bundle.records(epoch, mean_losses, cfg0.evaluates_after(epoch), clock, state_out)
        if not bundle.alive:
            return


@dataclass
class _Bundle:
    """A fused bundle in training: the fused module and its Adam, each member's plain
    model (evaluation copies the member's weights into it), RNGs and build parameters,
    and the members still training (``active`` masks the others out of the loss)."""

    cfgs: list[TrainConfig]
    data: AnomalyDataset
    device: torch.device
    members: list[AE]
    generators: list[torch.Generator]
    member_params: list[dict]
    global_rng: list[tuple]
    model: FusedAE
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], contextlib.AbstractContextManager]
    active: torch.Tensor
    alive: list[int]
    bases: list[dict]

    def train_epoch(self, train: torch.Tensor, batch: int, n_batches: int) -> list[float]:
        """One epoch of every member; their mean training losses."""
        self.model.train()
        # member k's batch order from member k's generator, as in its own fit
        n = len(train)
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        orders = orders.to(self.device)
        epoch_loss = torch.zeros(len(self.cfgs), device=self.device)
        for b in range(n_batches):
            idx = orders[:, b * batch : (b + 1) * batch].t()  # B x K
            x = train[idx]  # B x K x C x H x W
            with self.autocast():
                losses = self.model.member_losses(x, self.members[0])
            loss = torch.where(self.active, losses, torch.zeros_like(losses)).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            epoch_loss += losses.detach().float()
        return (epoch_loss / n_batches).tolist()

    def records(
        self,
        epoch: int,
        mean_losses: list[float],
        evaluate: bool,
        clock: _Clock,
        state_out: Callable[[int, dict, dict], None] | None,
    ) -> Iterator[tuple[int, dict]]:
        """The members' records after ``epoch``: a diverged member's record (and the member
        dropped) whenever one diverges, every member's at an evaluation epoch."""
        for i in list(self.alive):
            loss = mean_losses[i]
            if not math.isfinite(loss):
                record = _diverged_record(
                    epoch, loss, clock.started, clock.train_time, clock.images_seen
                )
            elif evaluate:
                member = self.members[i].to(self.device)
                if self.cfgs[i].channels_last:  # evaluated as fit and load_trained do
                    member = member.to(memory_format=torch.channels_last)
                member.load_state_dict(self.model.member_state(i, member))
                record = _evaluation_record(
                    member, self.data, self.cfgs[i], self.device, epoch, loss, clock
                )
                if record["status"] != "diverged" and state_out is not None:
                    state = self.member_training_state(
                        i, member, epoch, clock.timers(record["elapsed_s"])
                    )
                    state_out(i, state, {**self.bases[i], **record})
            else:
                continue
            yield i, {**self.bases[i], **record}
            if record["status"] == "diverged":
                self.drop(i)

    def drop(self, i: int) -> None:
        """Mask member ``i`` out of the loss and zero it (weights and Adam state)."""
        self.active[i] = False
        self.alive.remove(i)
        self.model.reset_member(i, self.optimizer)

    def member_training_state(self, i: int, member: AE, epoch: int, timers: dict) -> dict:
        """Member ``i``'s training state as :func:`ae4ad.train.training_state` writes it
        for a separate run (``member`` already holds its weights)."""
        cfg = self.cfgs[i]
        member_opt = torch.optim.Adam(member.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        member_opt.load_state_dict(self.model.member_optimizer_state(i, member, self.optimizer))
        model_spec = {"name": cfg.model, "params": self.member_params[i]}
        data_spec = dataset_spec(cfg, self.data)
        saved = torch.get_rng_state(), np.random.get_state()
        torch.set_rng_state(self.global_rng[i][0])
        np.random.set_state(self.global_rng[i][1])
        try:
            return training_state(
                epoch, cfg, member, member_opt, self.generators[i], timers, model_spec, data_spec
            )
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])


def _build_bundle(cfgs: list[TrainConfig], data: AnomalyDataset, device: torch.device) -> _Bundle:
    """Each member as fit builds it (seed everything, then build: its initial weights),
    fused into one module with one Adam."""
    members, generators, member_params, global_rng = [], [], [], []
    for cfg in cfgs:
        generators.append(seed_everything(cfg.seed))
        params = {"image_size": data.image_size, "in_channels": data.in_channels}
        params.update(cfg.model_params)
        members.append(build_model(cfg.model, **params))
        member_params.append(params)
        # the global RNG states the member's own fit holds from here on (training and
        # evaluation of the fused models draw nothing from them)
        global_rng.append((torch.get_rng_state(), np.random.get_state()))
    cfg0 = cfgs[0]
    model = FusedAE(members).to(device)
    if cfg0.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg0.lr, weight_decay=cfg0.weight_decay)
    k = len(cfgs)
    bases = [
        {"device": str(device), "n_parameters": sum(p.numel() for p in m.parameters())}
        for m in members
    ]
    return _Bundle(
        cfgs, data, device, members, generators, member_params, global_rng, model, optimizer,
        _autocaster(cfg0, device), torch.ones(k, dtype=torch.bool, device=device),
        list(range(k)), bases,
    )  # fmt: skip
