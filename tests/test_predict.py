import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from src.lib.checkpoint import load_checkpoint, save_calibrated, save_checkpoint
from src.lib.config import STUDY_CLASSES, parse_config
from src.lib.data import decode_rgb, letterbox
from src.lib.errors import UserError
from src.lib.models import StudyCNN
from src.lib.transforms import model_input, preset
from tests.conftest import ROOT, random_image, shipped_params
from tests.test_dicom import ct_slice, save

TEMPERATURE = 2.5

PREPARED_SIZE = 96
PREPARED = {"classes": list(STUDY_CLASSES), "image_size": PREPARED_SIZE,
            "dicom_window": [-600.0, 1500.0]}  # what `prepare` records with a split


def cnn_variant():
    cnn = parse_config(shipped_params()).variant("cnn")
    return replace(cnn, image_size=64, train=replace(cnn.train, framing="body",
                                                     intensity="window", precision="fp32"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CNN checkpoint as `train` writes it: no temperature, no threshold."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "trained.pt"
    save_checkpoint(path, cnn_variant(), StudyCNN(64).state_dict(), PREPARED)
    return path


@pytest.fixture(scope="module")
def checkpoint(trained):
    """The same, as `release` ships it: with a temperature and an energy threshold that flags
    nothing."""
    path = trained.with_name("model.pt")
    save_calibrated(trained, path, temperature=TEMPERATURE, energy_threshold=1e9)
    return path


def expected_logits(checkpoint, image_path) -> torch.Tensor:
    """prepare's letterbox, then the variant's preset, then the network."""
    model = StudyCNN(64)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    square = torch.from_numpy(letterbox(decode_rgb(image_path), PREPARED_SIZE))
    x = model_input(preset(square.permute(2, 0, 1)[None].contiguous(), framing="body",
                           intensity="window", size=64), "cnn")
    with torch.no_grad():
        return model.eval()(x)[0]


def predict(*args, cwd):
    return subprocess.run([sys.executable, "-m", "src.predict", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})


def test_bad_files_get_one_line_each_and_the_others_are_classified(checkpoint, tmp_path):
    random_image(1, (300, 200)).convert("RGBA").save(tmp_path / "wide rgba.png")
    random_image(2, (120, 260)).convert("L").save(tmp_path / "tall gray.jpg")
    Image.fromarray(np.full((50, 50), 40000, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    (tmp_path / "notes.png").write_text("not an image")
    good = (tmp_path / "wide rgba.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 3])
    files = ["wide rgba.png", "notes.png", "tall gray.jpg", "missing.png", "cut.png",
             "sixteen.png"]
    result = predict(*files, "--model", checkpoint, "--json", "--cam", "cams", cwd=tmp_path)
    assert result.returncode == 1  # not all succeeded
    errors = result.stderr.strip().splitlines()
    assert [e.split(":")[1].strip() for e in errors] == ["notes.png", "missing.png", "cut.png"]
    out = {r["file"]: r for r in json.loads(result.stdout)}
    assert list(out) == files
    for name in ("wide rgba.png", "tall gray.jpg", "sixteen.png"):
        probabilities = out[name]["probabilities"]
        assert list(probabilities) == list(STUDY_CLASSES)
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-3)
        assert out[name]["predicted"] == max(probabilities, key=probabilities.get)
        assert (tmp_path / "cams" / f"{name.rsplit('.', 1)[0]}.png").stat().st_size > 0
    assert "error" in out["missing.png"]


def test_an_image_is_preprocessed_exactly_as_in_training_and_calibrated(checkpoint, tmp_path):
    random_image(1, (300, 200)).convert("RGBA").save(tmp_path / "wide rgba.png")
    logits = expected_logits(checkpoint, tmp_path / "wide rgba.png")
    calibrated = json.loads(predict("wide rgba.png", "--model", checkpoint, "--json",
                                    cwd=tmp_path).stdout)[0]
    assert list(calibrated["probabilities"].values()) == pytest.approx(
        torch.softmax(logits / TEMPERATURE, 0).tolist(), abs=1e-4)
    assert calibrated["energy"] == pytest.approx(-torch.logsumexp(logits, 0).item(), abs=1e-3)
    raw = json.loads(predict("wide rgba.png", "--model", checkpoint, "--json", "--raw",
                             cwd=tmp_path).stdout)[0]
    assert list(raw["probabilities"].values()) == pytest.approx(
        torch.softmax(logits, 0).tolist(), abs=1e-4)


def test_a_checkpoint_without_a_temperature_says_its_probabilities_are_uncalibrated(
        trained, tmp_path):
    random_image(3).save(tmp_path / "a.png")
    result = predict("a.png", "--model", trained, "--json", cwd=tmp_path)
    assert result.returncode == 0
    assert "carries no temperature" in result.stderr
    assert json.loads(result.stdout)[0]["unlike_training_data"] is None


def test_inputs_above_the_energy_threshold_are_flagged(trained, tmp_path):
    for seed in (3, 4):
        random_image(seed).save(tmp_path / f"{seed}.png")
    energies = {r["file"]: r["energy"] for r in json.loads(predict(
        "3.png", "4.png", "--model", trained, "--json", cwd=tmp_path).stdout)}
    between = sum(energies.values()) / 2
    assert energies["3.png"] != energies["4.png"]
    strict = tmp_path / "strict.pt"
    save_calibrated(trained, strict, temperature=1.0, energy_threshold=between)
    flagged = {r["file"]: r["unlike_training_data"] for r in json.loads(predict(
        "3.png", "4.png", "--model", strict, "--json", cwd=tmp_path).stdout)}
    assert flagged == {f: e > between for f, e in energies.items()}
    table = predict("3.png", "4.png", "--model", strict, cwd=tmp_path).stdout.splitlines()
    assert table[0].split("\t")[-2:] == ["energy", "flag"]
    assert {line.split("\t")[0]: line.endswith("unlike training data") for line in table[1:]} \
        == flagged


def test_a_dicom_that_is_not_ct_is_refused_unless_asked(checkpoint, tmp_path):
    save(ct_slice(0), tmp_path, "ct.dcm")
    mr = ct_slice(0)
    mr.Modality = "MR"
    save(mr, tmp_path, "mr.dcm")
    result = predict("mr.dcm", "ct.dcm", "--model", checkpoint, "--json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: mr.dcm: a MR image, not CT: the model was trained "
                                     "on CT slices (--any-modality classifies it anyway)")
    out = json.loads(result.stdout)
    assert "error" in out[0] and out[1]["predicted"] in STUDY_CLASSES
    anyway = predict("mr.dcm", "--model", checkpoint, "--any-modality", cwd=tmp_path)
    assert anyway.returncode == 0 and anyway.stdout.splitlines()[1].startswith("mr.dcm")


def test_table_output_and_success_status(checkpoint, tmp_path):
    random_image(3).save(tmp_path / "a.png")
    result = predict("a.png", "--model", checkpoint, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, line = result.stdout.splitlines()
    assert header.split("\t") == ["file", *STUDY_CLASSES, "predicted", "energy", "flag"]
    assert line.split("\t")[0] == "a.png" and line.split("\t")[-3] in STUDY_CLASSES


def test_missing_model_is_one_line(tmp_path):
    result = predict("a.png", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: release/model.pt: not found; run `dvc repro` to make it"


def test_an_old_or_foreign_checkpoint_names_the_missing_field(checkpoint, tmp_path):
    old = torch.load(checkpoint, weights_only=True)
    del old["format_version"], old["precision"]  # as `train` wrote them before the format had one
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(UserError, match=r"old.pt: .*an older format \(no 'format_version'\)"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    result = predict("a.png", "--model", tmp_path / "foreign.pt", cwd=tmp_path)
    assert result.returncode == 1
    assert "foreign.pt: not a checkpoint of this project" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
