"""Tests of the ``folder`` source and its pixel reader: MVTec-style trees with PNG and
16-bit TIFF images and masks, explicit folders, a CSV list, a DICOM series written with
pydicom, the hold-out rule, the cache, every bad input, and the study command line.

All fixtures are generated in tmp_path; images are tiny (16 or 24 px).
"""

from __future__ import annotations

import doctest
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import ae4ad.data  # noqa: F401  (registers the sources)
from ae4ad.data import cache as cache_lib
from ae4ad.data import folder as folder_module
from ae4ad.data import pixels
from ae4ad.data import splits as splits_module
from ae4ad.data.base import DataError, load_dataset
from ae4ad.data.splits import describe_splits

REPO = Path(__file__).resolve().parents[2]
SIZE = 24  # side of the written images


def gray(value: float, top: float = 255.0) -> float:
    """The [-1, 1] value of ``value`` under normalize="fixed" with range 0..top."""
    return 2.0 * value / top - 1.0


def write_png(path: Path, value: int, *, size: int = SIZE, rgb: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if rgb else (size, size)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return path


def write_tiff16(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(arr, dtype=np.uint16))
    return path


def write_mask(path: Path, box=(6, 6, 18, 18), *, size: int = SIZE) -> Path:
    """255 inside ``box`` = (top, left, bottom, right), 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size, size), dtype=np.uint8)
    t, l, b, r = box
    arr[t:b, l:r] = 255
    Image.fromarray(arr).save(path)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
    series: str | None = None,
    number: int = 1,
    pixel_data: bool = True,
) -> Path:
    """A CT image (explicit VR little endian, Part 10 preamble) of uint16 stored values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series or generate_uid()
    ds.InstanceNumber = number
    ds.Modality = "CT"
    ds.PatientID = "phantom"
    if pixel_data:
        stored = np.asarray(stored, dtype=np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = stored.astype("<u2").tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    monkeypatch.delenv("AE4AD_DATA", raising=False)
    monkeypatch.delenv("AE4AD_CACHE", raising=False)
    cache_lib.clear_memory_cache()
    yield
    cache_lib.clear_memory_cache()


def make_mvtec(root: Path, *, test_good: bool = True) -> Path:
    """train/good: 6 constant PNGs (gray 10..60); test/good: 2 (gray 100, 110);
    test/crack: 2 PNGs (gray 200, 210) with PNG masks (square rows/cols 6..17);
    test/scratch: 2 16-bit TIFFs (constant 30000, 40000) with masks named without _mask."""
    for i in range(6):
        write_png(root / "train" / "good" / f"{i:03d}.png", 10 * (i + 1))
    if test_good:
        for i in range(2):
            write_png(root / "test" / "good" / f"{i:03d}.png", 100 + 10 * i)
    for i in range(2):
        write_png(root / "test" / "crack" / f"{i:03d}.png", 200 + 10 * i)
        write_mask(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
        write_tiff16(
            root / "test" / "scratch" / f"{i:03d}.tif", np.full((SIZE, SIZE), 30000 + 10000 * i)
        )
        write_mask(root / "ground_truth" / "scratch" / f"{i:03d}.png", (0, 0, 12, 24))
    return root


@pytest.fixture
def mvtec(tmp_path) -> Path:
    return make_mvtec(tmp_path / "bottle")


def load(root: Path, **params):
    """The folder at ``root``; without a validation split unless ``val_split`` is given
    (the validation splits have their own tests)."""
    params.setdefault("cache_dir", root.parent / "cache")
    params.setdefault("image_size", 12)
    params.setdefault("val_split", "none")
    return load_dataset("folder", root=str(root), **params)


# ----------------------------------------------------------------------------- layout


def test_mvtec_tree_counts_labels_groups_and_masks(mvtec):
    ds = load(mvtec, normalize="fixed")
    assert tuple(ds.train.shape) == (6, 1, 12, 12) and ds.train.dtype == torch.float32
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.info["test_groups"] == ["good", "good", "crack", "crack", "scratch", "scratch"]
    assert ds.info["test_files"][0] == "test/good/000.png"
    assert ds.val is None and ds.info["held_out"] == []
    # 8-bit PNGs on 0..255, 16-bit TIFFs on 0..65535
    assert sorted(float(x[0, 0, 0]) for x in ds.train) == pytest.approx(
        [gray(10 * (i + 1)) for i in range(6)], abs=1e-3
    )  # stored as float16 in the cache
    assert float(ds.test[4].mean()) == pytest.approx(gray(30000, 65535), abs=1e-3)
    assert float(ds.test[5].mean()) == pytest.approx(gray(40000, 65535), abs=1e-3)
    # masks: zero for normal images; the 24 px square rows/cols 6..17 lands on 3..8 at 12 px
    assert ds.has_masks and tuple(ds.test_masks.shape) == (6, 1, 12, 12)
    assert ds.test_masks[:2].sum() == 0
    expected = torch.zeros(12, 12)
    expected[3:9, 3:9] = 1
    assert torch.equal(ds.test_masks[2, 0], expected)
    assert torch.equal(ds.test_masks[3, 0], expected)
    top = torch.zeros(12, 12)
    top[:6, :] = 1
    assert torch.equal(ds.test_masks[4, 0], top)
    s = ds.summary()
    assert (s["n_train"], s["n_test_normal"], s["n_test_abnormal"]) == (6, 2, 4)


def test_minmax_and_percentile_per_image(tmp_path):
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[:, SIZE // 2 :] = 80
    a[0, 0] = 250  # one outlier pixel
    Image.fromarray(a).save(tmp_path / "a.png")
    x = pixels.load_image(tmp_path / "a.png", image_size=SIZE, rgb=False, normalize="minmax")
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert float(x[0, 5, 20]) == pytest.approx(gray(80, 250), abs=1e-6)
    y = pixels.load_image(
        tmp_path / "a.png", image_size=SIZE, rgb=False, normalize="percentile",
        percentiles=(0.0, 99.0),
    )  # fmt: skip
    assert float(y[0, 5, 20]) == 1.0 and float(y[0, 5, 2]) == -1.0


def test_16bit_tiff_and_png_keep_their_precision(tmp_path):
    levels = np.repeat(np.array([0, 1000, 2000], np.uint16), 8)[None].repeat(SIZE, 0)
    write_tiff16(tmp_path / "a.tif", levels)
    Image.fromarray(levels).save(tmp_path / "a.png")  # 16-bit PNG
    for name in ("a.tif", "a.png"):
        x = pixels.load_image(tmp_path / name, image_size=SIZE, rgb=False, normalize="minmax")
        assert [float(x[0, 0, c]) for c in (0, 8, 16)] == [-1.0, 0.0, 1.0]
        f = pixels.load_image(
            tmp_path / name, image_size=SIZE, rgb=False, normalize="fixed",
            value_range=(0, 4000),
        )  # fmt: skip
        assert [float(f[0, 0, c]) for c in (0, 8, 16)] == [-1.0, -0.5, 0.0]


def test_auto_is_fixed_for_8_bit_and_percentile_otherwise(tmp_path):
    a = np.full((SIZE, SIZE), 40, np.uint8)
    a[:, SIZE // 2 :] = 100
    Image.fromarray(a).save(tmp_path / "a8.png")
    write_tiff16(tmp_path / "a16.tif", a.astype(np.uint16) * 10)
    x8 = pixels.load_image(tmp_path / "a8.png", image_size=SIZE, rgb=False)
    assert [float(x8[0, 0, c]) for c in (0, -1)] == pytest.approx([gray(40), gray(100)])
    x16 = pixels.load_image(tmp_path / "a16.tif", image_size=SIZE, rgb=False)
    assert [float(x16[0, 0, c]) for c in (0, -1)] == [-1.0, 1.0]
    r = pixels.load_image(tmp_path / "a16.tif", image_size=SIZE, rgb=False, value_range=(0, 2000))
    assert float(r[0, 0, -1]) == pytest.approx(0.0)  # a value_range makes auto "fixed"


def test_rgb_and_gray_channels(tmp_path):
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    write_png(tmp_path / "g.png", 50)
    x = pixels.load_image(tmp_path / "c.png", image_size=8, rgb=True, normalize="fixed")
    assert x.shape == (3, 8, 8)
    assert [float(x[c].mean()) for c in range(3)] == pytest.approx([gray(200), -1.0, -1.0])
    g = pixels.load_image(tmp_path / "c.png", image_size=8, rgb=False, normalize="fixed")
    assert g.shape == (1, 8, 8) and float(g.mean()) == pytest.approx(gray(0.299 * 200), abs=1e-4)
    r = pixels.load_image(tmp_path / "g.png", image_size=8, rgb=True, normalize="fixed")
    assert r.shape == (3, 8, 8) and float(r.mean()) == pytest.approx(gray(50))


def test_bilinear_resize_of_images(tmp_path):
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[:, SIZE // 2 :] = 255
    Image.fromarray(a).save(tmp_path / "a.png")
    x = pixels.load_image(tmp_path / "a.png", image_size=12, rgb=False)
    row = x[0, 0]
    assert float(row[0]) == -1.0 and float(row[-1]) == 1.0
    assert -1.0 < float(row[5]) < 1.0 or -1.0 < float(row[6]) < 1.0  # blended edge


def test_holdout_when_there_is_no_normal_test_image(tmp_path):
    root = make_mvtec(tmp_path / "bottle", test_good=False)
    ds = load(root, normalize="fixed", seed=3)
    assert len(ds.train) == 5 and ds.test_labels.tolist() == [0, 1, 1, 1, 1]
    assert len(ds.info["held_out"]) == 1 and ds.info["holdout_fraction"] == 0.2
    assert ds.info["test_files"][0] == ds.info["held_out"][0]
    # the held-out image is in the test split and not in training (pixel values differ)
    held = round(float(ds.test[0, 0, 0, 0]), 4)
    train_values = {round(float(v), 4) for v in ds.train[:, 0, 0, 0]}
    assert held not in train_values and len(train_values | {held}) == 6
    # seeded: the same seed holds out the same image; a larger share holds out more
    assert load(root, normalize="fixed", seed=3).info["held_out"] == ds.info["held_out"]
    more = load(root, normalize="fixed", seed=3, holdout_fraction=0.5)
    assert len(more.info["held_out"]) == 3 and len(more.train) == 3
    picks = {tuple(load(root, seed=s).info["held_out"]) for s in range(8)}
    assert len(picks) > 1


def test_explicit_folders(tmp_path):
    root = tmp_path / "mine"
    for i in range(3):
        write_png(root / "ok" / f"n{i}.png", 20 + i)
    write_png(root / "holdout" / "h.png", 90)
    write_png(root / "bad_a" / "a.png", 200)
    write_png(root / "bad_b" / "sub" / "b.png", 220)
    write_mask(root / "masks" / "bad_a" / "a_mask.png")
    write_mask(root / "masks" / "sub" / "b_mask.png")  # without the defect folder
    write_png(root / "valid" / "v.png", 30)
    ds = load(
        root, normal_dir="ok", normal_test_dir="holdout", abnormal_dirs=["bad_a", "bad_b"],
        mask_dir="masks", val_dir="valid", normalize="fixed", val_split="auto",
    )  # fmt: skip
    assert len(ds.train) == 3 and ds.test_labels.tolist() == [0, 1, 1]
    assert ds.info["test_groups"] == ["good", "bad_a", "bad_b"]
    assert ds.test_masks[1:].sum() > 0 and ds.test_masks[0].sum() == 0
    assert len(ds.val) == 1 and ds.val_labels.tolist() == [0] and ds.val_masks is None
    # a single abnormal folder may be given as a string; absolute paths work without root
    ds2 = load_dataset(
        "folder", normal_dir=str(root / "ok"), abnormal_dirs=str(root / "bad_a"),
        image_size=8, cache=False,
    )  # fmt: skip
    assert ds2.test_labels.tolist() == [0, 1] and not ds2.has_masks


def test_mvtec_validation_folder_is_found(mvtec):
    write_png(mvtec / "validation" / "good" / "v0.png", 70)
    ds = load(mvtec, val_split="auto")
    assert len(ds.val) == 1 and ds.info["n_val"] == 1


def test_csv_list(tmp_path):
    root = tmp_path / "csvdata"
    for i in range(4):
        write_png(root / "img" / f"n{i}.png", 10 + i)
    write_png(root / "img" / "t0.png", 100)
    write_png(root / "img" / "a0.png", 200)
    write_png(root / "img" / "a1.png", 210)
    write_png(root / "img" / "v0.png", 120)
    write_mask(root / "m" / "a0.png")
    write_mask(root / "m" / "a1.png", (0, 0, 2, 2))
    (root / "list.csv").write_text(
        "path,label,mask,split,patient\n"
        + "".join(f"img/n{i}.png,0,,,p{i}\n" for i in range(4))
        + "img/t0.png,normal,,test,p9\nimg/a0.png,1,m/a0.png,,p9\n"
        + "img/a1.png,abnormal,m/a1.png,val,p8\nimg/v0.png,0,,val,p7\n"
    )
    ds = load_dataset("folder", csv=str(root / "list.csv"), image_size=12, cache=False)
    assert len(ds.train) == 4 and ds.test_labels.tolist() == [0, 1]
    assert ds.val_labels.tolist() == [1, 0] and ds.val_masks is not None
    assert ds.test_masks[1].sum() == 36 and ds.val_masks[0].sum() == 1
    assert ds.name == "list" and ds.info["csv"].endswith("list.csv")
    # root makes the paths relative to it, and a relative csv too
    ds2 = load_dataset("folder", root=str(root), csv="list.csv", image_size=12, cache=False)
    assert torch.equal(ds2.test, ds.test)


def test_csv_without_normal_test_rows_holds_out(tmp_path):
    root = tmp_path / "c"
    for i in range(5):
        write_png(root / f"n{i}.png", 10 + i)
    write_png(root / "a.png", 200)
    (root / "l.csv").write_text(
        "path,label\n" + "".join(f"n{i}.png,0\n" for i in range(5)) + "a.png,1\n"
    )
    ds = load_dataset(
        "folder", csv=str(root / "l.csv"), image_size=8, cache=False, val_split="none"
    )
    assert len(ds.train) == 4 and ds.test_labels.tolist() == [0, 1]


# ----------------------------------------------------------------------------- DICOM


@pytest.fixture
def dicom_root(tmp_path) -> Path:
    """A CT series (slope 2, intercept -1024): left half -1000 HU, right half 100 + 20 i
    HU; test/good: one such image; test/lesion: two with a 300 HU square at rows 4..11;
    one training file has no extension."""
    root = tmp_path / "ct"
    series = generate_uid()

    def stored(hu: np.ndarray) -> np.ndarray:
        return ((hu + 1024) / 2).astype(np.uint16)

    def image(right: float) -> np.ndarray:
        hu = np.full((16, 16), -1000.0)
        hu[:, 8:] = right
        return hu

    for i in range(4):
        name = f"IM{i:04d}" + ("" if i == 3 else ".dcm")
        write_dicom(root / "train" / "good" / name, stored(image(100 + 20 * i)),
                    slope=2, intercept=-1024, series=series, number=i + 1)  # fmt: skip
    write_dicom(root / "test" / "good" / "g.dcm", stored(image(100)), slope=2, intercept=-1024)
    for i in range(2):
        hu = image(100)
        hu[4:12, 4:12] = 300
        write_dicom(root / "test" / "lesion" / f"l{i}.dcm", stored(hu), slope=2, intercept=-1024)
    return root


def test_dicom_series_rescale_and_window(dicom_root):
    ds = load(dicom_root, image_size=16, window=[0, 400])
    assert len(ds.train) == 4 and ds.test_labels.tolist() == [0, 1, 1]
    x = ds.train[0, 0]  # -1000 HU -> below the window; 100 HU -> (100 + 200) / 400
    assert float(x[0, 0]) == -1.0
    assert float(x[0, 15]) == pytest.approx(2 * 300 / 400 - 1, abs=1e-3)
    hu = sorted(round(float(t[0, 0, 15]), 3) for t in ds.train)
    assert hu == [round(2 * (300 + 20 * i) / 400 - 1, 3) for i in range(4)]
    assert float(ds.test[1, 0, 6, 6]) == 1.0  # 300 HU is above the window
    assert ds.info["normalize"] == "window" and ds.info["window"] == [0.0, 400.0]
    # without a window: a fixed HU range (rescale applied), or per-image min-max
    f = load(dicom_root, image_size=16, normalize="fixed", value_range=[-1024, 1024])
    assert float(f.train[0, 0, 0, 0]) == pytest.approx(24 / 2048 * 2 - 1, abs=1e-3)
    m = load(dicom_root, image_size=16)
    assert float(m.train[0, 0, 0, 0]) == -1.0 and float(m.train[0, 0, 0, 15]) == 1.0


def test_dicom_monochrome1_is_inverted_and_fixed_needs_a_range(tmp_path):
    stored = np.zeros((8, 8), np.uint16)
    stored[:, 4:] = 1000
    write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    x = pixels.load_image(tmp_path / "m1.dcm", image_size=8, rgb=False)
    assert float(x[0, 0, 0]) == 1.0 and float(x[0, 0, 7]) == -1.0
    write_dicom(tmp_path / "r.dcm", stored, slope=2, intercept=-1024)
    with pytest.raises(DataError, match=r"r\.dcm: normalize='fixed' needs value_range"):
        pixels.load_image(tmp_path / "r.dcm", image_size=8, rgb=False, normalize="fixed")


def test_dicom_without_pixel_data(dicom_root):
    bad = write_dicom(dicom_root / "train" / "good" / "report.dcm", None, pixel_data=False)
    with pytest.raises(DataError) as err:
        load(dicom_root, image_size=16)
    assert str(err.value).startswith(f"DICOM file without pixel data: {bad}")


# ----------------------------------------------------------------------------- cache


def test_cache_memory_disk_and_invalidation(mvtec):
    first = load(mvtec)
    assert first.info["cache"] == "built" and Path(first.info["cache_file"]).is_file()
    assert load(mvtec).info["cache"] == "memory"
    cache_lib.clear_memory_cache()
    again = load(mvtec)
    assert again.info["cache"] == "disk" and torch.equal(again.test, first.test)
    assert torch.equal(again.test_masks, first.test_masks)
    # another parameter or a changed file is a new entry
    assert load(mvtec, normalize="percentile").info["cache"] == "built"
    target = mvtec / "train" / "good" / "000.png"
    write_png(target, 77)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load(mvtec).info["cache"] == "built"
    # the default cache folder is <root>/.ae4ad_cache, which the listing skips
    ds = load_dataset("folder", root=str(mvtec), image_size=12)
    assert Path(ds.info["cache_file"]).parent == mvtec / ".ae4ad_cache"
    again = load_dataset("folder", root=str(mvtec), image_size=12, val_split="none")
    assert len(again.train) == 6


# ----------------------------------------------------------------------------- validation


def values(x: torch.Tensor) -> list[float]:
    """The constant value of each image (the fixtures' images are constant), rounded."""
    return [round(float(v), 3) for v in x[:, 0, 0, 0]]


def make_wide(root: Path) -> Path:
    """The mvtec tree with 4 normal test images, 4 cracks and 2 scratches (all distinct
    constant values, so every image can be told apart by its pixels)."""
    make_mvtec(root)
    for i in range(2, 4):
        write_png(root / "test" / "good" / f"{i:03d}.png", 100 + 10 * i)
        write_png(root / "test" / "crack" / f"{i:03d}.png", 200 + 10 * i)
        write_mask(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def test_default_validation_is_held_out_of_the_normal_training_images(mvtec):
    full = load(mvtec, normalize="fixed")
    ds = load(mvtec, normalize="fixed", val_split="auto")
    # 6 training images: round(0.1 * 6) = 1 held out, never trained on, all normal
    assert (len(ds.train), len(ds.val)) == (5, 1) and ds.val_labels.tolist() == [0]
    assert ds.val_masks is None and ds.info["val_split"] == "from_train"
    assert ds.info["val_split_ratio"] == 0.1 and ds.info["n_train"] == 5
    assert ds.info["n_val"] == 1 and ds.info["val_files"][0].startswith("train/good/")
    assert sorted(values(ds.train) + values(ds.val)) == sorted(values(full.train))
    assert not set(values(ds.train)) & set(values(ds.val))
    assert torch.equal(ds.test, full.test)  # the test split is untouched
    assert ds.info["splits"]["val"].startswith("from_train: 10 % of the normal training")
    # seeded: the same seed draws the same image, other seeds others; a larger share more
    assert load(mvtec, val_split="auto").info["val_files"] == ds.info["val_files"]
    drawn = {tuple(load(mvtec, val_split="auto", seed=s).info["val_files"]) for s in range(8)}
    assert len(drawn) > 1
    half = load(mvtec, val_split="from_train", val_split_ratio=0.5)
    assert (len(half.train), len(half.val), half.info["val_split_ratio"]) == (3, 3, 0.5)
    # the cached arrays are not changed by the draw: a load without validation has all 6
    assert len(load(mvtec).train) == 6


def test_from_test_is_labelled_stratified_seeded_and_disjoint(tmp_path):
    root = make_wide(tmp_path / "wide")
    full = load(root, normalize="fixed")
    ds = load(root, normalize="fixed", val_split="from_test")
    assert torch.equal(ds.train, full.train) and ds.info["val_split"] == "from_test"
    # half of each label, spread over the defect kinds: 2 of 4 normal; 3 of 6 abnormal as
    # 2 of 4 cracks and 1 of 2 scratches
    groups = sorted(ds.info["val_groups"])
    assert groups == ["crack", "crack", "good", "good", "scratch"]
    assert ds.val_labels.tolist() == [0 if g == "good" else 1 for g in ds.info["val_groups"]]
    assert sorted(ds.info["test_groups"]) == ["crack", "crack", "good", "good", "scratch"]
    # val and the remaining test images are disjoint and together the original test set
    assert not set(ds.info["val_files"]) & set(ds.info["test_files"])
    assert sorted(ds.info["val_files"] + ds.info["test_files"]) == sorted(full.info["test_files"])
    assert sorted(values(ds.val) + values(ds.test)) == sorted(values(full.test))
    # the tensors follow the file lists: labels and masks travel with their images
    by_file = dict(zip(full.info["test_files"], values(full.test)))
    assert values(ds.val) == [by_file[f] for f in ds.info["val_files"]]
    assert values(ds.test) == [by_file[f] for f in ds.info["test_files"]]
    assert ds.val_masks is not None
    assert [bool(m.sum() > 0) for m in ds.val_masks] == [bool(y) for y in ds.val_labels]
    assert ds.test_labels.tolist() == [0 if g == "good" else 1 for g in ds.info["test_groups"]]
    # seeded, other seeds draw other images, and every draw is stratified alike
    again = load(root, val_split="from_test")
    assert again.info["val_files"] == ds.info["val_files"]
    draws = [load(root, val_split="from_test", seed=s).info for s in range(8)]
    assert len({tuple(d["val_files"]) for d in draws}) > 1
    assert all(sorted(d["val_groups"]) == groups for d in draws)
    text = describe_splits(ds)
    assert text["val"].startswith("2 normal, 3 abnormal: from_test: 50 % of the test images")
    assert text["test"].startswith("2 normal, 3 abnormal: test images")


def test_from_test_with_the_hold_out_and_a_csv(tmp_path):
    # no test/good: the held-out normal images are the normal test images to draw from
    root = make_mvtec(tmp_path / "bottle", test_good=False)
    ds = load(root, val_split="from_test", holdout_fraction=0.5)
    assert len(ds.train) == 3 and len(ds.info["held_out"]) == 3
    # round(0.5 * 3) = 2 of the 3 normal and 2 of the 4 abnormal test images
    assert sorted(ds.val_labels.tolist()) == [0, 0, 1, 1] and ds.test_labels.tolist() == [0, 1, 1]
    held = set(ds.info["held_out"])
    assert {f for f, g in zip(ds.info["val_files"], ds.info["val_groups"]) if g == "good"} < held
    # a CSV without val rows splits the same way
    rows = ["path,label"] + [f"train/good/{i:03d}.png,0" for i in range(6)]
    rows += ["test/good/000.png,0,", "test/good/001.png,0"]
    rows += [f"test/crack/{i:03d}.png,1" for i in range(2)]
    csv_root = make_mvtec(tmp_path / "c")
    (csv_root / "l.csv").write_text("\n".join(r.rstrip(",") for r in rows) + "\n")
    c = load_dataset("folder", csv=str(csv_root / "l.csv"), image_size=8, cache=False,
                     val_split="from_test")  # fmt: skip
    assert c.val_labels.tolist() == [0, 1] and c.test_labels.tolist() == [0, 1]


def test_stratified_pick_keeps_the_shares_of_every_group():
    labels = [0] * 10 + [1] * 12
    groups = ["good"] * 10 + ["a"] * 6 + ["b"] * 4 + ["c"] * 2
    for seed in range(20):
        picked = splits_module.stratified_pick(labels, groups, 0.5, np.random.default_rng(seed))
        assert Counter(groups[i] for i in picked) == {"good": 5, "a": 3, "b": 2, "c": 1}
    # a quarter: 3 of 12 abnormal by largest remainder (a 1.5, b 1.0, c 0.5 -> 2, 1, 0)
    picked = splits_module.stratified_pick(labels, groups, 0.25, np.random.default_rng(0))
    assert Counter(groups[i] for i in picked) == {"good": 2, "a": 2, "b": 1}


def test_a_fit_on_from_test_reports_val_auc_and_the_validation_error(tmp_path):
    from ae4ad.train import fit

    root = make_wide(tmp_path / "wide")
    config = {
        "dataset": "folder", "model": "ae", "epochs": 1, "batch_size": 4,
        "model_params": {"latent_dim": 2, "num_blocks": 2, "hidden_dim": 8, "base_width": 4},
    }  # fmt: skip
    with_val = load(root, val_split="from_test")
    last = list(fit(config, with_val))[-1]
    assert 0.0 <= last["val_auc"] <= 1.0 and 0.0 <= last["val_ap"] <= 1.0
    assert last["recon_error_val_normal"] > 0 and last["dice_threshold_source"] == "val"
    normal_val = list(fit(config, load(root, val_split="from_train")))[-1]
    assert normal_val["recon_error_val_normal"] > 0 and "val_auc" not in normal_val


def test_validation_choices_and_their_errors(tmp_path, mvtec):
    write_png(mvtec / "validation" / "good" / "v0.png", 70)
    assert load(mvtec, val_split="auto").info["val_split"] == "given"
    assert load(mvtec, val_split="auto").info["splits"]["val"].startswith("given: 1 images in")
    none = load(mvtec, val_split="none")
    assert none.val is None and none.info["splits"]["val"] == "none (val_split: none)"
    with pytest.raises(DataError, match="val_split is from_test but the data already name"):
        load(mvtec, val_split="from_test")
    with pytest.raises(DataError, match="val_split_ratio is not used"):
        load(mvtec, val_split="auto", val_split_ratio=0.3)
    shutil.rmtree(mvtec / "validation")
    # too few normal test images to leave one on both sides
    shutil.rmtree(mvtec / "test" / "good")
    write_png(mvtec / "test" / "good" / "only.png", 90)
    with pytest.raises(DataError, match="1 normal item.*use val_split: from_train"):
        load(mvtec, val_split="from_test")
    # one training image: auto makes no validation split and says why; from_train fails
    one = tmp_path / "one"
    write_png(one / "train" / "good" / "a.png", 10)
    write_png(one / "test" / "good" / "b.png", 20)
    write_png(one / "test" / "bad" / "c.png", 200)
    ds = load(one, val_split="auto")
    assert ds.val is None and ds.info["val_split"] == "none"
    assert "only 1 normal training image" in ds.info["splits"]["val"]
    with pytest.raises(DataError, match="from_train needs at least 2 normal training"):
        load(one, val_split="from_train")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"val_split": "from_val"}, "val_split must be one of auto, from_train, from_test"),
        ({"val_split": "auto", "val_split_ratio": 1.0}, r"val_split_ratio must be in \(0, 1\)"),
        ({"val_split": "from_test", "val_split_ratio": True}, "val_split_ratio must be in"),
        ({"val_split": "none", "val_split_ratio": 0.2}, "val_split is none"),
    ],
)
def test_bad_validation_params(mvtec, params, message):
    with pytest.raises(DataError, match=message):
        load(mvtec, **params)


# ----------------------------------------------------------------------------- errors


def test_empty_training_folder(mvtec):
    shutil.rmtree(mvtec / "train" / "good")
    (mvtec / "train" / "good").mkdir()
    (mvtec / "train" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no images in .*train/good \(expected normal training"):
        load(mvtec)


def test_missing_root_and_layout(tmp_path):
    with pytest.raises(DataError, match="data root .*nowhere does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"folder not found: .*empty/train/good"):
        load(tmp_path / "empty")
    with pytest.raises(DataError, match="give root="):
        load_dataset("folder")


def test_no_abnormal_images(mvtec):
    shutil.rmtree(mvtec / "test" / "crack")
    shutil.rmtree(mvtec / "test" / "scratch")
    shutil.rmtree(mvtec / "ground_truth")
    with pytest.raises(DataError, match="no abnormal test images"):
        load(mvtec)


def test_mask_without_its_image(mvtec):
    orphan = write_mask(mvtec / "ground_truth" / "crack" / "007_mask.png")
    with pytest.raises(DataError) as err:
        load(mvtec)
    assert str(err.value).startswith(f"mask without its image: {orphan}")
    assert "007.*" in str(err.value)


def test_abnormal_image_without_mask(mvtec):
    (mvtec / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask for abnormal image .*crack/001\.png"):
        load(mvtec)


def test_unreadable_image(mvtec):
    bad = mvtec / "test" / "crack" / "001.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        load(mvtec)
    write_png(bad, 210)
    tif = mvtec / "test" / "scratch" / "000.tif"
    tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=rf"cannot read TIFF image {tif}"):
        load(mvtec)


def test_file_in_two_splits(mvtec):
    with pytest.raises(DataError, match="is in both the train and the test split"):
        load(mvtec, normal_test_dir="train/good")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"normalize": "zscore"}, "normalize must be one of auto, minmax, percentile, fixed"),
        ({"percentiles": [99, 1]}, "percentiles must be two finite numbers"),
        ({"window": [40, 0]}, "width > 0"),
        ({"holdout_fraction": 1.0}, r"holdout_fraction must be in \(0, 1\)"),
        ({"image_size": 0}, "image_size must be an integer >= 1"),
        ({"csv": "x.csv", "mask_dir": "m"}, "give either csv or folders"),
    ],
)
def test_bad_params(mvtec, params, message):
    with pytest.raises(DataError, match=message):
        load(mvtec, **params)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("file,label\na.png,0\n", "expected a header row path,label"),
        ("path,label\na.png,maybe\n", r"line 2: label must be 0/1"),
        ("path,label,split\na.png,1,train\n", "an abnormal image in the train split"),
        ("path,label,mask\n,1,m.png\n", "line 2: mask without its image: m.png"),
        ("path,label\nmissing.png,0\n", "image file not found"),
        ("path,label\n", "lists no images"),
    ],
)
def test_bad_csv(tmp_path, body, message):
    write_png(tmp_path / "a.png", 10)
    (tmp_path / "l.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        load_dataset("folder", csv=str(tmp_path / "l.csv"), cache=False)


def test_doctests():
    for module in (folder_module, pixels, splits_module):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0


# ----------------------------------------------------------------------------- study


def test_folder_yaml_with_a_generated_tree(mvtec):
    from study.space import load_space

    space = load_space("folder", check_data=False)
    assert space.datasets[0].name == "folder"
    space = load_space("folder", [f"datasets[0].params.root={mvtec}"])
    assert space.datasets[0].params["root"] == str(mvtec)


def test_cli_dry_run_and_data_error_exit_2(mvtec, tmp_path, capsys):
    from study.cli import main

    override = [
        "--override", f"datasets[0].params.root={mvtec}",
        "--override", f"storage_path={tmp_path / 'runs'}",
    ]  # fmt: skip
    assert main(["--space", "folder", *override, "--dry-run"]) == 0
    assert "study folder:" in capsys.readouterr().out
    (mvtec / "test" / "crack" / "001.png").write_bytes(b"broken")
    saved = dict(os.environ)
    try:
        assert main(["--space", "folder", *override]) == 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: folder.yaml: datasets 'folder': cannot read image ")
    assert not (tmp_path / "runs" / "folder").exists()


def test_cli_study_with_from_test_reports_val_auc_and_the_elbow(tmp_path, capsys):
    """The command line on a generated tree with ``val_split: from_test``: every trial
    has val_auc, meta.json and the report's run facts say how the splits were made, and
    the report's elbow prediction is available."""
    import json

    import pandas as pd

    from study.cli import main

    root = make_wide(tmp_path / "wide")
    for i in range(6, 12):
        write_png(root / "train" / "good" / f"{i:03d}.png", 10 * (i + 1))
    override = [
        f"datasets[0].params.root={root}", "datasets[0].params.image_size=16",
        "datasets[0].params.val_split=from_test", "models[0].params.num_blocks=2",
        "models[0].params.latent_dim=[2,4,8]", "models[0].params.hidden_dim=16",
        "models[0].params.base_width=4", "training.epochs=1", "training.batch_size=4",
        f"storage_path={tmp_path / 'runs'}",
    ]  # fmt: skip
    args = ["--space", "folder", "--num-cpus", "2", "--keep-models", "none"]
    # the environment the study set stays: Ray keeps the auth token it started with for
    # the rest of this process, so a later Ray in this process needs the same one
    assert main([*args, *(a for o in override for a in ("--override", o))]) == 0
    out = capsys.readouterr().out
    assert "data folder: validation 2 normal, 3 abnormal: from_test: 50 % of the test" in out
    run = tmp_path / "runs" / "folder"
    trials = pd.read_parquet(run / "trials.parquet")
    assert len(trials) == 3 and trials["val_auc"].between(0, 1).all()
    assert trials["recon_error_val_normal"].gt(0).all()
    splits = json.loads((run / "meta.json").read_text())["data_splits"]["folder"]
    assert splits["test"].startswith("2 normal, 3 abnormal: test images")
    report = (run / "report.html").read_text()
    assert "<h3>Data splits</h3>" in report and "stratified by label and defect kind" in report
    assert "elbow of the validation reconstruction error" in report
    assert "the data set has no validation split" not in report
