"""Tests of the ``nifti`` source on volumes written with nibabel: slice counts and labels,
mask alignment, per-volume normalisation, subject-disjoint seeded splits, the CSV list,
reorientation, the cache, and every bad input.

The fixture: 6 subjects, volumes 20 x 20 x 8 (x, y, z) with an identity affine. The head
fills x, y in 2..17 on slices z = 1..6 (z = 0 and 7 are empty and dropped); intensity
100 + 10 s + y. Even subjects carry a lesion (intensity 300) at x 4..7, y 4..7 on z = 3
(label 1) and z = 4 (label 2), and a 2 x 2 speck on z = 5 (label 1, below the default
min_lesion_pixels 10: dropped as ambiguous). Odd subjects have an empty segmentation,
except sub5, which has none.
"""

from __future__ import annotations

import doctest
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ae4ad.data  # noqa: F401  (registers the sources)
from ae4ad.data import cache as cache_lib
from ae4ad.data import nifti as nifti_module
from ae4ad.data.base import DataError, load_dataset

N_SUBJECTS = 6
SHAPE = (20, 20, 8)


def volumes(s: int) -> tuple[np.ndarray, np.ndarray]:
    vol = np.zeros(SHAPE, np.float32)
    y = np.arange(SHAPE[1], dtype=np.float32)[None, :, None]
    vol[2:18, 2:18, 1:7] = (100 + 10 * s + y + np.zeros(SHAPE, np.float32))[2:18, 2:18, 1:7]
    seg = np.zeros(SHAPE, np.uint8)
    if s % 2 == 0:
        seg[4:8, 4:8, 3] = 1
        seg[4:8, 4:8, 4] = 2
        seg[10:12, 10:12, 5] = 1
        vol[seg > 0] = 300
    return vol, seg


def save(path: Path, arr: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)
    return path


def make_root(root: Path, *, flipped: bool = False) -> Path:
    """The fixture tree; ``flipped`` stores every volume mirrored in x with an affine that
    says so (the same anatomy, another voxel order)."""
    affine = np.diag([-1.0, 1.0, 1.0, 1.0]) if flipped else None
    for s in range(N_SUBJECTS):
        vol, seg = volumes(s)
        if flipped:
            vol, seg = vol[::-1].copy(), seg[::-1].copy()
        d = root / f"sub{s}"
        save(d / f"sub{s}_flair.nii.gz", vol, affine)
        save(d / f"sub{s}_t1.nii.gz", vol * 0.5, affine)
        if s != 5:
            save(d / f"sub{s}_seg.nii.gz", seg, affine)
    return root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    monkeypatch.delenv("AE4AD_CACHE", raising=False)
    cache_lib.clear_memory_cache()
    yield
    cache_lib.clear_memory_cache()


@pytest.fixture
def root(tmp_path) -> Path:
    return make_root(tmp_path / "brats")


def load(root: Path, **params):
    params.setdefault("cache_dir", root.parent / "cache")
    params.setdefault("image_size", 10)
    params.setdefault("test_fraction", 0.5)
    if "val_fraction" not in params:  # the validation draws have their own tests
        params.setdefault("val_split", "none")
    return load_dataset("nifti", root=str(root), **params)


def expected_counts(info: dict, min_lesion: int = 10) -> dict:
    """Slices per split from the fixture's rules."""
    abnormal_per_even = 2 if min_lesion > 4 else 3
    kept_even = 5 if min_lesion > 4 else 6
    out = {"train": 0, "test": 0, "test_abnormal": 0}
    for name in info["subjects"]["train"]:
        even = int(name[3:]) % 2 == 0
        out["train"] += (kept_even - abnormal_per_even) if even else 6
    for name in info["subjects"]["test"]:
        even = int(name[3:]) % 2 == 0
        out["test"] += kept_even if even else 6
        out["test_abnormal"] += abnormal_per_even if even else 0
    return out


# ----------------------------------------------------------------------------- slices


def test_counts_labels_and_subject_disjoint_splits(root):
    ds = load(root)
    info = ds.info
    train, test = set(info["subjects"]["train"]), set(info["subjects"]["test"])
    assert not train & test and train | test == {f"sub{s}" for s in range(N_SUBJECTS)}
    assert info["n_subjects"] == {"train": 3, "val": 0, "test": 3}
    assert any(int(s[3:]) % 2 == 0 for s in test)
    want = expected_counts(info)
    assert len(ds.train) == want["train"] == info["n_slices"]["train"]
    assert len(ds.test) == want["test"] == info["n_slices"]["test"]
    assert int(ds.test_labels.sum()) == want["test_abnormal"] == info["n_slices_abnormal"]["test"]
    assert ds.val is None and info["n_slices"]["val"] == 0
    # every test slice comes from a test subject; training sees no test subject
    assert {sid.split(":")[0] for sid in info["slice_ids"]["test"]} == test
    n_even_train = sum(int(s[3:]) % 2 == 0 for s in train)
    assert info["dropped"] == {
        "low_foreground": 2 * N_SUBJECTS,
        "ambiguous": sum(s % 2 == 0 for s in range(N_SUBJECTS)),
        "abnormal_in_train_subjects": 2 * n_even_train,
    }
    assert info["n_subjects_without_seg"] == 1 and ds.has_masks
    assert tuple(ds.train.shape[1:]) == (1, 10, 10) and ds.train.dtype == torch.float32


def test_known_square_lesion_lands_where_it_should(root):
    ds = load(root)
    ids = ds.info["slice_ids"]["test"]
    even = next(s for s in ds.info["subjects"]["test"] if int(s[3:]) % 2 == 0)
    i = ids.index(f"{even}:{even}_flair:3")
    assert int(ds.test_labels[i]) == 1
    # lesion x 4..7, y 4..7 of a 20 x 20 slice; rotated so anterior (+y) is up:
    # rows 19 - y = 12..15, cols x = 4..7; nearest to 10 px: rows 6..7, cols 2..3
    expected = torch.zeros(10, 10)
    expected[6:8, 2:4] = 1
    assert torch.equal(ds.test_masks[i, 0], expected)
    head = ds.test[i, 0, 2:8, 2:8]  # the bright lesion is there too
    assert float(ds.test[i, 0, 6:8, 2:4].mean()) > float(head.mean()) + 0.2
    # normal slices have empty masks; the slice below the lesion is normal
    j = ids.index(f"{even}:{even}_flair:2")
    assert int(ds.test_labels[j]) == 0 and ds.test_masks[j].sum() == 0


def test_per_volume_percentile_normalisation(root):
    ds = load(root, image_size=20, percentiles=[0, 100])
    ids = ds.info["slice_ids"]["test"]
    odd = next((s for s in ds.info["subjects"]["test"] if int(s[3:]) % 2), None)
    assert odd is not None
    x = ds.test[ids.index(f"{odd}:{odd}_flair:1"), 0]
    assert float(x[0, 0]) == -1.0  # background
    # head values 100 + 10 s + y, y = 2..17, min-max over the volume's foreground
    assert float(x[19 - 17, 5]) == pytest.approx(1.0, abs=1e-3)
    assert float(x[19 - 2, 5]) == pytest.approx(-1.0, abs=1e-3)
    assert float(x[19 - 9, 5]) == pytest.approx(2 * 7 / 15 - 1, abs=2e-3)


def test_seeded_splits_and_validation_subjects(root):
    a = load(root, seed=1)
    assert load(root, seed=1).info["subjects"] == a.info["subjects"]
    seen = {tuple(load(root, seed=s).info["subjects"]["test"]) for s in range(1, 6)}
    assert len(seen) > 1
    v = load(root, test_fraction=0.34, val_fraction=0.2, seed=1)
    subjects = v.info["subjects"]
    assert v.info["n_subjects"] == {"train": 3, "val": 1, "test": 2}
    assert len({*subjects["train"], *subjects["val"], *subjects["test"]}) == N_SUBJECTS
    name = subjects["val"][0]
    kept = 5 if int(name[3:]) % 2 == 0 else 6
    assert len(v.val) == kept and int(v.val_labels.sum()) == (2 if kept == 5 else 0)
    assert v.val_masks is not None and v.info["slice_ids"]["val"][0].startswith(name + ":")


def test_seg_labels_and_min_lesion_pixels(root):
    base = load(root)
    test = base.info["subjects"]["test"]
    n_even = sum(int(s[3:]) % 2 == 0 for s in test)
    only2 = load(root, seg_labels=[2])  # label-1 slices count as normal now
    assert only2.info["subjects"]["test"] == test
    assert int(only2.test_labels.sum()) == n_even
    speck = load(root, min_lesion_pixels=1)
    assert int(speck.test_labels.sum()) == 3 * n_even
    assert speck.info["dropped"]["ambiguous"] == 0
    assert len(speck.test) == expected_counts(speck.info, 1)["test"]


def test_modality_and_axis(root):
    t1 = load(root, modality="t1")
    assert len(t1.train) == len(load(root).train)
    sag = load(root, axis="sagittal", min_lesion_pixels=1)
    assert sag.info["axis"] == 0
    # x = 2..17 have foreground (96 of 160 voxels); every subject keeps 16 slices
    assert sag.info["n_slices"]["test"] == 16 * 3
    assert sag.info["dropped"]["low_foreground"] == 4 * N_SUBJECTS


def test_reorientation_to_ras(root, tmp_path):
    flipped = make_root(tmp_path / "flipped", flipped=True)
    a, b = load(root), load(flipped)
    assert a.info["subjects"] == b.info["subjects"]
    assert torch.equal(a.test, b.test) and torch.equal(a.test_masks, b.test_masks)
    c = load(flipped, reorient=False)
    assert not torch.equal(a.test_masks, c.test_masks)


def test_csv_with_given_splits(root):
    rows = ["image,seg,subject,split"]
    for s in range(N_SUBJECTS):
        seg = f"sub{s}/sub{s}_seg.nii.gz" if s != 5 else ""
        split = "test" if s in (0, 1) else "val" if s == 2 else "train"
        rows.append(f"sub{s}/sub{s}_flair.nii.gz,{seg},S{s},{split}")
    rows.append("sub3/sub3_t1.nii.gz,sub3/sub3_seg.nii.gz,S3,train")  # 2 volumes, 1 subject
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset("nifti", csv=str(root / "list.csv"), image_size=10, cache=False)
    assert ds.info["subjects"] == {"train": ["S3", "S4", "S5"], "val": ["S2"], "test": ["S0", "S1"]}
    assert ds.info["slices_per_subject"]["S3"] == 12
    assert len(ds.test) == 5 + 6 and int(ds.test_labels.sum()) == 2
    assert ds.name == "list"


def test_cache_keeps_info(root):
    first = load(root)
    assert first.info["cache"] == "built"
    assert load(root).info["cache"] == "memory"
    cache_lib.clear_memory_cache()
    again = load(root)
    assert again.info["cache"] == "disk"
    for key in ("subjects", "n_slices", "dropped", "slice_ids"):
        assert again.info[key] == first.info[key]
    assert torch.equal(again.test, first.test) and torch.equal(again.train, first.train)
    assert load(root, axis=1, min_lesion_pixels=1).info["cache"] == "built"


# ----------------------------------------------------------------------------- validation


def subject_of(slice_id: str) -> str:
    return slice_id.split(":")[0]


def test_default_validation_holds_out_training_subjects(root):
    base = load(root)
    ds = load(root, val_split="auto")
    info = ds.info
    # 3 training subjects: round(0.1 * 3) = 0, at least 1 -> one validation subject
    assert info["n_subjects"] == {"train": 2, "val": 1, "test": 3}
    assert info["val_split"] == "from_train" and info["val_split_ratio"] == 0.1
    val_subject = info["subjects"]["val"][0]
    assert val_subject in base.info["subjects"]["train"]
    assert sorted(info["subjects"]["train"] + [val_subject]) == base.info["subjects"]["train"]
    assert {subject_of(i) for i in info["slice_ids"]["val"]} == {val_subject}
    assert not {subject_of(i) for i in info["slice_ids"]["train"]} & {val_subject}
    # normal slices only, no masks; the training slices are split, not changed
    assert int(ds.val_labels.sum()) == 0 and ds.val_masks is None
    assert len(ds.train) + len(ds.val) == len(base.train) == base.info["n_slices"]["train"]
    assert info["n_slices"]["val"] == len(ds.val) and info["n_slices"]["train"] == len(ds.train)
    assert torch.equal(ds.test, base.test)
    kept = set(info["slice_ids"]["train"]) | set(info["slice_ids"]["val"])
    assert kept == set(base.info["slice_ids"]["train"])
    assert info["splits"]["val"].startswith("from_train: 10 % of the training subjects")
    assert load(root, val_split="auto").info["subjects"] == info["subjects"]


def _seed_with_lesions_in_test(root: Path, at_least: int) -> int:
    """A seed whose test subjects include ``at_least`` subjects with lesions."""
    for seed in range(40):
        test = load(root, seed=seed).info["subjects"]["test"]
        if sum(int(s[3:]) % 2 == 0 and s != "sub5" for s in test) >= at_least:
            return seed
    raise AssertionError("no such seed in 0..39")


def test_from_test_moves_whole_test_subjects_stratified(root):
    seed = _seed_with_lesions_in_test(root, 2)
    base = load(root, seed=seed)
    ds = load(root, seed=seed, val_split="from_test")
    info = ds.info
    val, test = set(info["subjects"]["val"]), set(info["subjects"]["test"])
    assert val and not val & test and val | test == set(base.info["subjects"]["test"])
    lesion = {s for s in base.info["subjects"]["test"] if int(s[3:]) % 2 == 0}
    # half of the subjects with lesions (at least one on each side) and half without
    assert val & lesion and test & lesion
    assert len(val & lesion) == min(len(lesion) - 1, max(1, round(0.5 * len(lesion))))
    assert len(val - lesion) == round(0.5 * len(set(base.info["subjects"]["test"]) - lesion))
    # every slice of the chosen subjects moved, labels and masks with them
    assert {subject_of(i) for i in info["slice_ids"]["val"]} == val
    assert {subject_of(i) for i in info["slice_ids"]["test"]} == test
    assert len(ds.val) + len(ds.test) == len(base.test)
    assert int(ds.val_labels.sum()) + int(ds.test_labels.sum()) == int(base.test_labels.sum())
    for x in (ds.val_labels, ds.test_labels):
        assert 0 < int(x.sum()) < len(x)  # both sides have normal and abnormal slices
    assert [bool(m.sum() > 0) for m in ds.val_masks] == [bool(y) for y in ds.val_labels]
    assert info["n_slices_abnormal"]["val"] == int(ds.val_labels.sum())
    assert torch.equal(ds.train, base.train) and info["val_split"] == "from_test"
    assert "subject-disjoint" in info["splits"]["val"]


def test_validation_choices_and_errors(root):
    given = load(root, val_fraction=0.2, test_fraction=0.34)
    assert given.info["val_split"] == "given" and len(given.info["subjects"]["val"]) == 1
    assert given.info["splits"]["val"].startswith("given: all slices of 1 validation subject")
    with pytest.raises(DataError, match="val_split is from_test but the data already name"):
        load(root, val_fraction=0.2, val_split="from_test")
    with pytest.raises(DataError, match="val_fraction asks for validation subjects"):
        load(root, val_fraction=0.2, val_split="none")
    seed = next(
        s
        for s in range(40)
        if sum(int(n[3:]) % 2 == 0 for n in load(root, seed=s).info["subjects"]["test"]) == 1
    )
    with pytest.raises(DataError, match="from_test needs at least 2 test subjects with abnormal"):
        load(root, seed=seed, val_split="from_test")
    with pytest.raises(DataError, match="val_split must be one of"):
        load(root, val_split="same_as_test")


# ----------------------------------------------------------------------------- errors


def test_seg_with_another_shape(root):
    save(root / "sub1" / "sub1_seg.nii.gz", np.zeros((20, 20, 7), np.uint8))
    with pytest.raises(DataError) as err:
        load(root)
    assert str(err.value) == (
        f"segmentation {root / 'sub1' / 'sub1_seg.nii.gz'} has shape (20, 20, 7); expected "
        f"(20, 20, 8) like its volume {root / 'sub1' / 'sub1_flair.nii.gz'}"
    )


def test_unreadable_volume(root):
    bad = root / "sub2" / "sub2_flair.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header"))
    with pytest.raises(DataError, match=rf"cannot read volume {bad} as NIfTI"):
        load(root)


def test_subject_folder_without_the_modality(root):
    (root / "notes").mkdir()
    with pytest.raises(DataError, match=r"no flair volume in subject folder .*notes: expected"):
        load(root)


def test_empty_root_and_missing_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no subject folders in"):
        load(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="give root="):
        load_dataset("nifti")


def test_4d_volume(root):
    save(root / "sub0" / "sub0_flair.nii.gz", np.zeros(SHAPE + (2,), np.float32))
    with pytest.raises(DataError, match=r"has shape \(20, 20, 8, 2\); expected a 3-D volume"):
        load(root)


def test_too_few_subjects_and_no_abnormal_test_slices(tmp_path):
    one = make_root(tmp_path / "one")
    for s in range(1, N_SUBJECTS):
        for f in (one / f"sub{s}").iterdir():
            f.unlink()
        (one / f"sub{s}").rmdir()
    with pytest.raises(DataError, match="1 subject.* cannot be split"):
        load(one)
    healthy = make_root(tmp_path / "healthy")
    for s in range(0, N_SUBJECTS, 2):
        save(healthy / f"sub{s}" / f"sub{s}_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match="no abnormal slices in the test subjects"):
        load(healthy)


def test_csv_errors(root):
    csv = root / "l.csv"
    csv.write_text(
        "image,subject,split\nsub0/sub0_flair.nii.gz,A,train\nsub0/sub0_t1.nii.gz,A,test\n"
    )
    with pytest.raises(DataError, match="subject A is in the train and the test split"):
        load_dataset("nifti", csv=str(csv), cache=False)
    csv.write_text("image,seg\n,sub0/sub0_seg.nii.gz\n")
    with pytest.raises(DataError, match="line 2: segmentation without its volume"):
        load_dataset("nifti", csv=str(csv), cache=False)
    csv.write_text("image,split\nsub0/sub0_flair.nii.gz,train\nsub1/sub1_flair.nii.gz,\n")
    with pytest.raises(DataError, match="line 3: split is empty"):
        load_dataset("nifti", csv=str(csv), cache=False)
    csv.write_text("volume\nx\n")
    with pytest.raises(DataError, match="expected a header row image"):
        load_dataset("nifti", csv=str(csv), cache=False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"axis": 3}, "axis must be 0, 1, 2"),
        ({"test_fraction": 0.0}, r"test_fraction must be in \(0, 1\)"),
        ({"test_fraction": 0.6, "val_fraction": 0.4}, "must be below 1"),
        ({"seg_labels": ["tumor"]}, "seg_labels must be integers"),
        ({"min_foreground": 2}, r"min_foreground must be in \[0, 1\]"),
        ({"percentiles": [50, 50]}, "percentiles must be two finite numbers"),
    ],
)
def test_bad_params(root, params, message):
    with pytest.raises(DataError, match=message):
        load(root, **params)


def test_doctest():
    result = doctest.testmod(nifti_module)
    assert result.failed == 0 and result.attempted > 0
