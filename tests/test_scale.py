import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import shipped_params
from tools.scale import REAL_COUNTS, images_processed, make_run_dir, write_synthetic

# A few images per split and class folder; valid's 5 are more than the sample's 3 slices, so
# some outputs share a source slice and must still differ.
SMALL = {split: {folder: {"train": 3, "valid": 5, "test": 2}[split] for folder in folders}
         for split, folders in REAL_COUNTS.items()}


def jpgs(folder):
    return sorted(folder.rglob("*.jpg"))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("scale") / "data-small", counts=SMALL)


def test_real_counts_are_kaggles_1000_images():
    assert sum(n for folders in REAL_COUNTS.values() for n in folders.values()) == 1000


def test_synthetic_set_has_kaggles_layout_and_counts(small_set):
    for split, folders in SMALL.items():
        assert sorted(p.name for p in (small_set / "Data" / split).iterdir()) == sorted(folders)
        for folder, n in folders.items():
            names = sorted(p.name for p in (small_set / "Data" / split / folder).iterdir())
            assert names == sorted(f"{i}.jpg" for i in range(n))


def test_synthetic_images_decode_and_no_two_are_pixel_identical(small_set):
    seen = set()
    for path in jpgs(small_set):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            seen.add(np.asarray(im).tobytes())
    assert len(seen) == sum(n for folders in SMALL.values() for n in folders.values())


def test_synthetic_set_is_deterministic_and_reused(small_set, tmp_path):
    again = write_synthetic(tmp_path / "data-small", counts=SMALL)
    assert [p.read_bytes() for p in jpgs(again)] == [p.read_bytes() for p in jpgs(small_set)]
    stamps = [p.stat().st_mtime_ns for p in jpgs(again)]
    write_synthetic(again, counts=SMALL)  # complete: reused, not rewritten
    assert [p.stat().st_mtime_ns for p in jpgs(again)] == stamps
    # Image i does not depend on how many images its folder holds (the scale).
    bigger = {s: {f: n + 1 for f, n in folders.items()} for s, folders in SMALL.items()}
    more = write_synthetic(tmp_path / "data-bigger", counts=bigger)
    folder = "Data/valid/normal"
    assert [p.read_bytes() for p in jpgs(more / folder)][:5] == \
        [p.read_bytes() for p in jpgs(small_set / folder)]


def test_run_dir_points_params_at_the_synthetic_set(tmp_path):
    data = tmp_path / "data-1x"
    run = make_run_dir(tmp_path / "run-1x", data, epochs=3)
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["data"]["source"] == "local"
    assert params["data"]["archive"] == str(data.resolve())
    assert (params["train"]["weights"], params["train"]["max_epochs"],
            params["train"]["patience"]) == ("none", 3, 3)
    assert (run / "src/lib/errors.py").is_file()  # the repository's code, linked


def test_images_processed_per_stage(tmp_path):
    counts = {"train": {"a": 10, "b": 6}, "valid": {"a": 3, "b": 2}, "test": {"a": 4, "b": 4}}
    (tmp_path / "reports/data").mkdir(parents=True)
    (tmp_path / "reports/data/report.json").write_text(json.dumps({"counts_prepared": counts}))
    (tmp_path / "dvclive/cnn").mkdir(parents=True)
    (tmp_path / "dvclive/cnn/metrics.json").write_text(json.dumps({"epochs": 3}))
    params = shipped_params()
    params["train"]["draws_per_epoch"] = 40
    params["variants"]["cnn"]["draws_per_epoch"] = None
    params["variants"]["resnet50"]["draws_per_epoch"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for i in range(7):
        (tmp_path / f"data/raw/Data/train/a/{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"data/raw/Data/train/a/{i}.jpg").write_bytes(b"")
    assert images_processed("prepare", tmp_path) == 7
    assert images_processed("floor", tmp_path) == 16 + 5 + 8
    assert images_processed("evaluate@cnn", tmp_path) == 5 + 8
    assert images_processed("train@cnn", tmp_path) == 3 * (40 + 5)  # train's default draws
    (tmp_path / "dvclive/resnet50").mkdir()
    (tmp_path / "dvclive/resnet50/metrics.json").write_text(json.dumps({"epochs": 2}))
    assert images_processed("train@resnet50", tmp_path) == 2 * (16 + 5)  # 0: train's size
