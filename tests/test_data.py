import numpy as np
import pytest
import torch
from PIL import Image

from src import prepare
from src.lib.config import CLASSES
from src.lib.data import balance_weights, decode_rgb, letterbox, normalize_class, scan_raw
from src.lib.errors import UserError
from tests.conftest import LONG_NAMES, SHORT_NAMES, make_dataset, random_image


@pytest.mark.parametrize("label", CLASSES)
def test_long_and_short_kaggle_folder_names_map_to_one_label(label):
    assert normalize_class(LONG_NAMES[label]) == label
    assert normalize_class(SHORT_NAMES[label]) == label
    assert normalize_class(label) == label


@pytest.mark.parametrize("folder", ["benign", "adeno", "normalish", "large.cell"])
def test_unknown_class_folder_is_an_error_naming_it(folder):
    with pytest.raises(UserError, match=f"unknown class folder '{folder}'"):
        normalize_class(folder)


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


def test_scan_reports_a_missing_class(tmp_path):
    make_dataset(tmp_path)
    for f in (tmp_path / "Data/valid/normal").iterdir():
        f.unlink()
    (tmp_path / "Data/valid/normal").rmdir()
    with pytest.raises(UserError, match="valid: class 'normal' is missing"):
        scan_raw(tmp_path)


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

    files, skipped = scan_raw(root)
    kept, undecodable = prepare.decode_all(files, 32)
    dup = prepare.find_duplicates(kept)
    splits = prepare.build_splits(kept, dup, "oversample")
    removed = {kept[i]["file"].name: why for i, why in dup["removed"].items()}

    assert removed == {
        "train/normal/leak copy.png": "duplicate of a test image",
        "valid/normal/leak (2).png": "duplicate of a test image",
        f"train/{LONG_NAMES['adenocarcinoma']}/twin.png": "duplicate group with conflicting labels",
        f"train/{LONG_NAMES['squamous_cell_carcinoma']}/twin.png":
            "duplicate group with conflicting labels",
        f"valid/{LONG_NAMES['large_cell_carcinoma']}/cross.png": "duplicate of a train image",
    }
    assert [s["file"] for s in skipped] == ["train/normal/.DS_Store"]
    assert [s["file"] for s in undecodable] == ["test/normal/broken.png"]
    assert len(splits["test"]["labels"]) == 4 * 3 + 3  # every decodable test image stays
    assert len(splits["train"]["labels"]) == 4 * 3 + 1  # the cross-split twin stays in train
    leak_free = dict(zip(splits["test"]["files"], splits["test"]["leak_free"].tolist()))
    assert leak_free["test/normal/leak.png"] is False
    assert leak_free["test/adenocarcinoma/a - Copy.png"] != leak_free["test/adenocarcinoma/a.png"]
    assert sum(leak_free.values()) == 4 * 3 + 1
    assert splits["train"]["images"].shape[1:] == (3, 32, 32)
    assert splits["train"]["images"].dtype == torch.uint8


def test_balance_weights():
    labels = torch.tensor([0, 0, 0, 1, 2, 3])
    sample, per_class = balance_weights(labels, "oversample")
    drawn = torch.zeros(4)
    for c in range(4):
        drawn[c] = sample[labels == c].sum()
    assert torch.allclose(drawn, drawn[0].expand(4))  # every class equally likely
    assert torch.equal(per_class, torch.ones(4))
    sample, per_class = balance_weights(labels, "class_weights")
    assert torch.equal(sample, torch.ones(6))
    assert per_class[0] < per_class[1] and torch.isclose(per_class[0] * 3, per_class[1])
    assert all(torch.equal(w, torch.ones_like(w)) for w in balance_weights(labels, "none"))
