"""Reading image files at their full bit depth, for the ``folder`` and ``nifti`` sources.

Unlike :mod:`ae4ad.data.cache` (8-bit throughout, as the MedIAnomaly PNGs are), these
helpers keep every value a file holds: 16-bit PNG and TIFF stay 16-bit, DICOM pixel data
go through the modality LUT (rescale slope and intercept) to physical values (e.g.
Hounsfield units), and intensity is mapped to [-1, 1] only at the end, on float32:

1. :func:`read_pixels` decodes one file to a float32 array H x W or H x W x 3:
   PNG, JPEG, BMP with Pillow; TIFF with ``tifffile`` (any page-0 dtype, falling back to
   Pillow); DICOM with ``pydicom`` (``.dcm``, ``.dicom``, or any file with the ``DICM``
   marker at byte 128).
2. :func:`to_channels` makes it C x H x W (C = 1, or 3 with ``rgb``; RGB to gray is the
   ITU-R 601-2 luma, gray to RGB repeats the channel; an alpha channel is dropped).
3. :func:`resize_planes` resizes bilinearly (Pillow, float32 "F" planes);
   :func:`resize_mask` with nearest neighbour.
4. :func:`normalize_unit` maps to [0, 1]: a DICOM-style ``window`` (center, width), else
   ``"minmax"`` (per image), ``"percentile"`` (per image, clipped at ``percentiles``),
   ``"fixed"`` (``value_range``, default the file type's range, 0..255 or 0..65535) or
   ``"auto"``: "fixed" for 8-bit files (as the other sources: value / 127.5 - 1),
   "percentile" for everything else (16-bit, float, DICOM), whose range is not standard.
   MONOCHROME1 DICOM and min-is-white TIFF are inverted after this step.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from ae4ad.data.pixels import load_image
    >>> d = Path(tempfile.mkdtemp())
    >>> a = np.zeros((20, 20), np.uint16); a[:, 10:] = 1000
    >>> Image.fromarray(a).save(d / "a.png")
    >>> x = load_image(d / "a.png", image_size=4, rgb=False)  # 16 bit: percentiles 1, 99
    >>> x.shape, float(x.min()), float(x.max())
    ((1, 4, 4), -1.0, 1.0)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ae4ad.data.base import DataError

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = PILLOW_SUFFIXES + TIFF_SUFFIXES + DICOM_SUFFIXES
NORMALIZE_MODES = ("auto", "minmax", "percentile", "fixed")
KINDS = "PNG, JPEG, BMP, TIFF or DICOM"


@dataclass
class Pixels:
    """A decoded image: ``array`` float32 H x W or H x W x C (C = 3 or 4); ``type_max`` the
    largest value of the file's unsigned integer type (255, 65535) or None; ``invert`` for
    images where a larger value is darker (DICOM MONOCHROME1, TIFF min-is-white)."""

    array: np.ndarray
    type_max: float | None = None
    invert: bool = False


# ----------------------------------------------------------------------------- listing


def has_dicom_marker(path: Path) -> bool:
    """Whether bytes 128..131 of ``path`` are ``DICM`` (the DICOM Part 10 preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_image_file(path: Path) -> bool:
    """An image by suffix (case-insensitive), or an extension-less DICOM file."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and has_dicom_marker(path)


def list_image_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Sorted image files in ``folder`` (and its subfolders when ``recursive``); hidden
    files and folders (names starting with ``.``) are skipped. Raises :class:`DataError`
    when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder} (expected a folder of images)")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
        and is_image_file(p)
    )


# ----------------------------------------------------------------------------- reading


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or (path.suffix == "" and has_dicom_marker(path))


def _unsigned_max(dtype: np.dtype) -> float | None:
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.unsignedinteger):
        return float(np.iinfo(dtype).max)
    return None


def _read_dicom(path: Path, raw: bool) -> Pixels:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise DataError(f"reading DICOM file {path} needs pydicom: pip install pydicom") from exc
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)  # Part 10 files without the preamble
    except Exception as exc:
        raise DataError(f"cannot read DICOM file {path}: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(
            f"DICOM file without pixel data: {path} (expected an image; found "
            f"{getattr(ds, 'Modality', 'no')} modality, SOP class "
            f"{getattr(ds, 'SOPClassUID', 'unknown')})"
        )
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DataError(
            f"cannot decode the pixel data of DICOM file {path}: {exc} (compressed "
            "transfer syntaxes may need pylibjpeg or gdcm)"
        ) from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(
            f"DICOM file {path} holds {frames} frames; expected a single 2-D image "
            "(give one file per slice)"
        )
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    type_max = _unsigned_max(arr.dtype)
    if samples == 1 and not raw:
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pragma: no cover - pydicom < 3
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        try:
            out = np.asarray(apply_modality_lut(arr, ds))
        except Exception as exc:
            raise DataError(f"cannot apply the modality LUT of DICOM file {path}: {exc}") from exc
        if (
            float(getattr(ds, "RescaleSlope", 1) or 1) != 1
            or float(getattr(ds, "RescaleIntercept", 0) or 0) != 0
            or "ModalityLUTSequence" in ds
        ):
            type_max = None  # values are physical units now (e.g. HU)
        arr = out
    return Pixels(
        np.asarray(arr, dtype=np.float32),
        type_max=type_max,
        invert=samples == 1 and photometric == "MONOCHROME1",
    )


def _read_pillow(path: Path, raw: bool) -> Pixels:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if raw and mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                arr = np.asarray(img)
            elif mode in ("1", "L", "LA", "La"):
                arr = np.asarray(img.convert("L"))
            elif mode.startswith("I;16") or mode in ("I", "F"):
                arr = np.asarray(img)
            else:  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV
                arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    type_max = _unsigned_max(arr.dtype)
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        type_max = 65535.0  # 16-bit PNG opened as mode "I"
    return Pixels(np.asarray(arr, dtype=np.float32), type_max=type_max)


def _read_tiff(path: Path, raw: bool) -> Pixels:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr = np.asarray(page.asarray())
            invert = int(page.photometric) == 0  # MINISWHITE
            planar = int(getattr(page, "planarconfig", 1)) == 2
    except Exception as tiff_exc:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow on a broken file: "Corrupt EXIF"
                return _read_pillow(path, raw)
        except DataError:
            raise DataError(f"cannot read TIFF image {path}: {tiff_exc}") from tiff_exc
    arr = np.squeeze(arr)
    if arr.ndim == 3 and (planar or (arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4))):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise DataError(
            f"TIFF image {path} has shape {arr.shape}; expected H x W or H x W x 3 (page 0 is read)"
        )
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        arr = arr[..., 0]
    if np.iscomplexobj(arr):
        raise DataError(f"TIFF image {path} holds complex values; expected real intensities")
    return Pixels(
        np.asarray(arr, dtype=np.float32), type_max=_unsigned_max(arr.dtype), invert=invert
    )


def read_pixels(path: str | os.PathLike, *, raw: bool = False) -> Pixels:
    """Decode ``path`` by its kind (suffix, or the DICOM marker). ``raw``: DICOM stored
    values without the modality LUT and palette indices of "P" images (for masks).
    Raises :class:`DataError` naming the file when it is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    suffix = path.suffix.lower()
    if _is_dicom(path):
        return _read_dicom(path, raw)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path, raw)
    return _read_pillow(path, raw)


# ----------------------------------------------------------------------------- shaping


def to_channels(arr: np.ndarray, rgb: bool) -> np.ndarray:
    """H x W or H x W x C -> float32 C x H x W with C = 3 (``rgb``) or 1."""
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        planes = np.repeat(arr[None], 3, axis=0) if rgb else arr[None]
    else:
        planes = np.moveaxis(arr, -1, 0)
        if not rgb:
            luma = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
            planes = np.tensordot(luma, planes.astype(np.float32), axes=1)[None]
    return np.ascontiguousarray(planes, dtype=np.float32)


def resize_planes(planes: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear resize of each C x H x W float plane to S x S (Pillow, mode "F")."""
    if planes.shape[-2:] == (image_size, image_size):
        return planes.astype(np.float32, copy=False)
    out = np.empty((planes.shape[0], image_size, image_size), dtype=np.float32)
    for c, plane in enumerate(planes):
        img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
        out[c] = np.asarray(img.resize((image_size, image_size), resample=Image.BILINEAR))
    return out


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Boolean-like H x W -> uint8 1 x S x S in {0, 1}, nearest neighbour."""
    img = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), resample=Image.NEAREST)
    return (np.asarray(img) > 0).astype(np.uint8)[None]


def check_int(name: str, value, low: int) -> int:
    """``value`` if it is an int (not a bool) >= ``low``, else a :class:`DataError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DataError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_percentiles(value) -> tuple[float, float]:
    """Two percentiles 0 <= low < high <= 100 as a float tuple."""
    pair = check_pair("percentiles", value)
    if not (0.0 <= pair[0] and pair[1] <= 100.0):
        raise DataError(f"percentiles must lie in [0, 100], got {list(pair)}")
    return pair


def check_pair(name: str, value, *, increasing: bool = True) -> tuple[float, float] | None:
    """None, or two finite numbers (low < high when ``increasing``) as a float tuple."""
    if value is None:
        return None
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(np.isfinite(pair)) or (increasing and pair[0] >= pair[1]):
        order = "low < high" if increasing else "two numbers"
        raise DataError(f"{name} must be two finite numbers ({order}), got {value!r}")
    return pair


def normalize_unit(
    planes: np.ndarray,
    *,
    normalize: str = "auto",
    percentiles: tuple[float, float] = (1.0, 99.0),
    value_range: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    type_max: float | None = None,
    where: str | os.PathLike = "image",
) -> np.ndarray:
    """Map ``planes`` (float32) to [0, 1] (see the module docstring); a constant image
    becomes all 0 under "minmax" and "percentile"."""
    if normalize == "auto" and window is None:
        fixed = value_range is not None or type_max in (1.0, 255.0)
        normalize = "fixed" if fixed else "percentile"
    if window is not None:
        center, width = window
        lo, hi = center - width / 2.0, center + width / 2.0
    elif normalize == "fixed":
        if value_range is not None:
            lo, hi = value_range
        elif type_max is not None:
            lo, hi = 0.0, type_max
        else:
            raise DataError(
                f"{where}: normalize='fixed' needs value_range=[low, high] for this image "
                "(its values are not 8- or 16-bit unsigned integers, e.g. rescaled DICOM)"
            )
    elif normalize == "percentile":
        lo, hi = (float(v) for v in np.percentile(planes, percentiles))
    else:
        lo, hi = float(planes.min()), float(planes.max())
    if hi <= lo:
        return np.zeros_like(planes, dtype=np.float32)
    out = (planes - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- loading


def load_image(
    path: str | os.PathLike,
    *,
    image_size: int,
    rgb: bool,
    normalize: str = "auto",
    percentiles: tuple[float, float] = (1.0, 99.0),
    value_range: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Read, resize (bilinear) and normalise one image: float32 C x S x S in [-1, 1]."""
    px = read_pixels(path)
    if px.array.size == 0:
        raise DataError(f"image {path} is empty (shape {px.array.shape})")
    planes = resize_planes(to_channels(px.array, rgb), image_size)
    unit = normalize_unit(
        planes,
        normalize=normalize,
        percentiles=percentiles,
        value_range=value_range,
        window=window,
        type_max=px.type_max,
        where=path,
    )
    if px.invert:
        unit = 1.0 - unit
    return unit * np.float32(2.0) - np.float32(1.0)


def load_mask(path: str | os.PathLike, *, image_size: int) -> np.ndarray:
    """Read a mask (any pixel non-zero in any channel is foreground; DICOM stored values,
    palette indices), resize with nearest neighbour: uint8 1 x S x S in {0, 1}."""
    arr = read_pixels(path, raw=True).array
    if arr.ndim == 3:
        arr = np.abs(arr).max(axis=-1)
    return resize_mask(arr != 0, image_size)


def n_threads(limit: int = 8) -> int:
    return max(1, min(limit, os.cpu_count() or 1))


def map_files(fn: Callable, items: Sequence, *, limit: int = 8) -> list:
    """``[fn(x) for x in items]``, on a thread pool when there are many items."""
    if len(items) < 16 or n_threads(limit) == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(n_threads(limit)) as pool:
        return list(pool.map(fn, items))
