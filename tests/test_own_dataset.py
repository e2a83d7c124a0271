"""A dataset of one's own: three classes named in params, class folders without splits, DICOM
slices among the PNGs. `prepare` splits it (seeded, stratified, identical images together) and
training, evaluation, the checkpoint and predict use its three labels."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from src import download, evaluate, prepare, train
from src.lib.config import load_config
from src.lib.data import load_split
from src.lib.inference import load_classifier
from tests.conftest import ROOT, random_image
from tests.test_dicom import ct_slice, save

CLASSES = {"benign": "benign", "malignant": ["malignant", "cancer"], "normal": "normal"}


def write_export(root):
    """Class folders, no splits: PNGs, DICOM slices (one without pixels) and one image twice."""
    folders = {"Benign cases": 14, "Malignant-cases": 10, "cancer (2)": 4, "Normal cases": 14}
    for k, (folder, n) in enumerate(folders.items()):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            random_image(100 * k + i).save(root / folder / f"{i}.png")
    for i in range(6):  # CT slices of HU -1350 + 150 i: grey levels 0, 26, 51, 77, 102, 128
        save(ct_slice(-1350 + 150 * i + 1024), root / "Malignant-cases", f"slice {i}.dcm")
    no_pixels = ct_slice(0)
    del no_pixels.PixelData
    save(no_pixels, root / "Normal cases", "scout.dcm")
    random_image(307).save(root / "Normal cases" / "7 copy.png")  # the same pixels as 7.png


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The export downloaded and prepared with 2 processes, and a small CNN trained on it."""
    root = tmp_path_factory.mktemp("own")
    write_export(root / "export")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="local", archive=str(root / "export"), classes=CLASSES)
    params["train"].update(weights="none", max_epochs=1, draws_per_epoch=64)
    params["variants"]["cnn"]["image_size"] = 32
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        download.fetch(load_config())
        assert prepare.main(["--workers", "2"]) == 0
        train.train_variant("cnn")
        evaluate.evaluate_variant("cnn")
    return root


def test_every_image_lands_in_one_split_with_its_label(own):
    report = json.loads((own / "reports/data/report.json").read_text())
    assert report["classes"] == ["benign", "malignant", "normal"]
    found = report["counts_found"]
    assert {c: sum(found[s][c] for s in found) for c in report["classes"]} == \
        {"benign": 14, "malignant": 10 + 4 + 6, "normal": 14 + 1}
    assert all(found[s][c] > 0 for s in found for c in report["classes"])
    assert found["train"]["benign"] == 10  # 70% of 14, the rest in valid and test
    splits = {s: load_split(s, own / "data/prepared") for s in ("train", "valid", "test")}
    copies = [s for s, d in splits.items() for f in d["files"] if f.startswith("Normal cases/7")]
    assert len(copies) == 2 and len(set(copies)) == 1  # identical images share a split
    assert report["skipped"] == [{"file": "Normal cases/scout.dcm",
                                  "reason": "DICOM without pixel data"}]


def test_dicom_slices_are_windowed_to_8_bits(own):
    for split in ("train", "valid", "test"):
        data = load_split(split, own / "data/prepared")
        for i, name in enumerate(data["files"]):
            if name.endswith(".dcm"):
                k = int(name.split("slice ")[1][0])
                image = data["images"][i]
                assert image.max().item() == round(150 * k * 255 / 1500 + 1e-9)


def test_prepare_gives_the_same_data_with_one_process(own, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(own)
        mp.setattr(prepare, "PREPARED_DIR", tmp_path / "prepared")
        assert prepare.main(["--workers", "1"]) == 0
    for split in ("train", "valid", "test"):
        assert (tmp_path / f"prepared/{split}.json").read_text() == \
            (own / f"data/prepared/{split}.json").read_text()
    assert np.array_equal(np.load(tmp_path / "prepared/images.npy"),
                          np.load(own / "data/prepared/images.npy"))


def test_the_model_and_its_reports_have_one_output_per_class(own):
    clf = load_classifier(own / "models/cnn/model.pt")
    assert clf.settings["classes"] == ["benign", "malignant", "normal"]
    assert clf.model[-1].out_features == 3
    metrics = json.loads((own / "metrics/cnn.json").read_text())
    assert list(metrics["test"]["f1_per_class"]) == ["benign", "malignant", "normal"]
    rows = json.loads((own / "predictions/cnn.json").read_text())
    assert all(list(r["probabilities"]) == ["benign", "malignant", "normal"] for r in rows)


def test_predict_reads_a_dicom_slice_with_the_training_window(own):
    done = subprocess.run([sys.executable, "-m", "src.predict", "--model", "models/cnn/model.pt",
                           "--json", "data/raw/Data/Malignant-cases/slice 3.dcm"], cwd=own,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert list(result["probabilities"]) == ["benign", "malignant", "normal"]
