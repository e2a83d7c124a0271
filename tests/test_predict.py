import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from src.lib.checkpoint import load_checkpoint, save_checkpoint
from src.lib.config import STUDY_CLASSES, parse_config
from src.lib.data import decode_rgb, letterbox
from src.lib.errors import UserError
from src.lib.models import StudyCNN
from src.lib.transforms import model_input, preset
from tests.conftest import ROOT, random_image, shipped_params

PREPARED_SIZE = 96
PREPARED = {"classes": list(STUDY_CLASSES), "image_size": PREPARED_SIZE,
            "dicom_window": [-600.0, 1500.0]}  # what `prepare` records with a split


def cnn_variant():
    cnn = parse_config(shipped_params()).variant("cnn")
    return replace(cnn, image_size=64, train=replace(cnn.train, framing="body",
                                                     intensity="window", precision="fp32"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, cnn_variant(), StudyCNN(64).state_dict(), PREPARED)
    return path


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


def test_an_image_is_preprocessed_exactly_as_in_training(checkpoint, tmp_path):
    random_image(1, (300, 200)).convert("RGBA").save(tmp_path / "wide rgba.png")
    result = predict("wide rgba.png", "--model", checkpoint, "--json", cwd=tmp_path)
    printed = json.loads(result.stdout)[0]["probabilities"]
    # prepare's letterbox, then the variant's preset, then the network
    model = StudyCNN(64)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    square = torch.from_numpy(letterbox(decode_rgb(tmp_path / "wide rgba.png"), PREPARED_SIZE))
    x = model_input(preset(square.permute(2, 0, 1)[None].contiguous(), framing="body",
                           intensity="window", size=64), "cnn")
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), 1)[0].tolist()
    assert list(printed.values()) == pytest.approx(expected, abs=1e-4)


def test_table_output_and_success_status(checkpoint, tmp_path):
    random_image(3).save(tmp_path / "a.png")
    result = predict("a.png", "--model", checkpoint, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, line = result.stdout.strip().splitlines()
    assert header.split("\t") == ["file", *STUDY_CLASSES, "predicted"]
    assert line.split("\t")[0] == "a.png" and line.split("\t")[-1] in STUDY_CLASSES


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
