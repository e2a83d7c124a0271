"""Training killed mid-run resumes from its last completed epoch and ends where an uninterrupted
run ends; the same seed gives the same test metrics run after run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.conftest import ROOT, prepared_sample

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = pytest.mark.slow  # minutes: CI runs it, `pytest -m "not slow"` skips it


def stage(workdir, *args, check=True):
    result = subprocess.run([sys.executable, "-m", *args], cwd=workdir, capture_output=True,
                            text=True, env=ENV)
    assert not check or result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The shipped sample, downloaded and prepared, with a small CNN recipe."""
    return prepared_sample(tmp_path_factory.mktemp("prepared"), weights="none", max_epochs=3,
                           patience=10, draws_per_epoch=320, augment_views=1)


def copy_of(prepared, tmp_path, name):
    work = tmp_path / name
    shutil.copytree(prepared, work)
    return work


def outcome(work) -> dict:
    stage(work, "src.evaluate", "cnn")
    metrics = json.loads((work / "metrics/cnn.json").read_text())
    history = {}
    for tsv in sorted((work / "dvclive/cnn/plots/metrics").rglob("*.tsv")):
        rows = [line.split("\t") for line in tsv.read_text().splitlines()]
        step, value = rows[0].index("step"), rows[0].index(tsv.stem)
        history[tsv.name] = [(r[step], r[value]) for r in rows[1:]]  # without the timestamps
    weights = torch.load(work / "models/cnn/model.pt", weights_only=True)["state_dict"]
    return {"test": metrics["test"], "leak_free": metrics["test_leak_free"],
            "best": metrics["train"]["best"], "epochs": metrics["train"]["epochs"],
            "history": history, "weights": {k: v.sum().item() for k, v in weights.items()}}


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """What three epochs of the CNN end with, trained in one go."""
    work = copy_of(prepared, tmp_path_factory.mktemp("uninterrupted"), "work")
    stage(work, "src.train", "cnn")
    return outcome(work)


def start_training(work, **pipes) -> tuple[subprocess.Popen, object]:
    """The CNN's training in the background, once its first epoch is saved."""
    proc = subprocess.Popen([sys.executable, "-m", "src.train", "cnn"], cwd=work, env=ENV,
                            text=True, **pipes)
    state = work / ".resume/cnn.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None:
        assert time.time() < deadline, "no epoch was saved in 5 minutes"
        time.sleep(0.02)
    return proc, state


def test_the_same_seed_gives_the_same_result_on_the_cpu(prepared, uninterrupted, tmp_path):
    assert uninterrupted["epochs"] == 3
    again = copy_of(prepared, tmp_path, "again")
    stage(again, "src.train", "cnn")
    assert outcome(again) == uninterrupted


def test_killed_training_resumes_to_the_same_result(prepared, uninterrupted, tmp_path):
    work = copy_of(prepared, tmp_path, "killed")
    proc, state = start_training(work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert not (work / "models/cnn/model.pt").exists()
    saved_epoch = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= saved_epoch < 3

    result = stage(work, "src.train", "cnn")
    assert f"resuming after epoch {saved_epoch}" in result.stdout
    assert outcome(work) == uninterrupted
    assert not state.exists()


def test_sigterm_stops_with_one_line_and_exit_status_130(prepared, tmp_path):
    work = copy_of(prepared, tmp_path, "terminated")
    proc, state = start_training(work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted; rerun the command to continue"
    assert state.exists()


def test_an_interrupted_run_with_other_params_starts_afresh(prepared, tmp_path):
    work = copy_of(prepared, tmp_path, "changed")
    proc, _ = start_training(work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["variants"]["cnn"]["lr"] = 0.0005
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    result = stage(work, "src.train", "cnn")
    assert "starting afresh" in result.stdout and "resuming" not in result.stdout
    assert json.loads((work / "dvclive/cnn/metrics.json").read_text())["epochs"] == 3


def test_a_run_whose_validation_loss_never_improves_is_one_line_and_saves_nothing(
        prepared, tmp_path, monkeypatch):
    from src import train
    from src.lib.errors import UserError
    work = copy_of(prepared, tmp_path, "never")
    monkeypatch.chdir(work)
    monkeypatch.setattr(train, "validate", lambda *a, **k: {
        "loss": float("inf"), "acc": 0.25, "f1_macro": 0.1, "f1_weighted": 0.1})
    with pytest.raises(UserError, match=r"train@cnn: no epoch gave a finite validation loss "
                                        r"\(inf, inf, inf\); lower variants.cnn.lr"):
        train.train_variant("cnn")
    assert not (work / "models/cnn/model.pt").exists()
