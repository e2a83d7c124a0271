"""`train.processes: 2` trains under torchrun as two processes (gloo on the CPU), with DDP
averaging the gradients of each process's share of every batch: it ends, writes one checkpoint
and its curves once, and learns what one process learns from the same batches."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import ROOT, prepared_sample

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_sample(tmp_path_factory.mktemp("prepared"), weights="none", max_epochs=3,
                           patience=10, draws_per_epoch=64, augment_views=2, batch_size=16)


def trained(prepared, work, variant: str, processes: int, **recipe) -> dict:
    """Train `variant` in a copy of `prepared` as `python -m src.train` does in `dvc repro`:
    its metrics.json and its validation losses, epoch by epoch."""
    shutil.copytree(prepared, work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"]["processes"] = processes
    params["variants"][variant].update(recipe)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "src.train", variant], cwd=work, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list((work / "models").rglob("*.pt")) == [work / f"models/{variant}/model.pt"]
    assert not (work / ".resume" / f"{variant}.pt").exists()  # finished, nothing to resume
    rows = (work / f"dvclive/{variant}/plots/metrics/val/loss.tsv").read_text().splitlines()
    return {"metrics": json.loads((work / f"dvclive/{variant}/metrics.json").read_text()),
            "val_loss": [float(r.split("\t")[-1]) for r in rows[1:]],
            "out": done.stdout}


def test_two_processes_learn_what_one_learns_from_the_same_batches(prepared, tmp_path):
    # A linear head on cached frozen features: no BatchNorm, no dropout, so two processes differ
    # from one only in the order of floating-point sums (each share's mean, then DDP's average).
    recipe = {"image_size": 32, "precision": "fp32"}
    one = trained(prepared, tmp_path / "one", "resnet50_fc", 1, **recipe)
    two = trained(prepared, tmp_path / "two", "resnet50_fc", 2, **recipe)
    assert one["metrics"]["processes"] == 1 and two["metrics"]["processes"] == 2
    assert len(two["val_loss"]) == 3  # logged once per epoch, by one process
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)  # seen: 2e-6
    assert two["out"].count("resnet50_fc epoch 3:") == 1  # one process prints


def test_two_processes_train_the_cnn_with_each_ones_batchnorm(prepared, tmp_path):
    # On the CPU each process normalizes its own half of the batch (gloo has no SyncBatchNorm)
    # and draws its own dropout masks: the same draws, other arithmetic, so a looser bound.
    one = trained(prepared, tmp_path / "one", "cnn", 1)
    two = trained(prepared, tmp_path / "two", "cnn", 2)
    assert two["metrics"]["epochs"] == 3 and torch.isfinite(torch.tensor(two["val_loss"])).all()
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.25)  # seen: 0.17
