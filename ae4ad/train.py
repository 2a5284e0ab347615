"""One trial: train one model on one data set's normal images and score it.

``fit(config)`` yields one record (a plain dict) per evaluation: every
``eval_every`` epochs (by default :func:`default_eval_every`: max(1, epochs // 5)) and
at the end. The final record also carries the per-image
test scores and labels, so anyone can recompute the metrics, and a few example
reconstructions.

Example:
    >>> from ae4ad.train import fit
    >>> config = {"dataset": "phantom", "model": "ae", "epochs": 1, "device": "cpu",
    ...           "dataset_params": {"image_size": 32, "n_train": 64, "n_val": 16,
    ...                              "n_test_normal": 16, "n_test_abnormal": 16},
    ...           "model_params": {"latent_dim": 4, "num_blocks": 3, "hidden_dim": 32}}
    >>> records = list(fit(config))
    >>> records[-1]["status"], 0.0 <= records[-1]["auc"] <= 1.0
    ('completed', True)

Checkpoints: ``fit(config, state_out=f)`` calls ``f(state, record)`` at every evaluation,
just before the record is yielded, with the whole training state (model, optimiser,
RNG states, epoch, config; plain tensors and dicts, see :func:`training_state`);
``fit(config, start_state=state)`` continues from such a state, and its records are
the ones the uninterrupted run yields after that epoch (the same numbers on the same
machine; only the timings differ):

    >>> states = []
    >>> full = list(fit(config | {"epochs": 2, "eval_every": 1},
    ...                 state_out=lambda state, record: states.append(state)))
    >>> again = list(fit(config | {"epochs": 2, "eval_every": 1}, start_state=states[0]))
    >>> [r["epoch"] for r in again], again[-1]["auc"] == full[-1]["auc"]
    ([2], True)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from ae4ad.data import AnomalyDataset, load_dataset
from ae4ad.device import DEVICE_PATTERN, DEVICE_RULE, training_process
from ae4ad.latent import image_intrinsic_dimension, latent_statistics
from ae4ad.models import build_model
from ae4ad.scoring import SCORES, anomaly_map, image_metrics, image_scores, pixel_metrics


class _NonFiniteOutput(ArithmeticError):
    """The model produced NaN or inf although the training loss was finite."""


class ConfigError(ValueError):
    """A training config is invalid: the message names the key, value and what is allowed."""


def default_eval_every(epochs: int) -> int:
    """Epochs between evaluations when a config does not set ``eval_every``: about five
    evaluations a run, so that short runs still report (to a scheduler) before their end.

    >>> default_eval_every(50), default_eval_every(3)
    (10, 1)
    """
    return max(1, epochs // 5)


@dataclass
class TrainConfig:
    """Everything one trial needs; plain values so it travels as a dict."""

    dataset: str = "phantom"
    dataset_params: dict = field(default_factory=dict)
    model: str = "ae"
    model_params: dict = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int | None = None  # None: default_eval_every(epochs)
    eval_batch_size: int = 256
    device: str = "auto"
    threads: int | None = None
    score: str = "l2"
    bf16: bool = False
    channels_last: bool = False
    deterministic: bool = False
    gpu_memory_fraction: float | None = None  # CUDA only; None: no limit
    n_examples: int = 2

    @classmethod
    def from_dict(cls, config: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"unknown training config key {unknown[0]!r}; allowed: {', '.join(sorted(known))}"
            )
        cfg = cls(**config)
        cfg.validate()
        return cfg

    @property
    def eval_interval(self) -> int:
        """Epochs between evaluations: ``eval_every``, else :func:`default_eval_every`."""
        return default_eval_every(self.epochs) if self.eval_every is None else self.eval_every

    def evaluates_after(self, epoch: int) -> bool:
        """Whether training evaluates after ``epoch``: every ``eval_interval`` epochs and
        after the last."""
        return epoch % self.eval_interval == 0 or epoch == self.epochs

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, key)
            if key == "eval_every" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr: expected a positive number, got {self.lr!r}")
        if self.score not in SCORES:
            raise ConfigError(f"score: expected one of {', '.join(SCORES)}, got {self.score!r}")
        if not (isinstance(self.device, str) and re.fullmatch(DEVICE_PATTERN, self.device)):
            raise ConfigError(f"device: {DEVICE_RULE}, got {self.device!r}")
        for key in ("bf16", "channels_last", "deterministic"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}: expected true or false, got {getattr(self, key)!r}")
        fraction = self.gpu_memory_fraction
        if fraction is not None and (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0 < fraction <= 1
        ):
            raise ConfigError(
                f"gpu_memory_fraction: expected a number in (0, 1] or null, got {fraction!r}"
            )


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


@torch.inference_mode()
def evaluate_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    score: str,
    batch_size: int,
    device: torch.device,
    keep_maps: bool = True,
) -> dict[str, torch.Tensor]:
    """Batched reconstruction of ``images``: latents, anomaly maps and image scores (CPU).
    In the model's own precision (float32), never under autocast: training and
    ``predict`` score alike."""
    model.eval()
    zs, maps, scores = [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        out = model(x)
        m = anomaly_map(x.float(), out["x_hat"].float(), score)
        zs.append(out["z"].float().cpu())
        scores.append(image_scores(m).cpu())
        if keep_maps:
            maps.append(m.cpu())
    result = {"z": torch.cat(zs), "scores": torch.cat(scores)}
    if keep_maps:
        result["maps"] = torch.cat(maps)
    return result


def _mean(t: torch.Tensor) -> float:
    return float(t.mean()) if len(t) else float("nan")


def _examples(
    model: torch.nn.Module, data: AnomalyDataset, maps: torch.Tensor, n: int, device: torch.device
) -> dict:
    """A few normal and abnormal test images with reconstruction, map and mask."""
    labels = data.test_labels
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:n] for c in (0, 1)])
    model.eval()
    with torch.inference_mode():
        x_hat = model(data.test[idx].to(device))["x_hat"].float().cpu()
    r = lambda t: np.round(t.numpy().astype(np.float32), 2).tolist()  # noqa: E731
    return {
        "index": idx.tolist(),
        "labels": labels[idx].tolist(),
        "inputs": r(data.test[idx]),
        "reconstructions": r(x_hat),
        "anomaly_maps": r(maps[idx]),
        "masks": None if data.test_masks is None else r(data.test_masks[idx]),
    }


STATE_FORMAT = "ae4ad-train-state/1"


@dataclass
class _Clock:
    """A run's timers: when it started (``perf_counter``), seconds of training so far
    and images trained on."""

    started: float
    train_time: float = 0.0
    images_seen: int = 0

    def timers(self, elapsed: float) -> dict:
        """The timers a training state holds."""
        return {
            "train_time_s": self.train_time,
            "images_seen": self.images_seen,
            "elapsed_s": elapsed,
        }


def _autocaster(
    cfg: TrainConfig, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager]:
    """A fresh context for each training forward pass: bf16 autocast on the device when
    ``cfg.bf16`` (CUDA and CPU alike; evaluation always runs in float32)."""

    def autocast() -> contextlib.AbstractContextManager:
        if cfg.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return autocast


def _batching(n: int, batch_size: int) -> tuple[int, int]:
    """Batch size and batches per epoch for ``n`` training images."""
    batch = min(batch_size, n)
    return batch, max(1, n // batch)  # drop the ragged last batch (BatchNorm needs > 1 image)


def fit(
    config: dict | TrainConfig,
    dataset: AnomalyDataset | None = None,
    *,
    start_state: dict | None = None,
    state_out: Callable[[dict, dict], None] | None = None,
) -> Iterator[dict]:
    """Train ``config.model`` on the normal images of ``dataset`` and yield evaluation records.

    ``dataset`` (already loaded) is used when given; otherwise it is loaded from
    ``config.dataset`` / ``config.dataset_params``.

    ``start_state``: a state that ``state_out`` received (or a checkpoint read back
    with :func:`ae4ad.trained.load_checkpoint`): training continues after its epoch,
    with its weights, optimiser state, RNG states and timers. The config must describe
    the same model and training (``epochs``, ``eval_every``, ``device`` and ``threads``
    may differ); raises :class:`ConfigError` otherwise.

    ``state_out(state, record)``: called at every evaluation (not for a diverged run)
    before the record is yielded; the state holds copies of the tensors, on the CPU.

    Device and precision (:mod:`ae4ad.device`): ``device`` is checked first (a device
    the machine lacks is a :class:`ConfigError`); ``deterministic`` trains under
    :func:`ae4ad.device.deterministic_mode`; ``gpu_memory_fraction`` caps the process's
    CUDA memory; ``bf16`` autocasts the training passes only (evaluation is float32);
    ``channels_last`` puts the model and training images in that layout on any device.
    The first record after a resume that could not restore the CUDA RNG states carries
    ``resume_note`` (and a RuntimeWarning says so).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
    cfg.validate()
    with training_process(cfg) as device:
        yield from _fit(cfg, device, dataset, start_state, state_out)


def _fit(
    cfg: TrainConfig,
    device: torch.device,
    dataset: AnomalyDataset | None,
    start_state: dict | None,
    state_out: Callable[[dict, dict], None] | None,
) -> Iterator[dict]:
    """:func:`fit`'s body, run inside :func:`training_process`."""
    generator = seed_everything(cfg.seed)
    data = dataset if dataset is not None else load_dataset(cfg.dataset, **cfg.dataset_params)

    model_params = {"image_size": data.image_size, "in_channels": data.in_channels}
    model_params.update(cfg.model_params)
    model = build_model(cfg.model, **model_params).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, progress, note = 0, {"train_time_s": 0.0, "images_seen": 0, "elapsed_s": 0.0}, None
    if start_state is not None:
        start_epoch, progress, note = _restore(start_state, cfg, model, optimizer, generator)
    autocast = _autocaster(cfg, device)

    train = data.train.to(device).contiguous(memory_format=memory_format)
    batch, n_batches = _batching(len(train), cfg.batch_size)
    clock = _Clock(
        started=time.perf_counter() - float(progress["elapsed_s"]),
        train_time=float(progress["train_time_s"]),
        images_seen=int(progress["images_seen"]),
    )
    base = {"device": str(device), "n_parameters": sum(p.numel() for p in model.parameters())}
    model_spec = {"name": cfg.model, "params": model_params}
    data_spec = dataset_spec(cfg, data)

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        mean_loss = _train_epoch(model, optimizer, train, generator, batch, n_batches, autocast)
        clock.train_time += time.perf_counter() - t0
        clock.images_seen += n_batches * batch
        if not math.isfinite(mean_loss):
            record = _diverged_record(
                epoch, mean_loss, clock.started, clock.train_time, clock.images_seen
            )
        elif cfg.evaluates_after(epoch):
            record = _evaluation_record(model, data, cfg, device, epoch, mean_loss, clock)
            if record["status"] != "diverged" and state_out is not None:
                timers = clock.timers(record["elapsed_s"])
                state = training_state(
                    epoch, cfg, model, optimizer, generator, timers, model_spec, data_spec
                )
                state_out(state, {**base, **record})
        else:
            continue
        if note is not None:  # the first record after a resume says what was not restored
            record["resume_note"], note = note, None
        yield {**base, **record}
        if record["status"] == "diverged":
            return


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: torch.Tensor,
    generator: torch.Generator,
    batch: int,
    n_batches: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> float:
    """One epoch over ``train`` in the order ``generator`` draws; the mean training loss."""
    model.train()
    order = torch.randperm(len(train), generator=generator).to(train.device)
    epoch_loss = torch.zeros((), device=train.device)
    for b in range(n_batches):
        x = train[order[b * batch : (b + 1) * batch]]
        with autocast():
            loss, _ = model.training_loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch_loss += loss.detach().float()
    return float(epoch_loss) / n_batches


def dataset_spec(cfg: TrainConfig, data: AnomalyDataset) -> dict:
    """What a checkpoint records of the data a model was trained on (its preprocessing)."""
    return {
        "name": data.name,
        "source": cfg.dataset,
        "params": dict(cfg.dataset_params),
        "image_size": data.image_size,
        "in_channels": data.in_channels,
        "value_range": [-1.0, 1.0],
    }


def _evaluate(
    model: torch.nn.Module,
    data: AnomalyDataset,
    cfg: TrainConfig,
    device: torch.device,
    is_final: bool,
) -> dict:
    """The metrics of one evaluation, computed in float32 whatever the training precision
    (as :func:`ae4ad.trained.load_trained` scores: a bf16-trained run's scores are the
    ones ``predict`` gives)."""
    ev = lambda images, keep: evaluate_images(  # noqa: E731
        model, images, cfg.score, cfg.eval_batch_size, device, keep_maps=keep
    )
    train_eval = ev(data.train, False)
    test_eval = ev(data.test, True)
    for name, result in (("training", train_eval), ("test", test_eval)):
        if not (torch.isfinite(result["scores"]).all() and torch.isfinite(result["z"]).all()):
            raise _NonFiniteOutput(f"the model's output on the {name} images is not finite")
    labels = data.test_labels
    scores = test_eval["scores"]
    rec: dict = {
        **image_metrics(scores.numpy(), labels.numpy()),
        "mean_score_normal": _mean(scores[labels == 0]),
        "mean_score_abnormal": _mean(scores[labels == 1]),
        "recon_error_train_normal": _mean(train_eval["scores"]),
        "recon_error_test_normal": _mean(scores[labels == 0]),
        "recon_error_test_abnormal": _mean(scores[labels == 1]),
        "recon_error_val_normal": None,
    }
    val_maps = val_masks = None
    if data.val is not None:
        val_eval = ev(data.val, data.val_masks is not None)
        val_labels = data.val_labels if data.val_labels is not None else torch.zeros(len(data.val))
        rec["recon_error_val_normal"] = _mean(val_eval["scores"][val_labels == 0])
        if 0 < int(val_labels.sum()) < len(val_labels):  # a labelled validation split
            val_metrics = image_metrics(val_eval["scores"].numpy(), val_labels.numpy())
            rec["val_auc"], rec["val_ap"] = val_metrics["auc"], val_metrics["ap"]
        if data.val_masks is not None:
            val_maps, val_masks = val_eval["maps"].numpy(), data.val_masks.numpy()
    if data.test_masks is not None:
        rec.update(
            pixel_metrics(test_eval["maps"].numpy(), data.test_masks.numpy(), val_maps, val_masks)
        )
    else:
        rec.update(
            pixel_ap=None, pixel_auc=None, best_dice=None, dice_threshold=None,
            dice_threshold_source=None,
        )  # fmt: skip
    rec.update(latent_statistics(train_eval["z"].numpy()))
    rec["latent_size"] = int(train_eval["z"].shape[1])
    if is_final:
        rec["scores"] = scores.tolist()
        rec["labels"] = labels.tolist()
        rec.update(image_intrinsic_dimension(data.train.numpy()))
        rec["known_dim"] = (data.info or {}).get("known_dim")
        rec["examples"] = _examples(model, data, test_eval["maps"], cfg.n_examples, device)
    return rec


def _evaluation_record(
    model: torch.nn.Module,
    data: AnomalyDataset,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    loss: float,
    clock: _Clock,
) -> dict:
    """The record of the evaluation after ``epoch`` (``loss``: that epoch's mean training
    loss); a ``diverged`` record when the model's output is not finite."""
    is_final = epoch == cfg.epochs
    train_time = clock.train_time
    record = {
        "epoch": epoch,
        "status": "completed" if is_final else "running",
        "is_final": is_final,
        "train_loss": loss,
        "train_time_s": train_time,
        "images_per_s": clock.images_seen / train_time if train_time > 0 else float("nan"),
    }
    try:
        record.update(_evaluate(model, data, cfg, device, is_final))
    except _NonFiniteOutput as exc:
        record = _diverged_record(epoch, loss, clock.started, train_time, clock.images_seen)
        record["error"] = str(exc)
        return record
    record["elapsed_s"] = time.perf_counter() - clock.started
    return record


def _diverged_record(
    epoch: int, loss: float, started: float, train_time: float, images_seen: int
) -> dict:
    nan = float("nan")
    return {
        "epoch": epoch,
        "status": "diverged",
        "is_final": True,
        "train_loss": loss,
        "train_time_s": train_time,
        "images_per_s": images_seen / train_time if train_time > 0 else nan,
        "elapsed_s": time.perf_counter() - started,
        "auc": nan,
        "ap": nan,
        "error": f"training loss became {loss} at epoch {epoch}",
    }


# Config keys a start state may differ in: they do not change what is trained (states
# written before deterministic and gpu_memory_fraction existed lack them).
_RESUMABLE_CHANGES = {
    "epochs", "eval_every", "eval_batch_size", "device", "threads", "n_examples",
    "deterministic", "gpu_memory_fraction",
}  # fmt: skip


def _cpu(value):
    """Copies of the tensors (in nested dicts and lists), on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def rng_states(generator: torch.Generator) -> dict:
    """The RNG states training draws from, as tensors and plain values (so a checkpoint
    loads with ``torch.load(..., weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return states


def set_rng_states(states: dict, generator: torch.Generator) -> str | None:
    """Restore what :func:`rng_states` captured. Returns None, or why the CUDA RNG
    states were not restored (saved for another number of GPUs than this process sees:
    random draws on the GPU then continue from this process's own stream)."""
    torch.set_rng_state(states["torch"].cpu())
    generator.set_state(states["generator"].cpu())
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    cuda = states.get("cuda")
    if not cuda:
        return None
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda) == here:
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        return None
    return (
        f"the CUDA RNG stream was not restored: the checkpoint holds the states of "
        f"{len(cuda)} GPU(s), this process sees {here}; random draws on the GPU (e.g. a "
        "VAE's sampling) continue from a fresh stream, so the resumed run is not "
        "bit-identical to an uninterrupted one"
    )


def training_state(
    epoch: int,
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    timers: dict,
    model_spec: dict,
    data_spec: dict,
) -> dict:
    """Everything :func:`fit` needs to continue after ``epoch``: plain tensors, dicts,
    lists, strings and numbers only.

    Keys: ``format``, ``epoch``, ``model`` (state dict), ``optimizer`` (state dict),
    ``scheduler`` (None: fit keeps the learning rate constant), ``rng``, ``timers``,
    ``config`` (the TrainConfig as a dict), ``model_spec`` (registry name and every
    parameter, image size and channels included) and ``data`` (name, source, params,
    image size, channels and value range of the images the model takes)."""
    return {
        "format": STATE_FORMAT,
        "epoch": int(epoch),
        "model": _cpu(model.state_dict()),
        "optimizer": _cpu(optimizer.state_dict()),
        "scheduler": None,
        "rng": rng_states(generator),
        "timers": dict(timers),
        "config": config_to_dict(cfg),
        "model_spec": {"name": model_spec["name"], "params": dict(model_spec["params"])},
        "data": dict(data_spec),
    }


def _restore(
    state: dict,
    cfg: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, dict, str | None]:
    """Load ``state`` into the freshly built model and optimiser; returns the epoch it
    was taken at, its timers and what of it was not restored (see
    :func:`set_rng_states`; also warned)."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"start_state: expected a {STATE_FORMAT} state, got {found!r}")
    now = config_to_dict(cfg)
    saved = state.get("config") or {}
    canonical = lambda x: json.dumps(x, sort_keys=True, default=str)  # noqa: E731
    for key in sorted(set(saved) | set(now)):
        if key not in _RESUMABLE_CHANGES and canonical(saved.get(key)) != canonical(now.get(key)):
            raise ConfigError(
                f"start_state: its config has {key}={saved.get(key)!r}, this one "
                f"{now.get(key)!r}; a state continues the same training only"
            )
    epoch = int(state["epoch"])
    if epoch >= cfg.epochs:
        raise ConfigError(
            f"start_state: taken at epoch {epoch}, nothing left to train with epochs={cfg.epochs}"
        )
    model.load_state_dict(state["model"])
    # a copy: on the same device Adam would adopt the state's tensors and train them in
    # place, so a second resume from the same state would start from moved moments
    optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    note = set_rng_states(state["rng"], generator)
    if note is not None:
        warnings.warn(f"resume from epoch {epoch}: {note}", RuntimeWarning, stacklevel=2)
    return epoch, dict(state.get("timers") or {}), note


def config_to_dict(cfg: TrainConfig) -> dict:
    """The config as a plain dict (for result tables)."""
    return asdict(cfg)
