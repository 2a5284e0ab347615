"""Shared helpers of the file-based data sources: reading and resizing images, an
on-disk cache of the resized arrays, and the data set's tensors from those arrays
(:func:`split_tensors`).

Images are read with Pillow, converted to grayscale ("L") or "RGB", resized bilinearly to
S x S and kept as uint8 until the end; :func:`to_unit_range` maps them to float32 in [-1, 1].
Masks are binarised (any non-zero pixel is foreground) and resized with nearest neighbour.

The cache stores the uint8 arrays of a loaded data set in one ``.npz`` file whose name
carries a hash of the source name, the parameters that change pixels, and the list of
source files with their sizes and modification times, so editing, adding or removing a
file makes a new cache entry. The file is written atomically (:mod:`ae4ad.atomic`). A
small in-process memo, keyed by the same hash, makes repeated loads in one process free.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from ae4ad.data.cache import load_images, to_unit_range
    >>> d = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.full((20, 30), 255, np.uint8)).save(d / "a.png")
    >>> x = to_unit_range(load_images([d / "a.png"], image_size=8, rgb=False))
    >>> x.shape, float(x.min()), float(x.max())
    ((1, 1, 8, 8), 1.0, 1.0)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ae4ad.atomic import atomic_write
from ae4ad.data.base import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CACHE_FORMAT_VERSION = 1
_MEMO_SIZE = 4
_MEMO: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()


# ----------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike, *, mode: str) -> Image.Image:
    """Open ``path`` fully and convert it to ``mode`` ("L", "RGB" or "mask").

    "mask" returns an "L" image with 0 for background and 255 for every non-zero pixel
    (palette masks: non-zero palette index; colour masks: any non-zero channel).
    16-bit grayscale images are scaled to 8 bits (value / 257).
    Raises :class:`DataError` naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "mask":
                if img.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
                    arr = np.asarray(img.convert("RGB")).max(axis=-1)
                else:
                    arr = np.asarray(img)
                return Image.fromarray(np.where(arr > 0, 255, 0).astype(np.uint8), mode="L")
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.float64) / 257.0
                img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _resized_array(path: Path, image_size: int, mode: str) -> np.ndarray:
    img = read_image(path, mode=mode)
    if img.size != (image_size, image_size):
        resample = Image.NEAREST if mode == "mask" else Image.BILINEAR
        img = img.resize((image_size, image_size), resample=resample)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if mode == "mask":
        arr = (arr > 0).astype(np.uint8)
    return arr


def _n_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _load_many(paths: Sequence[str | os.PathLike], image_size: int, mode: str) -> np.ndarray:
    if image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    channels = 3 if mode == "RGB" else 1
    out = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)
    paths = [Path(p) for p in paths]
    if len(paths) < 16:
        arrays = [_resized_array(p, image_size, mode) for p in paths]
    else:
        with ThreadPoolExecutor(_n_threads()) as pool:
            arrays = list(pool.map(lambda p: _resized_array(p, image_size, mode), paths))
    for i, arr in enumerate(arrays):
        out[i] = arr
    return out


def load_images(
    paths: Sequence[str | os.PathLike], *, image_size: int, rgb: bool = False
) -> np.ndarray:
    """Read and bilinearly resize images: uint8 array N x C x S x S (C = 3 if ``rgb``)."""
    return _load_many(paths, image_size, "RGB" if rgb else "L")


def load_masks(paths: Sequence[str | os.PathLike], *, image_size: int) -> np.ndarray:
    """Read, binarise and nearest-resize masks: uint8 array N x 1 x S x S in {0, 1}."""
    return _load_many(paths, image_size, "mask")


def resize_array(images: np.ndarray, *, image_size: int, rgb: bool) -> np.ndarray:
    """Resize an in-memory uint8 stack (N x H x W or N x H x W x 3) bilinearly and set its
    channels: uint8 array N x C x S x S. Grayscale to RGB repeats the channel; RGB to
    grayscale uses Pillow's "L" conversion (ITU-R 601-2 luma)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"expected uint8 images, got dtype {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"expected images of shape N x H x W or N x H x W x 3, got {images.shape}")
    mode = "RGB" if rgb else "L"
    channels = 3 if rgb else 1
    out = np.empty((len(images), channels, image_size, image_size), dtype=np.uint8)
    for i, arr in enumerate(images):
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        img = Image.fromarray(arr).convert(mode)
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), resample=Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 in [0, 255] -> float32 in [-1, 1] (new array)."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def split_tensors(
    arrays: dict[str, np.ndarray], *, unit_range: bool = False, masks: bool = True
) -> dict[str, torch.Tensor | None]:
    """The split fields of an :class:`~ae4ad.data.base.AnomalyDataset` (``train``,
    ``test``, ``test_labels``, ``test_masks``, ``val``, ``val_labels``, ``val_masks``) from
    loaded arrays of those names; a missing array gives None. Images become float32
    (``unit_range``: uint8 mapped to [-1, 1] by :func:`to_unit_range`), labels int64, masks
    float32 (None for all without ``masks``)."""

    def tensor(k: str, dtype: torch.dtype) -> torch.Tensor | None:
        return torch.tensor(arrays[k], dtype=dtype) if k in arrays else None

    def images(k: str) -> torch.Tensor | None:
        if unit_range and k in arrays:
            return torch.from_numpy(to_unit_range(arrays[k]))
        return tensor(k, torch.float32)

    out: dict[str, torch.Tensor | None] = {}
    for split in ("train", "test", "val"):
        out[split] = images(split)
        if split != "train":
            out[f"{split}_labels"] = tensor(f"{split}_labels", torch.long)
            out[f"{split}_masks"] = tensor(f"{split}_masks", torch.float32) if masks else None
    return out


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) in ``folder``; hidden files and
    folders are skipped. Raises :class:`DataError` if the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder} (expected a folder of images)")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# ----------------------------------------------------------------------------- cache


def file_fingerprint(paths: Iterable[str | os.PathLike], base: str | os.PathLike) -> list:
    """[relative path, size, mtime_ns] of every file (missing files are listed as such)."""
    base = Path(base)
    rows = []
    for p in paths:
        p = Path(p)
        try:
            rel = str(p.relative_to(base))
        except ValueError:
            rel = str(p)
        try:
            st = p.stat()
            rows.append([rel, st.st_size, st.st_mtime_ns])
        except OSError:
            rows.append([rel, -1, -1])
    return rows


def cache_key(source: str, params: dict, files: list) -> str:
    """Hex digest (20 characters) of the source name, pixel-changing params and files."""
    payload = json.dumps(
        {"version": CACHE_FORMAT_VERSION, "source": source, "params": params, "files": files},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def default_cache_dir(root: str | os.PathLike | None) -> Path | None:
    """``$AE4AD_CACHE`` if set, else ``<root>/.ae4ad_cache``, else None (memory only)."""
    env = os.environ.get("AE4AD_CACHE")
    if env:
        return Path(env)
    if root is None:
        return None
    return Path(root) / ".ae4ad_cache"


def clear_memory_cache() -> None:
    """Forget the arrays memoised in this process (the on-disk files stay)."""
    _MEMO.clear()


def _memo_put(key: str, arrays: dict[str, np.ndarray]) -> None:
    _MEMO[key] = arrays
    _MEMO.move_to_end(key)
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez onto ``path`` through :func:`ae4ad.atomic.atomic_write`."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def cached_arrays(
    key: str,
    build: Callable[[], dict[str, np.ndarray]],
    *,
    cache_dir: str | os.PathLike | None,
    prefix: str = "data",
    use_cache: bool = True,
) -> tuple[dict[str, np.ndarray], str, Path | None]:
    """Arrays for ``key``: from the in-process memo, else from ``cache_dir``, else
    ``build()`` (then stored in both). Returns (arrays, where, cache file) with ``where`` one
    of "memory", "disk", "built". An unreadable cache file is rebuilt; a cache folder that
    cannot be written gives a warning and the data are still returned."""
    if not use_cache:
        return build(), "built", None
    path = None if cache_dir is None else Path(cache_dir) / f"{prefix}-{key}.npz"
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key], "memory", path
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            _memo_put(key, arrays)
            return arrays, "disk", path
        except (OSError, ValueError, EOFError) as exc:
            warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=2)
    arrays = build()
    _memo_put(key, arrays)
    if path is not None:
        try:
            save_npz_atomic(path, arrays)
        except OSError as exc:
            warnings.warn(f"could not write cache file {path}: {exc}", stacklevel=2)
            path = None
    return arrays, "built", path
