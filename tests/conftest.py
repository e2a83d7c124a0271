import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
ROOT = Path(__file__).resolve().parents[1]

# Kaggle's folder names: train and valid carry ___location and stage, test does not.
LONG_NAMES = {"adenocarcinoma": "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib",
              "large_cell_carcinoma": "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa",
              "normal": "normal",
              "squamous_cell_carcinoma": "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa"}
SHORT_NAMES = {"adenocarcinoma": "adenocarcinoma", "large_cell_carcinoma": "large.cell.carcinoma",
               "normal": "normal", "squamous_cell_carcinoma": "squamous.cell.carcinoma"}


def shipped_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def random_image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def prepared_images(images, folder: Path):
    """uint8 images [N,3,S,S] as `prepare` stores them: rows of a memory-mapped images file."""
    from src.lib.data import IMAGES_FILE, PreparedImages
    from src.lib.io import MappedArray
    store = MappedArray.create(folder / IMAGES_FILE, tuple(images.shape), np.uint8)
    store.write(slice(None), images.numpy())
    return PreparedImages(store, np.arange(len(images)))


def make_dataset(root: Path, per_class: int = 2, seed: int = 0) -> Path:
    """A tiny dataset in Kaggle's layout (Data/train|valid|test/<class folder>/*.png)."""
    for s, split in enumerate(("train", "valid", "test")):
        names = SHORT_NAMES if split == "test" else LONG_NAMES
        for c, folder in enumerate(names.values()):
            d = root / "Data" / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                random_image(seed * 10000 + s * 1000 + c * 100 + i).save(d / f"img {i}.png")
    return root


def prepared_sample(root: Path, **train) -> Path:
    """The shipped sample downloaded and prepared in `root`, with `train` overrides in its
    params.yaml; returns `root`."""
    import shutil

    from src import download, prepare
    from src.lib.config import load_config
    shutil.copytree(ROOT / "data/sample", root / "data/sample")
    params = shipped_params()
    params["data"]["source"] = "sample"
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        download.fetch(load_config())
        assert prepare.main([]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a stage's code in an empty folder with the shipped params.yaml."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path
