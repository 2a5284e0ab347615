"""Tests of the file-based data sources: medianomaly (every folder layout), the on-disk
cache, medmnist and digits.

Fixture trees are written to tmp_path. Every image is a constant gray level so a test can
tell which file ended up where (the ``value`` argument of the writers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ae4ad.data  # noqa: F401  (registers the sources)
from ae4ad.data import cache as cache_lib
from ae4ad.data.base import DataError, load_dataset


def write_image(path: Path, value: int, size: tuple[int, int] = (24, 20), rgb: bool = False):
    """Constant image (width x height = ``size``), PNG or JPEG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if rgb else (size[1], size[0])
    arr = np.full(shape, value, dtype=np.uint8)
    kwargs = {"quality": 100} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(arr).save(path, **kwargs)
    return path


def write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (24, 24)):
    """Mask PNG with 255 inside ``box`` = (top, left, bottom, right), 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    t, l, b, r = box
    arr[t:b, l:r] = 255
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No data or cache folder from the environment, and an empty in-process memo."""
    monkeypatch.delenv("AE4AD_DATA", raising=False)
    monkeypatch.delenv("AE4AD_CACHE", raising=False)
    cache_lib.clear_memory_cache()
    yield
    cache_lib.clear_memory_cache()


@pytest.fixture
def json_root(tmp_path) -> Path:
    """root/RSNA: 4 normal training PNGs (gray 10..40), test: 2 normal JPEGs (gray 100,
    110) and 2 abnormal PNGs (gray 200, 210)."""
    folder = tmp_path / "data" / "RSNA"
    images = folder / "images"
    train = [write_image(images / f"n{i}.png", 10 * (i + 1)).name for i in range(4)]
    test0 = [write_image(images / f"t{i}.jpg", 100 + 10 * i).name for i in range(2)]
    test1 = [write_image(images / f"a{i}.png", 200 + 10 * i).name for i in range(2)]
    spec = {"train": {"0": train}, "test": {"0": test0, "1": test1}}
    (folder / "data.json").write_text(json.dumps(spec))
    return tmp_path / "data"


@pytest.fixture
def brats_root(tmp_path) -> Path:
    """root/BraTS2021: 3 training slices, 2 normal and 2 tumor test slices with masks."""
    folder = tmp_path / "data" / "BraTS2021"
    for i in range(3):
        write_image(folder / "train" / f"BraTS_{i}_flair_60.png", 50, size=(24, 24))
    for i in range(2):
        write_image(folder / "test" / "normal" / f"BraTS_1{i}_flair_5.png", 60, size=(24, 24))
        write_image(folder / "test" / "tumor" / f"BraTS_2{i}_flair_70.png", 90, size=(24, 24))
        write_mask(folder / "test" / "annotation" / f"BraTS_2{i}_seg_70.png", (0, 0, 12, 12))
    return tmp_path / "data"


@pytest.fixture
def camelyon_root(tmp_path) -> Path:
    folder = tmp_path / "data" / "Camelyon16"
    write_image(folder / "train" / "good" / "p0.png", 120, rgb=True)
    write_image(folder / "train" / "good" / "p1.jpg", 130, rgb=True)
    write_image(folder / "test" / "good" / "g0.png", 140, rgb=True)
    write_image(folder / "test" / "Ungood" / "u0.jpeg", 240, rgb=True)
    write_image(folder / "test" / "Ungood" / "u1.png", 250, rgb=True)
    return tmp_path / "data"


ISIC_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"


def isic_rows(rows: list[tuple[str, str]]) -> str:
    """CSV text: ``rows`` of (image id, class), one-hot as the official files (floats)."""
    classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    lines = [ISIC_HEADER]
    for image_id, cls in rows:
        onehot = ",".join("1.0" if c == cls else "0.0" for c in classes)
        lines.append(f"{image_id},{onehot}\n")
    return "".join(lines)


def write_isic_part(folder: Path, part: str, rows: list[tuple[str, str]], value: int) -> None:
    for image_id, cls in rows:
        write_image(
            folder / f"ISIC2018_Task3_{part}_Input" / f"{image_id}.jpg",
            value if cls == "NV" else 255 - value,
        )
    gt = folder / f"ISIC2018_Task3_{part}_GroundTruth"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / f"ISIC2018_Task3_{part}_GroundTruth.csv").write_text(isic_rows(rows))


@pytest.fixture
def isic_root(tmp_path) -> Path:
    """root/ISIC2018_Task3 with Training (3 NV, 2 other) and Test (2 NV, 3 other)."""
    folder = tmp_path / "data" / "ISIC2018_Task3"
    train = [("ISIC_0000000", "NV"), ("ISIC_0000001", "MEL"), ("ISIC_0000002", "NV")]
    train += [("ISIC_0000003", "BKL"), ("ISIC_0000004", "NV")]
    test = [("ISIC_0034524", "NV"), ("ISIC_0034525", "BCC"), ("ISIC_0034526", "DF")]
    test += [("ISIC_0034527", "NV"), ("ISIC_0034528", "VASC")]
    write_isic_part(folder, "Training", train, 30)
    write_isic_part(folder, "Test", test, 40)
    return tmp_path / "data"


def make_npz(path: Path, rgb: bool = False, size: int = 28, n_classes: int = 3) -> Path:
    """MedMNIST-style npz; the gray level of an image is 20 * its label."""
    arrays = {}
    for split, n in (("train", 12), ("val", 6), ("test", 9)):
        labels = (np.arange(n) % n_classes).reshape(n, 1).astype(np.uint8)
        shape = (n, size, size, 3) if rgb else (n, size, size)
        images = np.broadcast_to((20 * labels[:, 0]).reshape((n,) + (1,) * (len(shape) - 1)), shape)
        arrays[f"{split}_images"] = np.ascontiguousarray(images, dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def gray(value: float) -> float:
    """The [-1, 1] value of an 8-bit gray level."""
    return value / 127.5 - 1.0


def load(root: Path, dataset: str, **params):
    params.setdefault("cache_dir", root.parent / "cache")
    return load_dataset("medianomaly", dataset=dataset, root=root, **params)


def assert_images(x: torch.Tensor, n: int, channels: int, size: int) -> None:
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (n, channels, size, size)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


# ----------------------------------------------------------------------------- layouts


def test_json_layout_loads_splits_in_order(json_root):
    ds = load(json_root, "RSNA", image_size=16)
    assert ds.name == "RSNA"
    assert_images(ds.train, 4, 1, 16)
    assert_images(ds.test, 4, 1, 16)
    assert ds.test_labels.tolist() == [0, 0, 1, 1]
    assert ds.test_labels.dtype == torch.long
    assert ds.test_masks is None and ds.val is None
    # constant images keep their gray level through resizing; JSON order is kept
    train_levels = ds.train.mean(dim=(1, 2, 3))
    assert torch.allclose(
        train_levels, torch.tensor([gray(v) for v in (10, 20, 30, 40)]), atol=1e-5
    )
    test_levels = ds.test.mean(dim=(1, 2, 3))
    assert torch.allclose(
        test_levels, torch.tensor([gray(v) for v in (100, 110, 200, 210)]), atol=0.02
    )


def test_json_layout_rgb_and_short_name(json_root):
    ds = load(json_root, "rsna", image_size=8, rgb=True)
    assert_images(ds.train, 4, 3, 8)
    assert torch.allclose(ds.train[:, 0], ds.train[:, 2])


def test_json_layout_optional_val_split(json_root):
    folder = json_root / "RSNA"
    spec = json.loads((folder / "data.json").read_text())
    write_image(folder / "images" / "v0.png", 70)
    write_image(folder / "images" / "v1.png", 230)
    spec["val"] = {"0": ["v0.png"], "1": ["v1.png"]}
    (folder / "data.json").write_text(json.dumps(spec))
    ds = load(json_root, "RSNA", image_size=8)
    assert_images(ds.val, 2, 1, 8)
    assert ds.val_labels.tolist() == [0, 1]


def test_brats_layout_masks(brats_root):
    ds = load(brats_root, "BraTS2021", image_size=12)
    assert_images(ds.train, 3, 1, 12)
    assert_images(ds.test, 4, 1, 12)
    assert ds.test_labels.tolist() == [0, 0, 1, 1]
    masks = ds.test_masks
    assert tuple(masks.shape) == (4, 1, 12, 12)
    assert set(torch.unique(masks).tolist()) == {0.0, 1.0}
    assert masks[:2].sum() == 0  # normal slices: all-zero masks
    # the 24 px mask is 1 in its top-left 12 x 12 quarter -> 6 x 6 at 12 px
    for m in masks[2:]:
        assert m[0, :6, :6].min() == 1 and m.sum() == 36
    assert ds.has_masks and ds.summary()["n_test_abnormal"] == 2


def test_brats_accepts_mask_with_same_name(brats_root):
    ann = brats_root / "BraTS2021" / "test" / "annotation"
    for p in ann.iterdir():
        p.rename(ann / p.name.replace("seg", "flair"))
    ds = load(brats_root, "BraTS2021", image_size=12)
    assert ds.test_masks[2:].sum() == 72


def test_camelyon_layout_rgb_default(camelyon_root):
    ds = load(camelyon_root, "Camelyon16", image_size=8)
    assert_images(ds.train, 2, 3, 8)
    assert ds.test_labels.tolist() == [0, 1, 1]
    assert ds.test_masks is None
    gray_ds = load(camelyon_root, "Camelyon16", image_size=8, rgb=False)
    assert_images(gray_ds.test, 3, 1, 8)
    assert abs(float(gray_ds.test[0].mean()) - gray(140)) < 1e-5


def test_isic_layout_nv_is_normal(isic_root):
    ds = load(isic_root, "ISIC2018", image_size=8)
    assert_images(ds.train, 3, 1, 8)  # only the NV training images
    assert torch.allclose(ds.train.mean(dim=(1, 2, 3)), torch.full((3,), gray(30)), atol=0.02)
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.val is None
    levels = ds.test.mean(dim=(1, 2, 3))
    assert torch.all(levels[:2] < gray(100)) and torch.all(levels[2:] > gray(150))


def test_isic_validation_becomes_val_or_test(isic_root):
    folder = isic_root / "ISIC2018_Task3"
    write_isic_part(folder, "Validation", [("ISIC_0034321", "NV"), ("ISIC_0034322", "MEL")], 50)
    ds = load(isic_root, "ISIC2018", image_size=8)
    assert ds.val_labels.tolist() == [0, 1] and len(ds.test) == 5
    for p in sorted((folder / "ISIC2018_Task3_Test_Input").iterdir()):
        p.unlink()
    (folder / "ISIC2018_Task3_Test_Input").rmdir()
    for p in (folder / "ISIC2018_Task3_Test_GroundTruth").iterdir():
        p.unlink()
    (folder / "ISIC2018_Task3_Test_GroundTruth").rmdir()
    ds = load(isic_root, "ISIC2018", image_size=8)
    assert ds.val is None and ds.test_labels.tolist() == [0, 1]


def test_caps_give_deterministic_stratified_subsets(json_root):
    a = load(json_root, "RSNA", image_size=8, max_train=2, max_test=2)
    b = load(json_root, "RSNA", image_size=8, max_train=2, max_test=2, cache=False)
    assert len(a.train) == 2 and a.test_labels.tolist() == [0, 1]
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)


def test_env_var_gives_root(json_root, monkeypatch):
    monkeypatch.setenv("AE4AD_DATA", str(json_root))
    monkeypatch.setenv("AE4AD_CACHE", str(json_root.parent / "env_cache"))
    ds = load_dataset("medianomaly", dataset="RSNA", image_size=8)
    assert len(ds.train) == 4
    assert Path(ds.info["cache_file"]).parent == json_root.parent / "env_cache"


# ----------------------------------------------------------------------------- cache


def _refuse(*args, **kwargs):
    raise AssertionError("image reader called although the data should come from the cache")


def test_second_load_reads_the_disk_cache(brats_root, monkeypatch):
    first = load(brats_root, "BraTS2021", image_size=12)
    assert first.info["cache"] == "built"
    cache_file = Path(first.info["cache_file"])
    assert cache_file.is_file() and cache_file.parent == brats_root.parent / "cache"
    assert not list(cache_file.parent.glob("*.tmp"))

    cache_lib.clear_memory_cache()
    monkeypatch.setattr(cache_lib, "read_image", _refuse)
    second = load(brats_root, "BraTS2021", image_size=12)
    assert second.info["cache"] == "disk"
    for attr in ("train", "test", "test_labels", "test_masks"):
        assert torch.equal(getattr(first, attr), getattr(second, attr))
    third = load(brats_root, "BraTS2021", image_size=12)
    assert third.info["cache"] == "memory"
    # a different size is a different entry: the reader is needed again
    with pytest.raises(AssertionError, match="image reader called"):
        load(brats_root, "BraTS2021", image_size=10)


def test_changed_file_invalidates_the_cache(json_root, monkeypatch):
    load(json_root, "RSNA", image_size=8)
    cache_lib.clear_memory_cache()
    write_image(json_root / "RSNA" / "images" / "n0.png", 250, size=(30, 30))
    ds = load(json_root, "RSNA", image_size=8)
    assert ds.info["cache"] == "built"
    assert abs(float(ds.train[0].mean()) - gray(250)) < 1e-5
    assert len(list((json_root.parent / "cache").glob("*.npz"))) == 2


def test_cache_false_writes_nothing(json_root, monkeypatch):
    ds = load(json_root, "RSNA", image_size=8, cache=False)
    assert ds.info["cache"] == "built" and ds.info["cache_file"] is None
    assert not (json_root.parent / "cache").exists()
    assert not (json_root / ".ae4ad_cache").exists()


def test_default_cache_dir_is_under_root(json_root):
    ds = load_dataset("medianomaly", dataset="RSNA", root=json_root, image_size=8)
    assert Path(ds.info["cache_file"]).parent == json_root / ".ae4ad_cache"


# ----------------------------------------------------------------------------- errors


def test_missing_root_says_how_to_set_it():
    with pytest.raises(DataError, match=r"pass root=.*AE4AD_DATA"):
        load_dataset("medianomaly", dataset="RSNA")


def test_root_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist.*AE4AD_DATA"):
        load(tmp_path / "nowhere", "RSNA")


def test_missing_dataset_folder(json_root):
    with pytest.raises(DataError, match=r"VinCXR not found; set `root` or AE4AD_DATA"):
        load(json_root, "VinCXR")


def test_unknown_dataset_name(json_root):
    with pytest.raises(DataError, match=r"unknown MedIAnomaly dataset 'CheXpert'; allowed: RSNA"):
        load(json_root, "CheXpert")


def test_missing_listed_image(json_root):
    (json_root / "RSNA" / "images" / "a1.png").unlink()
    with pytest.raises(DataError, match=r"image file not found: .*a1\.png"):
        load(json_root, "RSNA")


def test_empty_split(json_root):
    path = json_root / "RSNA" / "data.json"
    spec = json.loads(path.read_text())
    spec["train"]["0"] = []
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"the train split is empty: no images in .*data\.json"):
        load(json_root, "RSNA")


def test_empty_folder_split(camelyon_root):
    for p in (camelyon_root / "Camelyon16" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"the train split is empty: no images in .*good"):
        load(camelyon_root, "Camelyon16")


def test_corrupt_image(json_root):
    (json_root / "RSNA" / "images" / "t1.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"cannot read image .*t1\.jpg"):
        load(json_root, "RSNA")


def test_tumor_image_without_mask(brats_root):
    (brats_root / "BraTS2021" / "test" / "annotation" / "BraTS_21_seg_70.png").unlink()
    with pytest.raises(DataError, match=r"mask not found .*expected .*BraTS_21_seg_70\.png"):
        load(brats_root, "BraTS2021")


def test_json_with_wrong_keys(json_root):
    path = json_root / "RSNA" / "data.json"
    path.write_text(json.dumps({"train": {"normal": ["n0.png"]}, "test": {"0": [], "1": []}}))
    with pytest.raises(DataError, match=r"data\.json: missing train/'0'; expected keys"):
        load(json_root, "RSNA")


def test_json_that_does_not_parse(json_root):
    (json_root / "RSNA" / "data.json").write_text("{train: ")
    with pytest.raises(DataError, match=r"cannot parse .*data\.json as JSON"):
        load(json_root, "RSNA")


def test_isic_csv_with_wrong_columns(isic_root):
    csv_path = (
        isic_root
        / "ISIC2018_Task3"
        / "ISIC2018_Task3_Test_GroundTruth"
        / "ISIC2018_Task3_Test_GroundTruth.csv"
    )
    csv_path.write_text("id,label\nISIC_0034524,NV\n")
    with pytest.raises(DataError, match=r"Test_GroundTruth\.csv: expected columns image,MEL,NV"):
        load(isic_root, "ISIC2018")


def test_bad_cap(json_root):
    with pytest.raises(DataError, match=r"max_test must be a positive integer or None, got 0"):
        load(json_root, "RSNA", max_test=0)


# ----------------------------------------------------------------------------- medmnist


def test_medmnist_gray(tmp_path):
    path = make_npz(tmp_path / "toymnist.npz")
    ds = load_dataset("medmnist", path=path, image_size=32)
    assert_images(ds.train, 4, 1, 32)  # labels 0,1,2 repeating: 4 of 12 are class 0
    assert torch.allclose(ds.train, torch.full_like(ds.train, gray(0)))
    assert_images(ds.val, 2, 1, 32)
    assert ds.val_labels.tolist() == [0, 0]
    assert ds.test_labels.tolist() == [0, 1, 1] * 3
    levels = ds.test.mean(dim=(1, 2, 3))
    assert torch.allclose(levels, torch.tensor([gray(v) for v in (0, 20, 40)] * 3), atol=1e-5)


def test_medmnist_normal_label_list_and_rgb(tmp_path):
    path = make_npz(tmp_path / "toymnist_64.npz", rgb=True, size=64)
    ds = load_dataset("medmnist", path=path, normal_labels=[1, 2], image_size=64, rgb=True)
    assert_images(ds.train, 8, 3, 64)
    assert ds.test_labels.tolist() == [1, 0, 0] * 3
    gray_ds = load_dataset("medmnist", path=path, image_size=16)
    assert_images(gray_ds.train, 4, 1, 16)


def test_medmnist_default_path_from_env(tmp_path, monkeypatch):
    make_npz(tmp_path / "toymnist_16.npz", size=16)
    monkeypatch.setenv("AE4AD_DATA", str(tmp_path))
    ds = load_dataset("medmnist", flag="toymnist", image_size=16)
    assert ds.name == "toymnist" and ds.info["path"].endswith("toymnist_16.npz")


def test_medmnist_missing_file_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"MedMNIST file not found: .*nope\.npz; download"):
        load_dataset("medmnist", path=tmp_path / "nope.npz")
    monkeypatch.setenv("AE4AD_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"pneumoniamnist_64\.npz .*download pneumoniamnist_64"):
        load_dataset("medmnist", flag="pneumoniamnist", image_size=64)


def test_medmnist_no_path_no_flag():
    with pytest.raises(DataError, match=r"pass path=<file>\.npz, or flag="):
        load_dataset("medmnist")


def test_medmnist_bad_normal_label(tmp_path):
    path = make_npz(tmp_path / "toymnist.npz")
    with pytest.raises(DataError, match=r"normal_labels \[7\] not among the labels .*\[0, 1, 2\]"):
        load_dataset("medmnist", path=path, normal_labels=[0, 7])


def test_medmnist_missing_keys(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"broken\.npz: missing keys train_labels"):
        load_dataset("medmnist", path=path)


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_range():
    ds = load_dataset("digits", normal_digit=0, image_size=32, n_val=5)
    s = ds.summary()
    # the bundled digits have 178 zeros: 53 normal test images, 125 - 5 for training
    assert (s["n_train"], s["n_val"], s["n_test_normal"], s["n_test_abnormal"]) == (120, 5, 53, 53)
    assert_images(ds.train, 120, 1, 32)
    assert float(ds.train.min()) == -1.0 and float(ds.train.max()) > 0.9
    assert ds.val_labels.tolist() == [0] * 5


def test_digits_seed_is_deterministic():
    a = load_dataset("digits", normal_digit=4, image_size=8, seed=1)
    b = load_dataset("digits", normal_digit=4, image_size=8, seed=1)
    c = load_dataset("digits", normal_digit=4, image_size=8, seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert a.val is None


def test_digits_bad_params():
    with pytest.raises(DataError, match=r"normal_digit must be an integer 0\.\.9, got 10"):
        load_dataset("digits", normal_digit=10)
    with pytest.raises(DataError, match=r"n_val must be an integer in \[0, 124\]"):
        load_dataset("digits", n_val=500)


def test_reader_handles_16_bit_and_palette_masks(tmp_path):
    img16 = tmp_path / "deep.png"
    Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16)).save(img16)
    x = cache_lib.to_unit_range(cache_lib.load_images([img16], image_size=5))
    assert x.shape == (1, 1, 5, 5) and np.allclose(x, 1.0)
    pal = Image.fromarray(np.array([[0, 0], [0, 3]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0] * 2 + [255, 0, 0] * 254)
    pal.save(tmp_path / "mask.png")
    m = cache_lib.load_masks([tmp_path / "mask.png"], image_size=2)
    assert m.tolist() == [[[[0, 0], [0, 1]]]]
