import os
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from src import prepare
from src.lib import data
from src.lib.config import STUDY_CLASSES, SplitConfig, parse_config
from src.lib.data import PreparedImages, balance_weights, decode_rgb, letterbox, load_split
from src.lib.errors import UserError
from src.lib.io import MappedArray, write_json
from src.lib.raw import find_data_root, label_of, scan_raw
from src.lib.transforms import preset
from tests.conftest import (
    LONG_NAMES, ROOT, SHORT_NAMES, make_dataset, prepared_images, random_image, shipped_params
)

KAGGLE = parse_config(shipped_params()).data.classes  # the default `data.classes`


@pytest.mark.parametrize("label", STUDY_CLASSES)
def test_long_and_short_kaggle_folder_names_map_to_one_label(label, tmp_path):
    for name in (LONG_NAMES[label], SHORT_NAMES[label], label):
        assert label_of(tmp_path / name, KAGGLE) == label


@pytest.mark.parametrize("folder", ["benign", "adeno", "normalish", "large.cell"])
def test_a_folder_no_prefix_matches_has_no_label(folder, tmp_path):
    assert label_of(tmp_path / folder, KAGGLE) is None


def test_a_folder_that_matches_two_labels_is_an_error_naming_both(tmp_path):
    classes = {"cell": ("large",), "large_cell": ("large_cell",)}
    with pytest.raises(UserError, match="matches data.classes.cell and data.classes.large_cell"):
        label_of(tmp_path / "large.cell.carcinoma", classes)


def test_letterbox_keeps_aspect_and_pads_with_zeros():
    wide = Image.new("RGB", (200, 100), (255, 255, 255))
    out = letterbox(wide, 64)
    assert out.shape == (64, 64, 3)
    rows = np.nonzero(out[:, :, 0].max(1))[0]
    assert (rows.min(), rows.max()) == (16, 47)  # 200x100 -> 64x32, centred
    assert out[:16].max() == 0 and out[48:].max() == 0
    assert out[16:48].min() == 255

    tall = letterbox(Image.new("RGB", (30, 90), (255, 255, 255)), 90)
    cols = np.nonzero(tall[:, :, 0].max(0))[0]
    assert (cols.min(), cols.max()) == (30, 59)


def test_decode_handles_modes_of_the_real_dataset(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # transparent -> black, like the padding
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (40, 40), 77).save(tmp_path / "gray.png")
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "photo.jpg", quality=100)
    sixteen = Image.fromarray(np.full((40, 40), 4096, dtype=np.uint16))
    sixteen.save(tmp_path / "sixteen.png")

    im = decode_rgb(tmp_path / "rgba.png")
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (0, 0, 0)
    assert im.getpixel((5, 5)) == (200, 100, 50)
    assert decode_rgb(tmp_path / "gray.png").getpixel((3, 3)) == (77, 77, 77)
    assert decode_rgb(tmp_path / "photo.jpg").mode == "RGB"
    assert decode_rgb(tmp_path / "sixteen.png").getpixel((3, 3)) == (255, 255, 255)


def test_scan_reports_a_class_entry_that_matches_no_folder(tmp_path):
    make_dataset(tmp_path)
    for f in (tmp_path / "Data/valid/normal").iterdir():
        f.unlink()
    (tmp_path / "Data/valid/normal").rmdir()
    with pytest.raises(UserError, match="valid: no folder matches data.classes.normal"):
        scan_raw(tmp_path, KAGGLE)


def test_scan_reports_a_folder_that_matches_no_class(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "Data/train/benign").mkdir()
    with pytest.raises(UserError, match="train/benign: the folder matches no label"):
        scan_raw(tmp_path, KAGGLE)


def test_class_folders_without_splits_are_found_anywhere_under_the_root(tmp_path):
    for label in ("Cats", "dogs"):
        (tmp_path / "export/images" / label).mkdir(parents=True)
        random_image(len(label)).save(tmp_path / "export/images" / label / "a.png")
    classes = {"cat": ("cats",), "dog": ("dogs",)}
    assert find_data_root(tmp_path, classes) == (tmp_path / "export/images", False)
    files, _ = scan_raw(tmp_path, classes)
    assert [(f.split, f.label, f.name) for f in files] == [(None, "cat", "Cats/a.png"),
                                                           (None, "dog", "dogs/a.png")]


def records(groups: dict[str, list[int]]) -> list[dict]:
    """prepare's records for assign_splits: per label, group sizes."""
    out = []
    for label, sizes in groups.items():
        for g, size in enumerate(sizes):
            out += [{"file": SimpleNamespace(label=label, split=None), "group": f"{label}{g}"}
                    for _ in range(size)]
    return out


def test_splitting_is_stratified_seeded_and_keeps_groups_together():
    recs = records({"a": [1] * 70 + [5] * 6, "b": [1] * 40})  # a: 100 images, b: 40
    prepare.assign_splits(recs, SplitConfig(train=0.7, valid=0.15, test=0.15, seed=1))
    counts = Counter((r["file"].label, r["file"].split) for r in recs)
    assert abs(counts["a", "train"] - 70) <= 3 and abs(counts["a", "test"] - 15) <= 3
    assert (counts["b", "train"], counts["b", "valid"], counts["b", "test"]) == (28, 6, 6)
    by_group = defaultdict(set)
    for r in recs:
        by_group[r["group"]].add(r["file"].split)
    assert all(len(splits) == 1 for splits in by_group.values())
    again = records({"a": [1] * 70 + [5] * 6, "b": [1] * 40})
    prepare.assign_splits(again, SplitConfig(train=0.7, valid=0.15, test=0.15, seed=1))
    assert [r["file"].split for r in again] == [r["file"].split for r in recs]
    other = records({"a": [1] * 70 + [5] * 6, "b": [1] * 40})
    prepare.assign_splits(other, SplitConfig(train=0.7, valid=0.15, test=0.15, seed=2))
    assert [r["file"].split for r in other] != [r["file"].split for r in recs]


def test_folds_partition_train_and_valid_by_group_and_leave_test_alone():
    def pooled():
        recs = records({"a": [1] * 60 + [4] * 5, "b": [1] * 30 + [2] * 5})
        for i, r in enumerate(recs):  # the data's own split, a group across train and valid
            r["file"].split = "test" if i % 10 == 0 else "valid" if i % 10 == 1 else "train"
        return recs
    valid_of_fold = []
    for fold in range(5):
        recs = pooled()
        prepare.assign_fold(recs, folds=5, fold=fold, seed=3)
        assert [r["file"].split == "test" for r in recs] == [i % 10 == 0 for i in range(len(recs))]
        valid = {i for i, r in enumerate(recs) if r["file"].split == "valid"}
        counts = Counter(recs[i]["file"].label for i in valid)
        assert abs(counts["a"] - 80 * 0.9 / 5) <= 4 and abs(counts["b"] - 40 * 0.9 / 5) <= 3
        by_group = defaultdict(set)
        for r in recs:
            if r["file"].split != "test":
                by_group[r["group"]].add(r["file"].split)
        assert all(len(splits) == 1 for splits in by_group.values())
        valid_of_fold.append(valid)
    assert sum(len(v) for v in valid_of_fold) == len(set().union(*valid_of_fold))  # disjoint
    assert set().union(*valid_of_fold) == {i for i in range(len(pooled())) if i % 10}


def prepared_splits(files, folder, *, distance: int = 2, groups=None):
    """`prepare`'s steps on scanned files: (records, undecodable, splits, removed file -> why)."""
    kept, undecodable = prepare.decode_all(files, folder / "images.npy", size=32,
                                           dicom_window=(-600, 1500), workers=1)
    prepare.group_records(kept, distance=distance, groups=groups or {})
    if files[0].split is None:
        prepare.assign_splits(kept, SplitConfig(train=0.5, valid=0.25, test=0.25, seed=0))
    leaks = prepare.find_leaks(kept)
    index = prepare.split_index(kept, leaks, classes=sorted(KAGGLE), balance="oversample",
                                size=32, dicom_window=(-600, 1500))
    for split, split_index in index.items():
        write_json(folder / f"{split}.json", split_index)
    splits = {s: load_split(s, folder) for s in ("train", "valid", "test")}
    return kept, undecodable, splits, {kept[i]["file"].name: why
                                       for i, why in leaks["removed"].items()}


def test_prepare_removes_leaks_and_conflicts_and_keeps_test_whole(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "raw", per_class=3)
    d = root / "Data"
    leak = random_image(900)
    leak.save(d / "test/normal/leak.png")
    leak.save(d / "train/normal/leak copy.png")  # byte-identical to a test image
    leak.convert("RGBA").save(d / "valid/normal/leak (2).png")  # same pixels, other bytes
    twin = random_image(901)
    twin.save(d / f"train/{LONG_NAMES['adenocarcinoma']}/twin.png")
    twin.save(d / f"train/{LONG_NAMES['squamous_cell_carcinoma']}/twin.png")  # label conflict
    cross = random_image(902)
    cross.save(d / f"train/{LONG_NAMES['large_cell_carcinoma']}/cross.png")
    cross.save(d / f"valid/{LONG_NAMES['large_cell_carcinoma']}/cross.png")
    test_twin = random_image(903)
    test_twin.save(d / "test/adenocarcinoma/a.png")
    test_twin.save(d / "test/adenocarcinoma/a - Copy.png")
    (d / "test/normal/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "train/normal/.DS_Store").write_bytes(b"\0\0")

    files, skipped = scan_raw(root, KAGGLE)
    kept, undecodable, splits, removed = prepared_splits(files, tmp_path)

    conflict = "identical images with conflicting labels"
    assert removed == {
        "train/normal/leak copy.png": "in a group with a test image",
        "valid/normal/leak (2).png": "in a group with a test image",
        f"train/{LONG_NAMES['adenocarcinoma']}/twin.png": conflict,
        f"train/{LONG_NAMES['squamous_cell_carcinoma']}/twin.png": conflict,
        f"valid/{LONG_NAMES['large_cell_carcinoma']}/cross.png": "in a group with a train image",
    }
    assert [s["file"] for s in skipped] == ["train/normal/.DS_Store"]
    assert [s["file"] for s in undecodable] == ["test/normal/broken.png"]
    assert len(splits["test"]["labels"]) == 4 * 3 + 3  # every decodable test image stays
    assert len(splits["train"]["labels"]) == 4 * 3 + 1  # the cross-split twin stays in train
    leak_free = dict(zip(splits["test"]["files"], splits["test"]["leak_free"].tolist()))
    assert leak_free["test/normal/leak.png"] is False
    assert leak_free["test/adenocarcinoma/a - Copy.png"] != leak_free["test/adenocarcinoma/a.png"]
    assert sum(leak_free.values()) == 4 * 3 + 1
    first = splits["train"]["images"][0]
    assert first.shape == (3, 32, 32) and first.dtype == torch.uint8
    source = next(f.path for f in files if f.name == splits["train"]["files"][0])
    assert torch.equal(first, torch.from_numpy(letterbox(decode_rgb(source), 32)).permute(2, 0, 1))


def test_near_duplicates_of_a_test_image_are_removed_from_train(tmp_path):
    root = make_dataset(tmp_path / "raw", per_class=2)
    d = root / "Data"
    original = decode_rgb(ROOT / "data/sample/Data/test/adenocarcinoma/000114.png")  # a real slice
    original.save(d / "test/adenocarcinoma/original.png")
    train = d / f"train/{LONG_NAMES['adenocarcinoma']}"
    original.save(train / "re-encoded.jpg", quality=70)
    ImageEnhance.Brightness(original).enhance(1.15).save(train / "brighter.png")
    shifted = Image.new("RGB", original.size)
    shifted.paste(original, (2, 1))
    shifted.save(train / "shifted.png")
    kept, _, splits, removed = prepared_splits(scan_raw(root, KAGGLE)[0], tmp_path)
    assert removed == {f"train/{LONG_NAMES['adenocarcinoma']}/{name}":
                       "in a group with a test image"
                       for name in ("re-encoded.jpg", "brighter.png", "shifted.png")}
    leak_free = dict(zip(splits["test"]["files"], splits["test"]["leak_free"].tolist()))
    assert leak_free["test/adenocarcinoma/original.png"] is False
    assert sum(leak_free.values()) == 4 * 2  # the random images are no one's near-duplicates


@pytest.mark.parametrize("source", ["DICOM PatientID", "groups file"])
def test_slices_of_one_patient_never_cross_a_split(tmp_path, source):
    from tests.test_dicom import ct_slice
    rng = np.random.default_rng(0)
    root, groups = tmp_path / "raw", {}
    for label in STUDY_CLASSES:
        (root / label).mkdir(parents=True)
        for patient in range(4):
            for k in range(3):  # three different slices of each patient
                name = f"{label}/p{patient} s{k}.dcm"
                ds = ct_slice(rng.integers(-1000, 400, (48, 64)))
                if source == "DICOM PatientID":
                    ds.PatientID = f"{label}-{patient}"
                else:
                    groups[name] = f"{label}-{patient}"
                ds.save_as(root / name, enforce_file_format=True)
    kept, _, _, _ = prepared_splits(scan_raw(root, KAGGLE)[0], tmp_path, groups=groups)
    patients = defaultdict(set)
    for r in kept:
        patients[r["file"].name.split(" s")[0]].add(r["file"].split)
    assert len(patients) == 16 and all(len(splits) == 1 for splits in patients.values())
    assert {r["file"].split for r in kept} == {"train", "valid", "test"}


def test_balance_weights():
    labels = torch.tensor([0, 0, 0, 1, 2, 3])
    sample, per_class = balance_weights(labels, "oversample", 4)
    drawn = torch.zeros(4)
    for c in range(4):
        drawn[c] = sample[labels == c].sum()
    assert torch.allclose(drawn, drawn[0].expand(4))  # every class equally likely
    assert torch.equal(per_class, torch.ones(4))
    sample, per_class = balance_weights(labels, "class_weights", 4)
    assert torch.equal(sample, torch.ones(6))
    assert per_class[0] < per_class[1] and torch.isclose(per_class[0] * 3, per_class[1])
    assert all(torch.equal(w, torch.ones_like(w)) for w in balance_weights(labels, "none", 4))


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_reading_a_mapped_split_costs_the_memory_of_a_chunk_not_of_the_file(tmp_path):
    store = MappedArray.create(tmp_path / "images.npy", (400, 3, 128, 128), np.uint8)  # 19 MB
    for start in range(0, 400, 50):
        store.write(slice(start, start + 50), np.full((50, 3, 128, 128), start // 50, np.uint8))
    images = PreparedImages(MappedArray(tmp_path / "images.npy"), np.arange(399, -1, -1))
    before, seen = resident_mb(), []
    for _, chunk in images.chunks(20):  # 1 MB each
        seen.append(int(chunk[:, 0, 0, 0].sum()))
    assert resident_mb() - before < 8  # the 19 MB read are not kept resident
    assert sum(seen) == sum(50 * k for k in range(8)) and images[0][0, 0, 0] == 7  # rows reversed


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: framing has no pool")
def test_framing_many_images_in_parallel_gives_what_one_process_gives(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PARALLEL_FROM", 20)  # a split of 20 counts as large
    pools = []

    def recorded_pool(real=data.framing_pool):
        pools.append(real())
        return pools[-1]
    monkeypatch.setattr(data, "framing_pool", recorded_pool)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 120, (20, 1, 64, 64), dtype=np.uint8).repeat(3, 1)
    gray[:, :, 10:50, 12:56] += 100  # a bright body in each
    images = prepared_images(torch.from_numpy(gray), tmp_path)
    settings = {"framing": "body", "intensity": "window", "size": 32}
    rows = np.arange(19, -1, -1)
    assert torch.equal(images.framed(rows, **settings), preset(images[rows], **settings))
    assert pools and pools[0] is not None  # a pool of processes framed them


def _die(job):
    os._exit(1)  # as a worker the system kills for memory ends


def test_a_worker_process_that_dies_ends_the_work_in_one_line_not_a_hang():
    pool = data.process_pool(2)
    try:
        with pytest.raises(UserError, match="a worker process died while framing images "
                                            r"\(out of memory, or killed\)"):
            list(data.pool_map(pool, _die, range(4), doing="framing images"))
    finally:
        pool.shutdown()
