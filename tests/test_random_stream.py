"""A run's result depends on its recipe (params, seed, data), never on a setting that only
changes speed or memory: where the caches live, or how many epochs are allowed."""
import os
import shutil

import pytest
import yaml

from src.train import train_variant
from tests.conftest import prepared_sample

# The CNN trains everything (augmentation per draw, dropout); resnet50_fc trains a head on a
# frozen prefix's cached views. Small enough for seconds per epoch on the sample.
RECIPES = {"cnn": {}, "resnet50_fc": {"image_size": 32}}
pytestmark = pytest.mark.slow  # minutes: CI runs it, `pytest -m "not slow"` skips it


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    # 3 views of about 35 training images: 2 epochs of 32 draws see fewer views than there are,
    # 4 or 5 more (the old code filled the cache up front then, from the run's generator)
    return prepared_sample(tmp_path_factory.mktemp("prepared"), weights="none", patience=10,
                           draws_per_epoch=32, augment_views=3, batch_size=8)


def validation_losses(prepared, work, variant: str, **train) -> list[float]:
    """Train `variant` in a copy of `prepared` with `train` overrides: its validation loss,
    epoch by epoch, as DVCLive logged it."""
    shutil.copytree(prepared, work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"].update(train)
    params["variants"][variant].update(RECIPES[variant])
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        train_variant(variant)
    finally:
        os.chdir(cwd)
    rows = (work / f"dvclive/{variant}/plots/metrics/val/loss.tsv").read_text().splitlines()
    return [float(line.split("\t")[-1]) for line in rows[1:]]


@pytest.mark.parametrize("variant", RECIPES)
def test_caches_in_memory_or_on_disk_give_the_same_validation_losses(prepared, tmp_path,
                                                                     variant):
    in_memory = validation_losses(prepared, tmp_path / "memory", variant, max_epochs=4,
                                  cache_mb=3000)
    on_disk = validation_losses(prepared, tmp_path / "disk", variant, max_epochs=4, cache_mb=0)
    assert len(in_memory) == 4
    assert on_disk == in_memory


@pytest.mark.parametrize("variant", RECIPES)
def test_a_shorter_run_is_the_start_of_a_longer_one(prepared, tmp_path, variant):
    short = validation_losses(prepared, tmp_path / "short", variant, max_epochs=2)
    longer = validation_losses(prepared, tmp_path / "long", variant, max_epochs=5)
    assert len(longer) == 5
    assert longer[:2] == short


def test_deterministic_algorithms_change_nothing_on_the_cpu(prepared, tmp_path):
    from src.lib.device import set_deterministic
    default = validation_losses(prepared, tmp_path / "default", "cnn", max_epochs=2)
    try:
        strict = validation_losses(prepared, tmp_path / "strict", "cnn", max_epochs=2,
                                   deterministic=True)
    finally:
        set_deterministic(False)  # process-wide: leave it as the other tests expect
    assert strict == default
