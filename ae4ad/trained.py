"""Trained models on disk: checkpoints, loading a study's models, scoring new images.

A checkpoint is a folder of two files written with ``torch.save`` (plain tensors,
dicts, lists, strings and numbers only, so both load with ``weights_only=True``):

- ``model.pt``: what scoring needs — the weights, the model's registry name and
  parameters, the images it takes (size, channels, value range, data set), the
  anomaly score and the epoch (:data:`MODEL_FORMAT`);
- ``training_state.pt``: the rest of :func:`ae4ad.train.training_state` — optimiser,
  RNG states, timers, config — which ``fit(start_state=...)`` continues from.

A study keeps ``<run>/models/<trial_id>.pt`` (a ``model.pt``) for the trials
``--keep-models`` keeps; :func:`load_trained` loads one, with the preprocessing of
the data set it was trained on: images are converted to grayscale or RGB as the
model's channels say, resized bilinearly to its size and scaled from [0, 255] to
[-1, 1] (the pipeline of :mod:`ae4ad.data.cache`). ``.npy`` arrays are accepted too:
float arrays are taken as already in [-1, 1] (lossless, e.g. the phantom's images
written by :func:`export_images`), uint8 arrays go through the image pipeline.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from ae4ad.train import fit
    >>> config = {"dataset": "phantom", "model": "ae", "epochs": 1, "seed": 0,
    ...           "dataset_params": {"image_size": 32, "n_train": 64, "n_val": 0,
    ...                              "n_test_normal": 8, "n_test_abnormal": 8},
    ...           "model_params": {"latent_dim": 4, "num_blocks": 3, "hidden_dim": 32}}
    >>> folder = Path(tempfile.mkdtemp())
    >>> records = list(fit(config, state_out=lambda s, r: save_checkpoint(folder, s)))
    >>> trained = load_trained(folder / MODEL_FILE)
    >>> trained.epoch, trained.preprocessing.image_size, trained.preprocessing.in_channels
    (1, 32, 1)
    >>> from ae4ad.data import load_dataset
    >>> data = load_dataset("phantom", **config["dataset_params"])
    >>> scores = trained.score(data.test)["scores"]
    >>> bool(abs(float(scores[0]) - records[-1]["scores"][0]) < 1e-6)
    True
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ae4ad.atomic import atomic_write
from ae4ad.data.base import AnomalyDataset, DataError
from ae4ad.data.cache import IMAGE_EXTENSIONS, to_unit_range
from ae4ad.models import build_model

__all__ = [
    "MODEL_FILE",
    "MODEL_FORMAT",
    "STATE_FILE",
    "Preprocessing",
    "TrainedModel",
    "TrainedModelError",
    "export_images",
    "list_inputs",
    "load_checkpoint",
    "load_trained",
    "model_payload",
    "overlay",
    "save_checkpoint",
]

MODEL_FORMAT = "ae4ad-model/1"
MODEL_FILE = "model.pt"
STATE_FILE = "training_state.pt"
INPUT_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")
_COLOUR_MODES = ("RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


class TrainedModelError(ValueError):
    """A model file or run folder cannot be used: the message names the path."""


# --------------------------------------------------------------------------- files


def model_payload(state: dict) -> dict:
    """The part of a training state (``ae4ad.train.training_state``) that scoring
    needs: weights, model spec, data spec, score and epoch."""
    config = dict(state.get("config") or {})
    return {
        "format": MODEL_FORMAT,
        "epoch": int(state["epoch"]),
        "model_spec": state["model_spec"],
        "state_dict": state["model"],
        "data": state["data"],
        "score": config.get("score", "l2"),
        "eval_batch_size": int(config.get("eval_batch_size", 256)),
        "config": config,
    }


def _atomic_save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(folder: str | os.PathLike, state: dict, extra: dict | None = None) -> Path:
    """Write a training state as ``model.pt`` + ``training_state.pt`` in ``folder``;
    ``extra`` (plain values, e.g. a trial id) is added to ``model.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_save({**model_payload(state), **(extra or {})}, folder / MODEL_FILE)
    _atomic_save({k: v for k, v in state.items() if k != "model"}, folder / STATE_FILE)
    return folder


def _load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    if not path.is_file():
        raise TrainedModelError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing error
        text = " ".join(str(exc).split())[:200]
        raise TrainedModelError(f"cannot read {path}: {type(exc).__name__}: {text}") from None
    if not isinstance(obj, dict):
        raise TrainedModelError(f"{path}: not an ae4ad model or checkpoint file")
    return obj


def load_checkpoint(folder: str | os.PathLike, map_location: str = "cpu") -> dict:
    """A checkpoint folder read back as the training state ``fit(start_state=...)``
    takes (weights only: ``torch.load(..., weights_only=True)``)."""
    folder = Path(folder)
    payload = _load(folder / MODEL_FILE, map_location)
    state = _load(folder / STATE_FILE, map_location)
    if payload.get("format") != MODEL_FORMAT:
        raise TrainedModelError(f"{folder / MODEL_FILE}: not an {MODEL_FORMAT} file")
    if int(state.get("epoch", -1)) != int(payload.get("epoch", -2)):
        raise TrainedModelError(
            f"{folder}: {MODEL_FILE} is of epoch {payload.get('epoch')}, {STATE_FILE} of "
            f"epoch {state.get('epoch')}"
        )
    return {**state, "model": payload["state_dict"]}


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Preprocessing:
    """How images are prepared for a model: channels (1 grayscale, 3 RGB), bilinear
    resize to ``image_size`` and uint8 [0, 255] -> float32 [-1, 1]."""

    image_size: int
    in_channels: int
    value_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def mode(self) -> str:
        return "RGB" if self.in_channels == 3 else "L"

    def _channels_name(self, n: int) -> str:
        return f"{n} channel{'s' if n != 1 else ''} ({'RGB' if n == 3 else 'grayscale'})"

    def _wrong_channels(self, path: Path, found: int) -> DataError:
        return DataError(
            f"{path}: {self._channels_name(found)}, but the model takes "
            f"{self._channels_name(self.in_channels)}"
        )

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """One input file as a float32 tensor C x S x S in [-1, 1]; raises
        :class:`~ae4ad.data.DataError` naming the file when it cannot be used."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix.lower() == ".npy":
            return self._from_array(path)
        try:
            with Image.open(path) as img:
                img.load()
                return self._from_image(path, img)
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            text = " ".join(str(exc).split())[:160]
            raise DataError(f"{path}: cannot read the image ({text})") from None

    def __call__(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Input files as one tensor N x C x S x S."""
        return torch.stack([self.load(p) for p in paths])

    def _from_image(self, path: Path, img: Image.Image) -> torch.Tensor:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img).astype(np.float64) / 257.0
            img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        if img.mode in _COLOUR_MODES:
            rgb = np.asarray(img.convert("RGB"))
            grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
            if self.in_channels == 1 and not grey:
                raise self._wrong_channels(path, 3)
        elif img.mode in _GREY_MODES:
            if self.in_channels == 3:
                raise self._wrong_channels(path, 1)
        else:
            raise DataError(f"{path}: image mode {img.mode!r} is not supported")
        img = img.convert(self.mode)
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), resample=Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(to_unit_range(np.ascontiguousarray(arr)))

    def _from_array(self, path: Path) -> torch.Tensor:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            text = " ".join(str(exc).split())[:160]
            raise DataError(f"{path}: cannot read the array ({text})") from None
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[0] not in (1, 3) and arr.shape[-1] in (1, 3):
            arr = arr.transpose(2, 0, 1)  # H x W x C
        if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
            raise DataError(
                f"{path}: expected a square image array H x W, C x H x W or H x W x C, got "
                f"shape {tuple(arr.shape)}"
            )
        if arr.shape[0] != self.in_channels:
            raise self._wrong_channels(path, int(arr.shape[0]))
        if arr.dtype == np.uint8:
            img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            return self._from_image(path, img)
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"{path}: expected a float array in [-1, 1] or uint8, got {arr.dtype}")
        arr = arr.astype(np.float32)
        low, high = self.value_range
        if not np.isfinite(arr).all() or arr.min() < low - 1e-6 or arr.max() > high + 1e-6:
            raise DataError(
                f"{path}: float arrays must hold values in [{low:g}, {high:g}], found "
                f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
            )
        if arr.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            arr = np.stack(
                [np.asarray(Image.fromarray(c, mode="F").resize(size, Image.BILINEAR)) for c in arr]
            ).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------- models


@dataclass
class TrainedModel:
    """A trained model ready to score images: ``model`` (in eval mode), its
    ``preprocessing``, the anomaly ``score`` it was evaluated with, its ``epoch``, the
    training ``config`` and the ``data`` it was trained on."""

    model: torch.nn.Module
    preprocessing: Preprocessing
    score_name: str
    epoch: int
    config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    path: Path | None = None
    trial_id: str | None = None
    batch_size: int = 256
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads: int | None = None

    def score(self, images: torch.Tensor, keep_maps: bool = True) -> dict[str, np.ndarray]:
        """Anomaly ``scores`` (N) and ``maps`` (N x 1 x S x S) of preprocessed images,
        computed exactly as training evaluates (batched, inference mode, float32, with the
        trial's torch threads and deterministic setting: the run's very numbers on the
        same machine)."""
        from ae4ad.device import deterministic_mode
        from ae4ad.train import evaluate_images

        if images.ndim != 4 or tuple(images.shape[1:]) != (
            self.preprocessing.in_channels,
            self.preprocessing.image_size,
            self.preprocessing.image_size,
        ):
            p = self.preprocessing
            raise DataError(
                f"expected images N x {p.in_channels} x {p.image_size} x {p.image_size}, "
                f"got {tuple(images.shape)}"
            )
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:  # with the run's precision settings (TF32 off in deterministic mode)
            with deterministic_mode(bool(self.config.get("deterministic"))):
                out = evaluate_images(
                    self.model,
                    images,
                    self.score_name,
                    self.batch_size,
                    self.device,
                    keep_maps=keep_maps,
                )
        finally:
            torch.set_num_threads(previous)
        result = {"scores": out["scores"].numpy()}
        if keep_maps:
            result["maps"] = out["maps"].numpy()
        return result

    def score_files(self, paths: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
        """Read, preprocess and score files (images or ``.npy`` arrays)."""
        images = self.preprocessing(paths)
        return {"images": images.numpy(), **self.score(images)}


def load_trained(
    run_dir: str | os.PathLike,
    trial_id: str | None = None,
    device: str | torch.device = "cpu",
) -> TrainedModel:
    """The model a study kept for ``trial_id`` (``<run_dir>/models/<trial_id>.pt``),
    or, without ``trial_id``, the model file or checkpoint folder ``run_dir`` names.
    Loads weights only (``torch.load(..., weights_only=True)``).

    ``device``: ``cpu``, ``cuda``, ``cuda:<index>`` or ``auto`` (a GPU when PyTorch sees
    one); the file is read on the CPU and the model moved there, so a model trained on a
    GPU loads on any machine.

    Raises :class:`TrainedModelError` naming the path when there is no such model, and
    for a device this machine lacks."""
    from ae4ad.device import resolve_device
    from ae4ad.train import ConfigError

    try:
        device = resolve_device(str(device))
    except ConfigError as exc:
        raise TrainedModelError(str(exc)) from None
    base = Path(run_dir)
    if trial_id is not None:
        path = base / "models" / f"{trial_id}.pt"
        if not path.is_file():
            models = sorted(p.stem for p in (base / "models").glob("*.pt"))
            kept = ", ".join(models[:6]) + (", ..." if len(models) > 6 else "")
            raise TrainedModelError(
                f"{base}: no model kept for trial {trial_id!r} (models/{trial_id}.pt is "
                f"missing; {'kept: ' + kept if models else 'the run kept no models'})"
            )
    elif base.is_dir():
        path = base / MODEL_FILE
    else:
        path = base
    payload = _load(path)
    if payload.get("format") != MODEL_FORMAT:
        raise TrainedModelError(f"{path}: not an {MODEL_FORMAT} file")
    spec, data = payload["model_spec"], payload["data"]
    try:
        model = build_model(spec["name"], **spec["params"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise TrainedModelError(f"{path}: the weights do not fit the model ({text})") from None
    model = model.to(device).eval()
    if (payload.get("config") or {}).get("channels_last"):  # the layout it was evaluated in
        model = model.to(memory_format=torch.channels_last)
    low, high = data.get("value_range", (-1.0, 1.0))
    return TrainedModel(
        model=model,
        preprocessing=Preprocessing(
            int(data["image_size"]), int(data["in_channels"]), (float(low), float(high))
        ),
        score_name=str(payload.get("score", "l2")),
        epoch=int(payload["epoch"]),
        config=dict(payload.get("config") or {}),
        data=dict(data),
        path=path,
        trial_id=trial_id if trial_id is not None else payload.get("trial_id"),
        batch_size=int(payload.get("eval_batch_size", 256)),
        device=device,
        threads=int(payload["config"]["threads"])
        if payload.get("config", {}).get("threads")
        else None,
    )


# --------------------------------------------------------------------------- files in, files out


def list_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The input files named by ``paths``: files as given, folders searched
    recursively for images and ``.npy`` arrays (sorted, hidden files skipped)."""
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            found += sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in INPUT_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found


def export_images(
    dataset: AnomalyDataset, folder: str | os.PathLike, split: str = "test", fmt: str = "npy"
) -> list[Path]:
    """Write one split of a data set as files, with ``labels.csv`` (file, label).

    ``fmt="npy"`` writes float32 C x S x S arrays in [-1, 1]: lossless, so scoring them
    gives the very scores of the run. ``fmt="png"`` writes 8-bit images (rounded, so
    scores differ slightly)."""
    if split not in ("test", "val", "train"):
        raise DataError(f"split: expected test, val or train, got {split!r}")
    if fmt not in ("npy", "png"):
        raise DataError(f"format: expected npy or png, got {fmt!r}")
    images = getattr(dataset, split)
    if images is None:
        raise DataError(f"{dataset.name}: has no {split} split")
    labels = {
        "test": dataset.test_labels,
        "val": dataset.val_labels,
        "train": torch.zeros(len(images), dtype=torch.long),
    }[split]
    if labels is None:
        labels = torch.zeros(len(images), dtype=torch.long)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(images) - 1)))
    written = []
    rows = []
    for i, (x, label) in enumerate(zip(images.numpy(), labels.tolist())):
        name = f"{split}_{i:0{width}d}.{fmt}"
        if fmt == "npy":
            np.save(folder / name, x.astype(np.float32))
        else:
            u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
            Image.fromarray(u8[0] if u8.shape[0] == 1 else u8.transpose(1, 2, 0)).save(
                folder / name
            )
        written.append(folder / name)
        rows.append((name, int(label)))
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)
    return written


# Anchor colours of the heat map (dark purple -> red -> yellow, like "inferno").
_HEAT = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)


def _heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (H x W x 3)."""
    v = np.clip(values, 0.0, 1.0) * (len(_HEAT) - 1)
    i = np.minimum(v.astype(int), len(_HEAT) - 2)
    t = (v - i)[..., None]
    return np.rint(_HEAT[i] * (1 - t) + _HEAT[i + 1] * t).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float, scale: int = 1) -> Image.Image:
    """A PNG-ready picture of one image (C x S x S in [-1, 1]) beside its anomaly map
    (1 x S x S) drawn as a heat map over it; map values are scaled by ``vmax`` (0 ->
    transparent, >= vmax -> the hottest colour at 70 % opacity)."""
    grey = np.clip((image.mean(axis=0) + 1.0) * 127.5, 0, 255)
    if image.shape[0] == 3:
        base = np.clip((image.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255)
    else:
        base = np.repeat(grey[..., None], 3, axis=-1)
    level = np.asarray(amap, dtype=np.float64).reshape(grey.shape) / max(float(vmax), 1e-12)
    alpha = 0.7 * np.clip(level, 0.0, 1.0)[..., None]
    mixed = base * (1 - alpha) + _heat(level).astype(np.float64) * alpha
    picture = np.concatenate([base, np.full((grey.shape[0], 2, 3), 255.0), mixed], axis=1)
    img = Image.fromarray(np.rint(picture).astype(np.uint8), mode="RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), resample=Image.NEAREST)
    return img
