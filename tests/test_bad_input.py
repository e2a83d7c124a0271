"""Broken inputs, generated here, through `download` and `prepare`."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from src import download, prepare
from src.lib.checkpoint import torch_save
from src.lib.config import parse_config
from src.lib.errors import UserError
from tests.conftest import ROOT, make_dataset, random_image

NORMAL = "Data/train/normal"


def use_local(root, archive, **data):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source="local", archive=str(archive), **data)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return parse_config(params)


def test_unreadable_files_are_skipped_and_listed_readable_ones_used(in_tmp, tmp_path_factory):
    src = make_dataset(tmp_path_factory.mktemp("kaggle"))
    d = src / NORMAL
    (d / "empty.png").write_bytes(b"")
    good = d / "img 0.png"
    (d / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "notes.png").write_text("not an image")
    (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (d / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16)).save(d / "sixteen.png")
    random_image(1).convert("CMYK").save(d / "cmyk.jpg")
    palette = random_image(2).convert("P")
    palette.info["transparency"] = 0
    palette.save(d / "palette.png", transparency=0)
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    Image.new("1", (9500, 9500)).save(d / "bomb.png")  # over Pillow's decompression-bomb limit

    download.fetch(use_local(in_tmp, src))
    assert prepare.main([]) == 0
    report = json.loads((in_tmp / "reports/data/report.json").read_text())
    skipped = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"empty.png", "truncated.png", "notes.png", ".DS_Store",
                            "Thumbs.db", "tiny.png", "bomb.png"}
    assert skipped[".DS_Store"] == skipped["Thumbs.db"] == "not an image file"
    assert "1x1" in skipped["tiny.png"]
    assert "decompression bomb" in skipped["bomb.png"].lower()
    assert "truncated" in skipped["truncated.png"]
    assert report["counts_prepared"]["train"]["normal"] == 2 + 3  # sixteen, cmyk, palette used
    assert "bomb.png" in (in_tmp / "reports/data/report.md").read_text()


def not_a_zip(d):
    (d / "x.zip").write_text("<html>Sign in to Kaggle</html>")
    return d / "x.zip"


def empty_zip(d):
    zipfile.ZipFile(d / "empty.zip", "w").close()
    return d / "empty.zip"


def escaping_zip(d):
    with zipfile.ZipFile(d / "evil.zip", "w") as zf:
        zf.writestr("Data/../../escape.png", b"x")
    return d / "evil.zip"


def no_train_split(d):
    (d / "Data/valid").mkdir(parents=True)
    return d


def unknown_class(d):
    make_dataset(d)
    (d / "Data/test/normal").rename(d / "Data/test/benign")
    return d


def missing_class(d):
    make_dataset(d)
    for f in (d / "Data/valid/normal").iterdir():
        f.unlink()
    (d / "Data/valid/normal").rmdir()
    return d


@pytest.mark.parametrize("make, message", [
    (not_a_zip, "not a zip file"),
    (empty_zip, "the zip is empty"),
    (escaping_zip, "would be written outside the target folder"),
    (lambda d: d / "nowhere.zip", "does not exist"),
    (no_train_split, "no 'train' split"),
    (unknown_class, "test/benign: the folder matches no label of data.classes"),
    (missing_class, "valid: no folder matches data.classes.normal"),
])
def test_fatal_archives_stop_with_one_line_and_keep_the_data(in_tmp, tmp_path_factory, make,
                                                            message):
    download.fetch(use_local(in_tmp, make_dataset(tmp_path_factory.mktemp("good"))))
    before = sorted(p.name for p in (in_tmp / "data/raw/Data/train/normal").iterdir())
    use_local(in_tmp, make(tmp_path_factory.mktemp("bad")))
    result = subprocess.run([sys.executable, "-m", "src.download"], cwd=in_tmp,
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert sorted(p.name for p in (in_tmp / "data/raw/Data/train/normal").iterdir()) == before
    assert not list(in_tmp.glob("data/raw.partial*"))
    assert not list(in_tmp.parent.rglob("escape.png"))


def test_zip_bomb_is_refused(in_tmp):
    archive = in_tmp / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Data/train/normal/zeros.png", b"\0" * (3 * 2**20))
    with pytest.raises(UserError, match="over data.max_extract_mb=2"):
        download.fetch(use_local(in_tmp, archive, max_extract_mb=2))


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system (tmpfs; mounting needs root, as in CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(small_disk):
    target = small_disk / "model.pt"
    torch_save(target, {"version": 1})
    with pytest.raises(UserError, match=f"cannot write {target}: the disk is full; free space"):
        torch_save(target, {"version": 2, "weights": torch.zeros(2**17)})  # 512 KiB
    assert torch.load(target, weights_only=True) == {"version": 1}
    assert [p.name for p in small_disk.iterdir()] == ["model.pt"]  # no temporary file left


def test_a_training_cache_that_does_not_fit_on_disk_says_where_it_goes(small_disk, monkeypatch):
    from src.lib.datasets import Budget, RowCache
    monkeypatch.setattr("tempfile.tempdir", str(small_disk))
    with pytest.raises(UserError, match=r"rows.npy: the disk is full; .* or set TMPDIR"):
        RowCache(1000, (3, 64, 64), torch.uint8, compute=None, budget=Budget(0), device="cpu")
    assert not list(small_disk.rglob("*.npy"))


def test_a_class_left_without_images_after_duplicate_removal_is_one_line(in_tmp,
                                                                        tmp_path_factory, capsys):
    data = make_dataset(tmp_path_factory.mktemp("data"))
    valid, test = data / "Data/valid/normal", data / "Data/test/normal"
    for i, image in enumerate(sorted(valid.iterdir())):  # every valid normal leaks into test
        (test / f"copy {i}.png").write_bytes(image.read_bytes())
    download.fetch(use_local(in_tmp, data))
    assert prepare.main([]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: prepare: no normal images left in valid (2 found, none left after decoding and "
        "duplicate removal;")
    assert not (in_tmp / "data/prepared").exists()


def test_an_unwritable_folder_is_one_line(tmp_path):
    (tmp_path / "reports").write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot write .*reports/data/report.json"):
        from src.lib.io import write_json
        write_json(tmp_path / "reports/data/report.json", {})
